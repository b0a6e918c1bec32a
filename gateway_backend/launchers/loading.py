"""Launcher instances from the admin's config: one per distinct (class, settings).

A pool is a configured launcher instance. Pools that override nothing share
one instance of their class (and with the scheduler launcher, if it is of that
class and overrides nothing), so a plain config runs one HTCondor status query
and one Kubernetes watch; a pool that overrides settings gets its own instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets import TraitError
from traitlets.config import Configurable
from traitlets.utils.importstring import import_item

from ..config import ConfigError
from .base import Launcher

# Short names admins may use in ``ElasticBackend.worker_pools`` and
# ``ElasticBackend.scheduler_launcher``; anything else is an import path.
LAUNCHER_CLASSES = {
    "local": "gateway_backend.launchers.local.LocalLauncher",
    "htcondor": "gateway_backend.launchers.htcondor.HTCondorLauncher",
    "kubernetes": "gateway_backend.launchers.kubernetes.KubernetesLauncher",
    "slurm": "gateway_backend.launchers.slurm.SlurmLauncher",
}


@dataclass(frozen=True)
class LauncherSpec:
    """A launcher as the admin named it, with the settings it overrides, and where."""

    kind: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    where: str = "ElasticBackend.scheduler_launcher"


def scheduler_spec(value: str | Mapping[str, Any]) -> LauncherSpec:
    """``ElasticBackend.scheduler_launcher``: a name, or a dict with ``launcher`` and settings."""
    where = "ElasticBackend.scheduler_launcher"
    if isinstance(value, str):
        return LauncherSpec(value, {}, where)
    kind = value.get("launcher")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(
            f"{where}['launcher'] must name a launcher (local, kubernetes or an import path)"
        )
    return LauncherSpec(kind, {k: v for k, v in value.items() if k != "launcher"}, where)


def launcher_class(spec: LauncherSpec) -> type[Launcher]:
    path = LAUNCHER_CLASSES.get(spec.kind, spec.kind)
    try:
        cls = import_item(path)
    except Exception as exc:
        raise ConfigError(f"{spec.where}: launcher {spec.kind!r} cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Launcher)):
        raise ConfigError(f"{spec.where}: launcher {spec.kind!r} ({path}) is not a Launcher")
    return cls


def _checked_settings(cls: type[Launcher], spec: LauncherSpec) -> dict[str, Any]:
    settable = cls.class_traits(config=True)
    unknown = sorted(set(spec.settings) - set(settable))
    if unknown:
        raise ConfigError(
            f"{spec.where} has unknown key(s) {unknown}: not settings of {cls.__name__} "
            f"(its settings: {', '.join(sorted(settable))})"
        )
    return dict(spec.settings)


def _instance(cls: type[Launcher], spec: LauncherSpec, parent: Configurable, log: Any) -> Launcher:
    settings = _checked_settings(cls, spec)
    try:
        return cls(parent=parent, log=log, **settings)
    except TraitError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None


def build_launchers(
    scheduler: LauncherSpec, pools: Mapping[str, LauncherSpec], parent: Configurable, log: Any
) -> tuple[Launcher, dict[str, Launcher]]:
    """The scheduler launcher and one launcher per pool name, shared where nothing differs."""
    shared: dict[type, Launcher] = {}

    def make(spec: LauncherSpec) -> Launcher:
        cls = launcher_class(spec)
        if spec.settings:
            return _instance(cls, spec, parent, log)
        if cls not in shared:
            shared[cls] = _instance(cls, spec, parent, log)
        return shared[cls]

    scheduler_launcher = make(scheduler)
    return scheduler_launcher, {name: make(spec) for name, spec in pools.items()}
