"""Launchers for tests: importable by path from a gateway config (``tests.support_launchers``)."""

from __future__ import annotations

from traitlets import Bool, Float

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
