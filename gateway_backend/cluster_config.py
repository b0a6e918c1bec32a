"""Per-cluster configuration: upstream's ClusterConfig, ready for distributed 2026."""

from __future__ import annotations

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.traitlets import Command
from traitlets import Integer


class ElasticClusterConfig(ClusterConfig):
    """Cluster configuration for the Elastic Gateway backend.

    distributed 2026 ships no ``dask-scheduler``/``dask-worker`` executables, so
    the defaults use the ``dask`` command's subcommands.
    """

    scheduler_cmd = Command(
        ["dask", "scheduler"], help="Command that starts a Dask scheduler.", config=True
    )

    worker_cmd = Command(["dask", "worker"], help="Command that starts a Dask worker.", config=True)

    worker_gpus = Integer(
        0,
        min=0,
        help="GPUs per worker (HTCondor ``request_gpus``, Kubernetes ``nvidia.com/gpu``).",
        config=True,
    )
