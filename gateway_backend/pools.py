"""Worker pools: a launcher, its cap, and who may use it — parsed from admin config."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .launchers.base import Launcher

POOL_KEYS = {"launcher", "max_workers", "vos", "burst_after"}


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what to change."""


def named_settings(
    spec: Mapping[str, Any], trait: str, allowed: set[str], noun: str
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """Check a config dict of named settings dicts; yield (name, settings, where-for-errors)."""
    for name, entry in spec.items():
        where = f"{trait}[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{trait}: {noun} names must be non-empty strings, got {name!r}")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a dict of settings, got {entry!r}")
        unknown = set(entry) - allowed
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        yield name, entry, where


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


def parse_pool_specs(
    specs: Mapping[str, Any], trait: str = "ElasticBackend.worker_pools"
) -> dict[str, PoolSpec]:
    """Validate the admin's pool dict, keeping its order (the placement order)."""
    if not specs:
        raise ConfigError(f"{trait} is empty: define at least one pool, e.g. {{'local': {{}}}}")
    out = {}
    for name, spec, where in named_settings(specs, trait, POOL_KEYS, "pool"):
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
        out[name] = PoolSpec(kind, cap, frozenset(vos), burst)
    return out
