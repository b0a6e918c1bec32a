"""A scheduler preload: stop a cluster nobody is connected to any more.

A notebook killed with SIGKILL (an OOM kill, a culled JupyterHub server) never
runs ``shutdown_on_close``: its cluster would hold its workers until the idle
timeout, or forever while some fire-and-forget work keeps it busy. The
scheduler is the one place that knows whether a ``Client`` is connected, so
this plugin tracks it, reports every change to the gateway (``list_clusters``
shows it as the last client activity) and, after ``no_client_timeout`` seconds
without a client, asks the gateway to stop its cluster. The gateway writes the
reason the owner reads; the scheduler only says which of two fixed reasons.

A cluster created with ``shutdown_on_close=False`` (its owner means to come
back) asks, through the ``elastic_gateway_detach`` handler, for the longer
``detached_no_client_timeout``.

Like ``scheduler_checks``, the gateway passes this file's text as ``--preload``:
it may import only distributed, tornado and the standard library.
"""

import asyncio
import logging
import os
import time

from distributed.diagnostics.plugin import SchedulerPlugin

logger = logging.getLogger("elastic_gateway.presence")

# Not clients of a person: distributed's placeholder for fire_and_forget futures.
INTERNAL_CLIENTS = frozenset({"fire-and-forget"})


class NoClientTimer:
    """How long the cluster has been without a client, and whether that is too long.

    Pure bookkeeping (times from ``clock``), so its rules are testable without a scheduler.
    """

    def __init__(self, timeout: float, detached_timeout: float, clock=time.monotonic) -> None:
        self.timeout = timeout
        self.detached_timeout = detached_timeout
        self.detached = False
        self.clock = clock
        self.clients = set()
        self.alone_since = clock()  # a new cluster has no client yet

    def add(self, client: str) -> None:
        if client not in INTERNAL_CLIENTS:
            self.clients.add(client)

    def remove(self, client: str) -> None:
        self.clients.discard(client)
        if not self.clients:
            self.alone_since = self.clock()

    def detach(self) -> None:
        """Opt into the detached timeout (``shutdown_on_close=False``)."""
        self.detached = True

    @property
    def limit(self) -> float:
        """Seconds allowed without a client (0: never stopped for that)."""
        return self.detached_timeout if self.detached else self.timeout

    def expired(self) -> bool:
        """Whether the cluster has been without a client for longer than its limit."""
        if self.clients or self.limit <= 0:
            return False
        return self.clock() - self.alone_since > self.limit

    def report(self) -> dict:
        """What the gateway is told after each change (no names, only counts)."""
        return {"kind": "clients", "connected": len(self.clients), "detached": self.detached}


class ClientPresence(SchedulerPlugin):
    """Report client arrivals and departures; stop the cluster after too long alone."""

    name = "elastic-gateway-presence"

    def __init__(self, scheduler, timer, gateway):
        self.scheduler = scheduler
        self.timer = timer
        self.gateway = gateway
        self._tasks = set()
        self._watch = None

    async def start(self, scheduler):
        for client in scheduler.clients:
            self.timer.add(client)
        self._watch = asyncio.ensure_future(self.watch())

    def add_client(self, scheduler, client):
        before = len(self.timer.clients)
        self.timer.add(client)
        if len(self.timer.clients) != before:
            self._send(self.timer.report())

    def remove_client(self, scheduler, client):
        before = len(self.timer.clients)
        self.timer.remove(client)
        if len(self.timer.clients) != before:
            self._send(self.timer.report())

    def detach(self):
        """The ``elastic_gateway_detach`` handler: the owner's client asks for the longer limit."""
        if not self.timer.detached:
            self.timer.detach()
            self._send(self.timer.report())
        return {"detached": True, "no_client_timeout": self.timer.limit}

    def _send(self, finding):
        task = asyncio.ensure_future(self._report(finding))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, finding):
        try:
            await self.gateway.report(finding)
        except Exception:
            logger.warning("Could not tell the gateway about clients", exc_info=True)

    async def watch(self):
        while True:
            limit = self.timer.limit
            await asyncio.sleep(min(max(limit / 4, 0.25), 5) if limit > 0 else 5)
            if self.timer.expired():
                logger.warning(
                    "No client connected for %.0f seconds: asking the gateway to stop the cluster",
                    self.timer.limit,
                )
                reason = "no_client_detached" if self.timer.detached else "no_client"
                try:
                    await self.gateway.stop(reason)
                except Exception:  # tried again at the next look
                    logger.warning("Could not ask the gateway to stop", exc_info=True)
                else:
                    return  # the gateway stops this scheduler now

    async def close(self):
        for task in [self._watch, *self._tasks]:
            if task is not None:
                task.cancel()


def dask_setup(scheduler):
    timeout = float(os.environ.get("ELASTIC_GATEWAY_NO_CLIENT_TIMEOUT", "0"))
    detached = float(os.environ.get("ELASTIC_GATEWAY_DETACHED_NO_CLIENT_TIMEOUT", "0"))
    link = scheduler.extensions["elastic-gateway"]  # scheduler_link, the first preload
    plugin = ClientPresence(scheduler, NoClientTimer(timeout, detached), link)
    scheduler.handlers["elastic_gateway_detach"] = plugin.detach
    scheduler.add_plugin(plugin)
