"""Per-VO quotas: the VO model, usage derived from cluster records, and clear refusals.

Everything here is pure arithmetic over the backend's in-memory mirror of the
database, so usage is right after a restart, and a check followed by the
records it allows happens without an ``await`` in between: no race between
concurrent requests can exceed a limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask_gateway_server.backends.db_base import JobStatus

from .config import ConfigError, named_settings
from .usertext import quoted

LIMIT_KEYS = (
    "max_cores",
    "max_memory",
    "max_gpus",
    "max_clusters_per_user",
    "max_workers_per_cluster",
)
VO_KEYS = {"groups", "accounting_group", *LIMIT_KEYS}
VOS_TRAIT = "ElasticBackend.vos"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 10**3,
    "kib": 2**10,
    "m": 2**20,
    "mb": 10**6,
    "mib": 2**20,
    "g": 2**30,
    "gb": 10**9,
    "gib": 2**30,
    "t": 2**40,
    "tb": 10**12,
    "tib": 2**40,
    "p": 2**50,
    "pb": 10**15,
    "pib": 2**50,
}


def parse_memory(value: Any) -> int:
    """Bytes from an int or a string such as ``"8 TiB"``, ``"512G"``, ``"100 MB"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a memory size")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a memory size like '8 TiB', '512 GiB' or '16G'")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class VO:
    """A virtual organisation: who belongs, and what all its clusters may use together."""

    name: str
    groups: frozenset[str] = frozenset()
    max_cores: float | None = None
    max_memory: int | None = None
    max_gpus: int | None = None
    max_clusters_per_user: int | None = None
    max_workers_per_cluster: int | None = None
    accounting_group: str | None = None

    def limits(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in LIMIT_KEYS}


def parse_vos(spec: Mapping[str, Any]) -> dict[str, VO]:
    """Validate ``ElasticBackend.vos``; errors name the key and say what to change."""
    vos = {}
    for name, entry, where in named_settings(spec, VOS_TRAIT, VO_KEYS, "VO"):
        groups = entry.get("groups", [])
        if isinstance(groups, str) or not all(isinstance(g, str) for g in groups):
            raise ConfigError(f"{where}['groups'] must be a list of group names, got {groups!r}")
        values: dict[str, Any] = {}
        for key in LIMIT_KEYS:
            value = entry.get(key)
            if value is None:
                continue
            if key == "max_memory":
                try:
                    values[key] = parse_memory(value)
                except ValueError as exc:
                    raise ConfigError(f"{where}['max_memory']: {exc}") from None
                continue
            number_ok = isinstance(value, int | float) and not isinstance(value, bool)
            integral = key != "max_cores"
            if not number_ok or value < 0 or (integral and not isinstance(value, int)):
                noun = "a non-negative integer" if integral else "a non-negative number"
                raise ConfigError(f"{where}[{key!r}] must be {noun} or omitted, got {value!r}")
            values[key] = value
        group = entry.get("accounting_group")
        if group is not None and (not isinstance(group, str) or not group):
            raise ConfigError(f"{where}['accounting_group'] must be a non-empty string")
        vos[name] = VO(name, frozenset(groups), accounting_group=group, **values)
    return vos


def group_list(groups: Iterable[str], most: int = 20) -> str:
    """The user's groups for a message: authenticator groups are untrusted text, so each
    is shown as is only when short and printable, and a long list is cut."""
    shown = [g if g.isprintable() and len(g) <= 64 else quoted(g) for g in sorted(groups)]
    if len(shown) > most:
        shown = [*shown[:most], f"and {len(shown) - most} more"]
    return ", ".join(shown) or "none"


class QuotaRefused(Exception):
    """A request the user's VO cannot grant; the message says which limit and what to do."""


def choose_vo(
    username: str,
    groups: Iterable[str],
    requested: str,
    vos: Mapping[str, VO],
    users_without_vo: str,
) -> VO:
    """The VO a new cluster of this user counts against."""
    groups = set(groups)
    member_of = [vo for vo in vos.values() if vo.groups & groups]
    if requested:
        if requested not in vos:
            raise QuotaRefused(
                f"VO {quoted(requested)} does not exist; set the cluster option vo to one of "
                f"{sorted(vos)} (or leave it empty)"
            )
        fallback = not member_of and requested == users_without_vo
        if vos[requested] not in member_of and not fallback:
            mine = ", ".join(vo.name for vo in member_of) or "none"
            raise QuotaRefused(
                f"user {username} is not a member of VO {requested!r} (your VOs: {mine})"
            )
        return vos[requested]
    if len(member_of) == 1:
        return member_of[0]
    if len(member_of) > 1:
        names = ", ".join(vo.name for vo in member_of)
        raise QuotaRefused(
            f"user {username} belongs to several VOs ({names}): choose one with the "
            f"cluster option vo, e.g. vo={member_of[0].name!r}"
        )
    if users_without_vo == "refuse":
        raise QuotaRefused(
            f"user {username} belongs to no VO of this gateway (groups: "
            f"{group_list(groups)}); ask the administrators to add one of "
            "your groups to a VO"
        )
    return vos[users_without_vo]


@dataclass
class Usage:
    """Resources a VO's active clusters hold (schedulers and workers)."""

    cores: float = 0.0
    memory: int = 0
    gpus: int = 0
    clusters: int = 0
    workers: int = 0
    clusters_by_user: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "memory": self.memory,
            "gpus": self.gpus,
            "clusters": self.clusters,
            "workers": self.workers,
        }


def holds_resources(worker) -> bool:
    """Counted against VO quotas and pool caps: wanted, or stopping but not yet gone.

    A worker told to stop keeps its cores until its process, job or pod has
    ended; freeing them earlier would let another worker start in their place
    while both still run. Waiting clusters are woken when it has stopped.
    (One stopped while its start call still runs is counted by the backend,
    which knows those calls: ``WorkerStarts``.)
    """
    return worker.is_active() or JobStatus.CREATED < worker.status < JobStatus.STOPPED


def cluster_usage(cluster, holds: Callable[[Any], bool] = holds_resources):
    """(cores, memory, gpus, workers) an active cluster holds now."""
    config = cluster.config
    active = sum(1 for w in cluster.workers.values() if holds(w))
    cores = config.scheduler_cores + active * config.worker_cores
    memory = config.scheduler_memory + active * config.worker_memory
    gpus = active * config.get("worker_gpus", 0)
    return cores, memory, gpus, active


def vo_usage(
    clusters: Iterable, holds: Callable[[Any], bool] = holds_resources
) -> dict[str, Usage]:
    """Usage per VO name over active clusters (those whose options record a VO)."""
    usage: dict[str, Usage] = {}
    for cluster in clusters:
        name = cluster.options.get("vo")
        if not name:
            continue
        u = usage.setdefault(name, Usage())
        cores, memory, gpus, workers = cluster_usage(cluster, holds)
        u.cores += cores
        u.memory += memory
        u.gpus += gpus
        u.workers += workers
        u.clusters += 1
        u.clusters_by_user[cluster.username] = u.clusters_by_user.get(cluster.username, 0) + 1
    return usage


def check_new_cluster(vo: VO, usage: Usage, username: str, config) -> None:
    """Refuse a new cluster that would exceed the user's cluster count or the VO's totals."""
    have = usage.clusters_by_user.get(username, 0)
    if vo.max_clusters_per_user is not None and have >= vo.max_clusters_per_user:
        raise QuotaRefused(
            f"VO {vo.name}: max_clusters_per_user={vo.max_clusters_per_user} and user "
            f"{username} already has {have} running; stop one (gateway.list_clusters()) first"
        )
    wants = {
        "max_cores": (config.scheduler_cores, usage.cores, "{:g}".format),
        "max_memory": (config.scheduler_memory, usage.memory, format_bytes),
    }
    for key, (need, used, fmt) in wants.items():
        limit = getattr(vo, key)
        if limit is not None and used + need > limit:
            raise QuotaRefused(
                f"VO {vo.name}: {key}={fmt(limit)}, in use {fmt(used)}; a new cluster's "
                f"scheduler needs {fmt(need)}. Wait for the VO's usage to drop or stop a cluster"
            )


def workers_grantable(vo: VO, usage: Usage, config) -> tuple[int | None, str]:
    """How many more workers of this cluster's size the VO can take now, and the binding limit."""
    room: int | None = None
    binding = ""
    for key, per_worker, used in (
        ("max_cores", config.worker_cores, usage.cores),
        ("max_memory", config.worker_memory, usage.memory),
        ("max_gpus", config.get("worker_gpus", 0), usage.gpus),
    ):
        limit = getattr(vo, key)
        if limit is None or not per_worker:
            continue
        fits = max(0, int((limit - used) // per_worker))
        if room is None or fits < room:
            room, binding = fits, key
    return room, binding


def describe_limit(vo: VO, key: str, usage: Usage) -> str:
    """``max_cores=2000, in use 1990`` — for messages."""
    limit = getattr(vo, key)
    if key == "max_memory":
        return f"max_memory={format_bytes(limit)}, in use {format_bytes(usage.memory)}"
    used = {"max_cores": usage.cores, "max_gpus": usage.gpus}.get(key, 0)
    return f"{key}={limit:g}, in use {used:g}"
