"""Worker pools: a configured launcher, its cap, and who may use it.

The admin writes pools as ``{"gpu": {"launcher": "htcondor", "max_workers": 40,
"requirements": "..."}}``: the pool keys below, plus any setting of the
launcher class, which this pool's launcher instance overrides. ``PoolBook``
answers the questions the backend, the API and the metrics ask about pools.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import ConfigError, named_settings
from .usertext import quoted

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, Worker

    from .launchers.base import Launcher

POOL_KEYS = {"launcher", "max_workers", "vos", "burst_after"}


@dataclass
class WorkerPool:
    """A named place where workers of many clusters run, with a pool-wide cap."""

    name: str
    launcher: Launcher
    max_workers: int | None = None
    vos: frozenset[str] = field(default_factory=frozenset)
    burst_after: float | None = None

    def allows(self, vo: str | None) -> bool:
        """Whether clusters of ``vo`` may place workers here (no list means everyone)."""
        return not self.vos or (vo is not None and vo in self.vos)

    def room(self, in_use: int) -> int | None:
        """How many more workers fit, or None for no cap."""
        if self.max_workers is None:
            return None
        return max(0, self.max_workers - in_use)


@dataclass(frozen=True)
class PoolSpec:
    """A pool as the admin wrote it, validated; the launcher is still a name."""

    launcher: str
    max_workers: int | None
    vos: frozenset[str]
    burst_after: float | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Launcher settings this pool overrides (checked against the launcher class later)."""


def parse_pool_specs(
    specs: Mapping[str, Any], trait: str = "ElasticBackend.worker_pools"
) -> dict[str, PoolSpec]:
    """Validate the admin's pool dict, keeping its order (the placement order)."""
    if not specs:
        raise ConfigError(f"{trait} is empty: define at least one pool, e.g. {{'local': {{}}}}")
    out = {}
    for name, spec, where in named_settings(specs, trait, None, "pool"):
        kind = spec.get("launcher", "local")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"{where}['launcher'] must be a launcher name or import path")
        cap = spec.get("max_workers")
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
            raise ConfigError(
                f"{where}['max_workers'] must be a non-negative integer or None, got {cap!r}"
            )
        vos = spec.get("vos", [])
        if isinstance(vos, str) or not all(isinstance(v, str) for v in vos):
            raise ConfigError(f"{where}['vos'] must be a list of VO names, got {vos!r}")
        burst = spec.get("burst_after")
        if burst is not None and (
            not isinstance(burst, int | float) or isinstance(burst, bool) or burst <= 0
        ):
            raise ConfigError(
                f"{where}['burst_after'] must be a positive number of seconds, got {burst!r}"
            )
        settings = {k: v for k, v in spec.items() if k not in POOL_KEYS}
        out[name] = PoolSpec(kind, cap, frozenset(vos), burst, settings)
    return out


def requested_pools(options: Mapping[str, Any]) -> list[str]:
    """The owner's ``worker_pools`` option as pool names in order, each once."""
    raw = options.get("worker_pools") or ""
    names = (name.strip() for name in str(raw).split(","))
    return list(dict.fromkeys(name for name in names if name))


class PoolBook:
    """The configured pools, and which pools a cluster and a worker belong to."""

    def __init__(
        self,
        pools: Iterable[WorkerPool],
        default_worker_pools: Mapping[str, list[str]] | None = None,
        trait: str = "ElasticBackend.default_worker_pools",
    ) -> None:
        self.pools = list(pools)
        self.by_name = {p.name: p for p in self.pools}
        self.defaults = dict(default_worker_pools or {})
        for vo, names in self.defaults.items():
            unknown = [n for n in names if n not in self.by_name]
            if isinstance(names, str) or unknown:
                raise ConfigError(
                    f"{trait}[{vo!r}] must list pool names from ElasticBackend.worker_pools "
                    f"({', '.join(self.by_name)}); unknown: {unknown or names!r}"
                )

    def __len__(self) -> int:
        return len(self.pools)

    def pool_of(self, worker: Worker) -> WorkerPool:
        """The pool a worker was placed in (records from before pools existed: the first)."""
        return self.by_name.get(worker.state.get("pool"), self.pools[0])

    def pools_for(self, options: Mapping[str, Any]) -> list[WorkerPool]:
        """Pools a cluster with these options places workers in, in order."""
        vo = options.get("vo")
        allowed = {p.name: p for p in self.pools if p.allows(vo)}
        names = requested_pools(options)
        if not names:
            names = self.defaults.get(vo or "", self.defaults.get("*", list(allowed)))
        return [allowed[n] for n in dict.fromkeys(names) if n in allowed]

    def refuse_unusable(self, options: Mapping[str, Any], vo: str | None) -> None:
        """Raise ``ValueError`` naming requested pools the cluster may not use."""
        allowed = [p.name for p in self.pools if p.allows(vo)]
        bad = [n for n in requested_pools(options) if n not in allowed]
        if bad:
            shown = ", ".join(quoted(n) for n in bad[:5])
            raise ValueError(
                f"worker_pools: {shown} is not a pool you may use; "
                f"choose from: {', '.join(allowed) or 'none'}"
            )

    def usage(self, clusters: Iterable[Cluster], holds: Any) -> dict[str, int]:
        """Workers per pool over ``clusters`` for which ``holds(worker)`` is true."""
        counts: dict[str, int] = defaultdict(int)
        for cluster in clusters:
            for w in cluster.workers.values():
                if holds(w):
                    counts[self.pool_of(w).name] += 1
        return counts
