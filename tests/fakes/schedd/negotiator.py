"""The negotiator: matches idle jobs to free slots and has the starter run them.

There is no matchmaking: ``Requirements``, ``Rank`` and resource requests are recorded but
not used. A slot holds one job whatever it requests; jobs go by ``JobPrio``, then
(cluster, proc), once they have been Idle for ``start_latency``.
"""

from __future__ import annotations

import logging

from .classads import IDLE, int_attr
from .config import Config
from .queue import Job, JobQueue
from .starter import Starter, StartFailure

log = logging.getLogger("htcondor_standin")


class Negotiator:
    """One negotiation per scheduler pass (see module docstring)."""

    def __init__(self, cfg: Config, queue: JobQueue, starter: Starter) -> None:
        self.cfg = cfg
        self.queue = queue
        self.starter = starter

    def negotiate(self, now: float) -> None:
        """Start as many ready idle jobs as there are free slots."""
        jobs = self.queue.jobs.values()
        used = {j.run.slot for j in jobs if j.run is not None}
        free = [s for s in range(1, self.cfg.slots + 1) if s not in used]
        if not free:
            return
        ready = [
            j
            for j in jobs
            if j.status == IDLE and j.run is None and now - j.idle_since >= self.cfg.start_latency
        ]
        ready.sort(key=lambda j: (-int_attr(j.ad, "JobPrio", 0), j.key))
        for job, slot in zip(ready, free, strict=False):
            self._start(job, slot)

    def _start(self, job: Job, slot: int) -> None:
        """Claim ``slot`` for ``job``; a failed start puts the job on hold."""
        try:
            run, running = self.starter.start(job.ad, job.key, slot)
        except StartFailure as failure:
            self.queue.hold(job, failure.reason, failure.code, failure.subcode)
            return
        self.queue.started(job, run, running)
        log.info("job %d.%d started as pid %d on %s", *job.key, run.pid, running["RemoteHost"])
