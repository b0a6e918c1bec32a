"""A test-side stand-in for an HTCondor schedd (no HTCondor daemons install on this machine).

``start_standin(tmp_path)`` starts the daemon (``daemon.py``) as a separate process and
yields ``(client_factory, control)``: ``client_factory()`` returns a ``StandinSchedd`` that
the HTCondor launcher can use in place of ``htcondor2.Schedd``; ``control`` is a
``StandinControl`` for fault injection and observation.  See README.md.
"""

from .client import StandinSchedd
from .control import StandinControl
from .launch import Standin, leftover_job_pids, start_standin, wait_until
from .protocol import StandinUnreachable

__all__ = [
    "Standin",
    "StandinControl",
    "StandinSchedd",
    "StandinUnreachable",
    "leftover_job_pids",
    "start_standin",
    "wait_until",
]
