"""Dask workers as Slurm jobs: ``SlurmLauncher`` (``launcher: "slurm"`` in a pool).

Split by concern: ``settings`` (the admin's traits), ``script`` (batch scripts,
escaping), ``client`` (the Slurm CLI, asynchronously), ``status`` (states and
pending reasons in the analyst's words), ``launcher`` (the launcher itself).
"""

from .launcher import SlurmLauncher

__all__ = ["SlurmLauncher"]
