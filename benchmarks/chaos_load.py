"""The users of benchmarks/chaos.py: clusters started, scaled, adapted, stopped, computed on.

Every request is bounded and classified: succeeded; refused with a message (a quota,
a stopped cluster); unanswered while a fault made the gateway unavailable; or
unexplained (a 5xx without a message, no answer with no fault active) - a violation.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from dask_gateway import BasicAuth

from benchmarks.chaos_world import Api
from client_ext import ElasticGateway
from gateway_backend.embedded import GatewayProcess

USERS = ("alice", "bob", "carol")
POOL_CHOICES = ("local", "condor", "local,condor")


class Workload:
    def __init__(
        self,
        api: Api,
        gateway: GatewayProcess,
        rng: random.Random,
        pool_choices: tuple[str, ...] = POOL_CHOICES,
    ) -> None:
        self.api = api
        self.pool_choices = pool_choices
        self.gateway = gateway
        self.rng = rng
        self.clusters: dict[str, dict[str, Any]] = {}  # name -> user, mode, count
        self.forgotten: dict[str, dict[str, Any]] = {}  # see forget()
        self.stopped_by_users: set[str] = set()
        self.requests = {"ok": 0, "refused": 0, "unavailable": 0}
        self.unexplained: list[str] = []
        self.wrong: list[str] = []
        self.computed = 0
        self.refusals: Counter[str] = Counter()  # message (first 90 characters) -> times

    def request(
        self,
        what: str,
        method: str,
        path: str,
        user: str,
        body: dict | None = None,
        timeout: float = 30,
        fault: str | None = None,
    ) -> tuple[int, dict] | None:
        try:
            status, answer = self.api.call(method, path, user, body, timeout=timeout)
        except (OSError, ConnectionError) as err:
            if fault:
                self.requests["unavailable"] += 1
            else:
                self.unexplained.append(f"{what}: no answer with no fault active ({err!r})")
            return None
        if status < 300:
            self.requests["ok"] += 1
        elif status >= 500 and fault:  # the proxy's 502 while the gateway is down
            self.requests["unavailable"] += 1
        elif answer.get("error") or answer.get("message"):
            self.requests["refused"] += 1
            message = str(answer.get("error") or answer.get("message"))
            self.refusals[f"HTTP {status}: {message[:90]}"] += 1
        else:
            self.unexplained.append(f"{what}: HTTP {status} without a message, no fault active")
        return status, answer

    # --- actions -------------------------------------------------------------------------
    def start(self, user: str) -> None:
        options = {"worker_pools": self.rng.choice(self.pool_choices)}
        got = self.request(
            "new cluster", "POST", "/api/v1/clusters/", user, {"cluster_options": options}
        )
        if got and got[0] < 300:
            self.clusters[got[1]["name"]] = {"user": user, "mode": "scale", "count": 0}

    def scale(self, name: str, count: int, fault: str | None = None, timeout: float = 30) -> None:
        c = self.clusters[name]
        got = self.request(
            f"scale {name}",
            "POST",
            f"/api/v1/clusters/{name}/scale",
            c["user"],
            {"count": count},
            timeout,
            fault,
        )
        if got and got[0] < 300:
            c.update(mode="scale", count=count)

    def adapt(self, name: str) -> None:
        c = self.clusters[name]
        low = self.rng.randint(0, 1)
        body = {"minimum": low, "maximum": self.rng.randint(max(low, 1), 4), "active": True}
        got = self.request(
            f"adapt {name}", "POST", f"/api/v1/clusters/{name}/adapt", c["user"], body
        )
        if got and got[0] < 300:
            c.update(mode="adapt")

    def stop(self, name: str) -> None:
        c = self.clusters.pop(name)
        self.stopped_by_users.add(name)
        self.request(f"stop {name}", "DELETE", f"/api/v1/clusters/{name}", c["user"])

    def warm_up(self) -> None:
        for user in USERS:
            self.start(user)
        for name in list(self.clusters):
            self.scale(name, 1)

    def step(self) -> None:
        """Two random actions of random users, as a facility's notebooks would."""
        for _ in range(2):
            user = self.rng.choice(USERS)
            mine = [n for n, c in self.clusters.items() if c["user"] == user]
            action = self.rng.choice(["start", "scale", "scale", "adapt", "stop"])
            if action == "start" or not mine:
                self.start(user)
            elif action == "scale":
                self.scale(self.rng.choice(mine), self.rng.randint(0, 4))
            elif action == "adapt":
                self.adapt(self.rng.choice(mine))
            else:
                self.stop(self.rng.choice(mine))

    def during_fault(self, fault: str, timeout: float, writes: bool = False) -> None:
        """One request while the fault lasts: answered, refused, or unanswered in ``timeout``."""
        if not self.clusters:
            return
        name = self.rng.choice(sorted(self.clusters))
        self.scale(name, self.rng.randint(0, 4), fault=fault, timeout=timeout)
        if writes:  # a second, different count: a write the database must take
            self.scale(name, self.rng.randint(0, 4), fault=fault, timeout=timeout)

    # --- results -------------------------------------------------------------------------
    def compute_check(self) -> list[str]:
        """A graph with a known result on one scaled cluster with workers; wrong ones listed."""
        scaled = sorted(n for n, c in self.clusters.items() if c["mode"] == "scale" and c["count"])
        if not scaled:
            return []
        name = self.rng.choice(scaled)
        user = self.clusters[name]["user"]
        n = self.rng.randint(10, 1000)
        password = self.gateway.client_credentials()["password"]
        gw = ElasticGateway(self.gateway.address, auth=BasicAuth(user, password))
        try:
            cluster = gw.connect(name)
            client = cluster.get_client(set_as_default=False)
            try:
                try:
                    client.wait_for_workers(1, timeout=30)
                except TimeoutError:
                    return []  # clamped by the VO's quota to no worker: nothing to run on
                total = client.submit(sum, range(n), pure=False).result(timeout=60)
                futures = client.map(lambda x: x * x, range(n % 17), pure=False)
                squares = [f.result(timeout=60) for f in futures]
            finally:
                client.close()
                cluster.close()
        except Exception as err:
            self.unexplained.append(f"compute on {name}: {err!r}")
            return []
        finally:
            gw.close()
        self.computed += 1
        if total != n * (n - 1) // 2 or squares != [x * x for x in range(n % 17)]:
            self.wrong.append(f"{name}: sum(range({n})) = {total}, squares {squares}")
            return [self.wrong[-1]]
        return []

    def forget(self, names: list[str]) -> None:
        """Clusters a fault may have ended (their scheduler's node crashed): no longer used,
        only stopped at the end (a scheduler pod not started yet at the crash survives it)."""
        for name in names:
            if name in self.clusters:
                self.forgotten[name] = self.clusters.pop(name)

    def stop_all(self) -> None:
        for name in list(self.clusters):
            self.stop(name)
        for name, c in self.forgotten.items():  # a failed one is refused: 409, with a message
            self.request(f"stop {name}", "DELETE", f"/api/v1/clusters/{name}", c["user"])
        self.forgotten.clear()
