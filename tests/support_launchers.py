"""Launchers for tests (importable by path from a gateway config: ``tests.support_launchers``),
and the ``LauncherContext`` a launcher gets when a test runs it without a gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from traitlets import Bool, Float

from gateway_backend.events import EventLog
from gateway_backend.launchers.base import KnownRecords, Launcher, LauncherContext
from gateway_backend.launchers.local import LocalLauncher


class SlowLocalLauncher(LocalLauncher):
    """Local workers that take ``start_delay`` seconds before they join: a slow pool."""

    kind = "slow-local"

    start_delay = Float(60.0, help="Seconds each worker waits before starting.", config=True)

    fork_server = Bool(False, help="Off: the delay wraps the spawned command.", config=True)

    def _spawn(self, cluster, cmd, env, name):
        if name.startswith("worker-"):
            cmd = ["sh", "-c", 'sleep "$0"; exec "$@"', str(self.start_delay), *cmd]
        return super()._spawn(cluster, cmd, env, name)


class SlowSubmitLocalLauncher(LocalLauncher):
    """Local workers whose start call takes ``submit_delay`` seconds: a slow submission
    (a busy schedd, an API server under load) that a scale-down can overtake."""

    kind = "slow-submit-local"

    submit_delay = Float(3.0, help="Seconds each start_workers call takes.", config=True)

    return_delay = Float(
        0.0, help="Seconds the call takes after the processes were started.", config=True
    )

    async def start_workers(self, cluster, workers, facts):
        await asyncio.sleep(self.submit_delay)
        states = await super().start_workers(cluster, workers, facts)
        await asyncio.sleep(self.return_delay)
        return states


def known(clusters: Iterable[str] = (), workers: Iterable[str] = ()) -> KnownRecords:
    return KnownRecords(frozenset(clusters), frozenset(workers))


def launcher_context(
    launcher: Launcher,
    *,
    scheduler_launcher: Launcher | None = None,
    records: KnownRecords | None = None,
    events: EventLog | None = None,
    name: str = "test",
    **fields,
) -> LauncherContext:
    """A context for ``launcher``: it runs the schedulers unless ``scheduler_launcher`` does.

    ``records`` are what ``known_records()`` answers (nothing, by default);
    events go to ``events`` (a new ``EventLog`` if not given).
    """
    records = known() if records is None else records
    events = EventLog() if events is None else events
    defaults = {
        "api_url": "http://127.0.0.1:9/api",
        "heartbeat_period": 5,
        "proxy_tls_address": "127.0.0.1:8786",
    }
    return LauncherContext(
        known_records=lambda: records,
        add_event=events.add,
        scheduler_launcher=scheduler_launcher or launcher,
        name=name,
        **{**defaults, **fields},
    )
