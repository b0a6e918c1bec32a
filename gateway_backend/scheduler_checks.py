"""A scheduler preload: is every worker reachable from the scheduler?

distributed connects *to* workers (results, ``client.run``, work stealing) and
workers connect to each other; a worker behind a closed firewall or NAT still
registers (it dials out) and then makes computations hang. When a worker
registers, this opens a connection back to it; if that fails within
``ELASTIC_GATEWAY_REACHABILITY_TIMEOUT`` seconds, the scheduler tells the gateway
(which tells the analyst what to open or set) and removes the worker, so work
goes to the others instead of waiting on it.

The scheduler runs in the cluster's environment (a profile's image or Python),
where this package may not be installed: the gateway passes this file's *text*
as ``--preload``, so it may import only distributed, tornado and the standard
library.
"""

import asyncio
import logging
import os

from distributed.comm import connect
from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger("elastic_gateway.reachability")


class WorkerReachability(SchedulerPlugin):
    """Connect back to each worker that registers; report and remove the unreachable."""

    name = "elastic-gateway-reachability"

    def __init__(self, scheduler, timeout, report):
        self.scheduler = scheduler
        self.timeout = timeout
        self.report = report
        self._checks = set()

    def add_worker(self, scheduler, worker):
        task = asyncio.ensure_future(self.check(worker))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def close(self):
        for task in list(self._checks):
            task.cancel()

    async def check(self, address):
        args = self.scheduler.connection_args
        try:
            comm = await asyncio.wait_for(
                connect(address, timeout=self.timeout, **args), self.timeout + 1
            )
        except Exception as exc:  # refused, timed out, TLS failed: all mean "cannot reach"
            why = str(exc) or type(exc).__name__
            if isinstance(exc, asyncio.TimeoutError):
                why = f"no answer within {self.timeout:g}s"
        else:
            comm.abort()
            return
        ws = self.scheduler.workers.get(address)
        if ws is None:  # left meanwhile
            return
        logger.warning("Worker %s at %s cannot be reached: %s", ws.name, address, why)
        try:
            await self.report(
                {
                    "kind": "unreachable",
                    "worker": str(ws.name),
                    "address": address,
                    "error": why[:300],
                }
            )
        except Exception:
            logger.warning("Could not tell the gateway about %s", address, exc_info=True)
        await self.scheduler.remove_worker(
            address=address, stimulus_id="elastic-gateway-unreachable", close=True
        )


def dask_setup(scheduler):
    timeout = float(os.environ.get("ELASTIC_GATEWAY_REACHABILITY_TIMEOUT", "5"))
    if timeout > 0:
        link = scheduler.extensions["elastic-gateway"]  # scheduler_link, the first preload
        scheduler.add_plugin(WorkerReachability(scheduler, timeout, link.report))
