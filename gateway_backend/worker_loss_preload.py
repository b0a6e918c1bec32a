"""A scheduler preload: tell the gateway which tasks a lost worker was running, and why.

When a worker leaves without being asked (killed, crashed, restarted by its
nanny for exceeding its memory limit), the scheduler knows what the launcher
cannot: the task keys it was running, and whether its nanny restarted it for
memory (the nanny's ``worker-restart-memory`` event). This reports both to the
gateway's events route with the cluster's API token, so the analyst reads
"worker X exceeded its memory limit while running task Y" in ``details()``.

Passed to the scheduler as text (``--preload``), like ``scheduler_checks``: it
may import only distributed, tornado and the standard library.
"""

import asyncio
import logging

from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger("elastic_gateway.worker_loss")

# Seconds to wait, after a worker is removed, for its nanny's memory event (sent separately).
MEMORY_EVENT_WAIT = 1.0
MAX_TASKS = 5


class WorkerLoss(SchedulerPlugin):
    """Report each worker removed unexpectedly, with its tasks and a memory restart."""

    name = "elastic-gateway-worker-loss"

    def __init__(self, scheduler, report):
        self.scheduler = scheduler
        self.report = report
        self.names = {}  # address -> worker name, kept after the worker is gone
        self.memory = {}  # address -> bytes in use when its nanny restarted it
        self._reports = set()

    def add_worker(self, scheduler, worker):
        ws = scheduler.workers.get(worker)
        self.names[worker] = str(ws.name) if ws is not None else worker

    def log_event(self, topic, msg):
        if not isinstance(msg, dict):
            return
        if topic == "worker-restart-memory":
            self.memory[str(msg.get("worker"))] = msg.get("rss") or 0
        elif topic == "all" and msg.get("action") == "remove-worker" and not msg.get("expected"):
            address = str(msg.get("worker"))
            tasks = sorted(str(k) for k in msg.get("processing-tasks") or ())[:MAX_TASKS]
            task = asyncio.ensure_future(self._send(address, tasks))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    async def _send(self, address, tasks):
        await asyncio.sleep(MEMORY_EVENT_WAIT)
        rss = self.memory.pop(address, None)
        name = self.names.pop(address, address)
        if rss is None and not tasks:
            return  # nothing the launcher's own check cannot say
        finding = {
            "kind": "worker_lost",
            "worker": name[:200],
            "tasks": [t[:200] for t in tasks],
            "memory_bytes": int(rss) if rss is not None else None,
        }
        try:
            await self.report(finding)
        except Exception:
            logger.warning("Could not tell the gateway about worker %s", name, exc_info=True)

    async def close(self):
        for task in list(self._reports):
            task.cancel()


def dask_setup(scheduler):
    link = scheduler.extensions["elastic-gateway"]  # scheduler_link, the first preload
    scheduler.add_plugin(WorkerLoss(scheduler, link.report))
