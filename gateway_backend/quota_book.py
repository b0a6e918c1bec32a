"""The gateway's quota bookkeeping: which VO a cluster counts against, what it uses,
what a request may have, and how often VOs refused (for the metrics).

``quotas.py`` holds the arithmetic; this object applies it to the live records,
which it reads through ``active_clusters``, so the answers are right after a
restart and never drift from the database. Counting walks every worker of every
active cluster (20,000 workers: ~10 ms), so with a ``version`` (anything that
changes whenever a cluster or worker record does) the count of all VOs at once
is kept until the next change, instead of being made again for each question.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .config import ConfigError
from .quotas import (
    VO,
    QuotaRefused,
    Usage,
    check_new_cluster,
    choose_vo,
    describe_limit,
    holds_resources,
    parse_vos,
    vo_usage,
    workers_grantable,
)

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

REFUSAL_KINDS = ("membership", "cluster", "workers")


class QuotaBook:
    """VOs and their usage, answered from the live cluster records."""

    def __init__(
        self,
        vos: Mapping[str, Any],
        users_without_vo: str,
        active_clusters: Callable[[], Iterable[Cluster]],
        version: Callable[[], object] | None = None,
        holds: Callable[[Any], bool] = holds_resources,
    ) -> None:
        self.vos: dict[str, VO] = parse_vos(vos)
        if self.vos and users_without_vo != "refuse" and users_without_vo not in self.vos:
            raise ConfigError(
                f"ElasticBackend.users_without_vo = {users_without_vo!r} names no VO in "
                f"ElasticBackend.vos; use 'refuse' or one of {sorted(self.vos)}"
            )
        self.users_without_vo = users_without_vo
        self._active_clusters = active_clusters
        self._version = version
        self._holds = holds  # which workers count (see quotas.holds_resources)
        self._counted: tuple[object, dict[str, Usage]] | None = None  # (version, usage)
        # (VO label, kind) -> count; labels are configured VO names, "" or "(unknown)".
        self.refusals: dict[tuple[str, str], int] = defaultdict(int)

    @property
    def enabled(self) -> bool:
        return bool(self.vos)

    def count_refusal(self, vo: str, kind: str) -> None:
        """Count a refusal, labelled only with configured VO names (bounded cardinality)."""
        label = vo if vo in self.vos or vo == "" else "(unknown)"
        self.refusals[(label, kind)] += 1

    def vo_of(self, cluster: Cluster) -> VO | None:
        return self.vos.get(cluster.options.get("vo") or "")

    def usage_of(self, vo: VO) -> Usage:
        """What ``vo``'s active clusters hold now (shared between callers: read only)."""
        return self.usage_by_vo().get(vo.name) or Usage()

    def usage_by_vo(self) -> Mapping[str, Usage]:
        """Usage of every VO, counted once per ``version`` of the records."""
        version = self._version() if self._version is not None else None
        if version is None:
            return vo_usage(self._active_clusters(), self._holds)
        if self._counted is None or self._counted[0] != version:
            self._counted = (version, vo_usage(self._active_clusters(), self._holds))
        return self._counted[1]

    def visible_to(self, user) -> list[VO]:
        """Admins see every VO; users the VOs their groups give them (or the fallback VO)."""
        if user.admin:
            return list(self.vos.values())
        mine = [vo for vo in self.vos.values() if vo.groups & set(user.groups)]
        if not mine and self.users_without_vo in self.vos:
            mine = [self.vos[self.users_without_vo]]
        return mine

    def choose(self, user, requested: str) -> VO:
        """The VO a new cluster of ``user`` counts against; ``QuotaRefused`` says why not."""
        try:
            return choose_vo(user.name, user.groups, requested, self.vos, self.users_without_vo)
        except QuotaRefused:
            self.count_refusal(requested, "membership")
            raise

    def admit_cluster(self, vo: VO, username: str, config) -> None:
        """Raise ``QuotaRefused`` if one more cluster of ``username`` would exceed ``vo``."""
        try:
            check_new_cluster(vo, self.usage_of(vo), username, config)
        except QuotaRefused:
            self.count_refusal(vo.name, "cluster")
            raise

    def grantable(self, cluster: Cluster, missing: int) -> tuple[int, str | None]:
        """How many of ``missing`` workers the VO allows now, and why not more."""
        vo = self.vo_of(cluster)
        if vo is None:
            return missing, None
        usage = self.usage_of(vo)
        room, binding = workers_grantable(vo, usage, cluster.config)
        if room is None or room >= missing:
            return missing, None
        return room, (
            f"{missing - room} worker(s) wait for VO {vo.name} quota "
            f"({describe_limit(vo, binding, usage)})"
        )

    def scale_message(self, cluster: Cluster, wanted: int) -> str | None:
        """What the VO grants of ``wanted`` workers now, for the scale/adapt response."""
        vo = self.vo_of(cluster)
        if vo is None:
            return None
        parts = []
        target = wanted
        if vo.max_workers_per_cluster is not None and wanted > vo.max_workers_per_cluster:
            target = vo.max_workers_per_cluster
            parts.append(
                f"VO {vo.name}: max_workers_per_cluster={target}, so {wanted} requested "
                f"becomes {target}."
            )
        usage = self.usage_of(vo)
        room, binding = workers_grantable(vo, usage, cluster.config)
        active = len(cluster.active_workers())
        if room is not None and active + room < target:
            granted = active + room
            parts.append(
                f"VO {vo.name}: {describe_limit(vo, binding, usage)}; granted {granted} of "
                f"{target} workers now, the other {target - granted} start by themselves "
                "when the VO's usage drops."
            )
            self.count_refusal(vo.name, "workers")
        return " ".join(parts) or None
