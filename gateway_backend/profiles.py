"""Cluster profiles: the admin's catalogue of what analysts may run.

A profile names a software environment (a container image for pods and
HTCondor jobs, a Python interpreter for local processes), the worker sizes
offered, GPUs per worker, the pools in order, lifetimes and extra environment
variables, and the VOs that may use it. Since distributed 2023.4 the scheduler
unpickles task graphs, so the scheduler runs in the profile's environment too.

A chosen profile becomes the cluster's config (``ElasticClusterConfig``), which
is stored with the cluster: launchers read ``image``/``python``/``worker_gpus``
from there, and a restarted gateway runs adopted clusters as they were created.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, named_settings
from .usertext import quoted

PROFILE_KEYS = {
    "display_name",
    "description",
    "vos",
    "image",
    "python",
    "worker_cores",
    "worker_memory",
    "worker_gpus",
    "pools",
    "idle_timeout",
    "max_lifetime",
    "no_client_timeout",
    "detached_no_client_timeout",
    "env",
}

# Registry references and /cvmfs paths; no quotes, spaces or `$` (they reach submit files).
IMAGE = re.compile(r"[A-Za-z0-9/][A-Za-z0-9._:/@+=-]{0,511}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


@dataclass(frozen=True)
class SizeChoice:
    """The sizes offered for one resource: a range, or a list of choices (a dropdown)."""

    default: float
    low: float
    high: float
    choices: tuple[float, ...] = ()

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value`` for this choice, or None."""
        if self.choices:
            if value not in self.choices:
                return "one of " + ", ".join(f"{c:g}" for c in self.choices)
            return None
        if not self.low <= value <= self.high:
            return f"from {self.low:g} to {self.high:g}"
        return None

    def describe(self) -> dict[str, Any]:
        if self.choices:
            return {"default": self.default, "choices": list(self.choices)}
        return {"default": self.default, "min": self.low, "max": self.high}


@dataclass(frozen=True)
class Profile:
    """One entry of ``ElasticBackend.profiles``, validated."""

    name: str
    display_name: str
    description: str = ""
    vos: frozenset[str] = frozenset()
    image: str = ""
    python: str = ""
    worker_cores: SizeChoice = SizeChoice(1, 1, 1)
    worker_memory: SizeChoice = SizeChoice(2, 2, 2)  # GiB
    worker_gpus: int = 0
    pools: tuple[str, ...] = ()
    idle_timeout: float | None = None  # None: ElasticClusterConfig.idle_timeout
    max_lifetime: float | None = None  # None: ElasticClusterConfig.max_lifetime
    no_client_timeout: float | None = None  # None: ElasticClusterConfig's
    detached_no_client_timeout: float | None = None  # None: ElasticClusterConfig's
    env: Mapping[str, str] = field(default_factory=dict)

    def allows(self, vo: str | None) -> bool:
        """Whether clusters of ``vo`` may use this profile (no list: everyone)."""
        return not self.vos or (vo is not None and vo in self.vos)

    def environment_text(self) -> str:
        """The software environment in the analyst's words."""
        parts = []
        if self.image:
            parts.append(f"image {self.image}")
        if self.python:
            parts.append(f"Python {self.python}")
        return ", ".join(parts) or "the gateway's default environment"

    def describe(self) -> dict[str, Any]:
        """What an analyst sees of the profile (``/api/elastic/v1/profiles``)."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "environment": self.environment_text(),
            "image": self.image or None,
            "python": self.python or None,
            "worker_cores": self.worker_cores.describe(),
            "worker_memory_gib": self.worker_memory.describe(),
            "worker_gpus": self.worker_gpus,
            "pools": list(self.pools),
            "idle_timeout": self.idle_timeout,
            "max_lifetime": self.max_lifetime,
            "no_client_timeout": self.no_client_timeout,
            "detached_no_client_timeout": self.detached_no_client_timeout,
        }


def _number(value: Any, where: str, *, positive: bool = True) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if bad or not math.isfinite(value) or (value <= 0 if positive else value < 0):
        what = "a positive number" if positive else "a non-negative number"
        raise ConfigError(f"{where} must be {what}, got {value!r}")
    return float(value)


def parse_size(value: Any, where: str, *, integer: bool) -> SizeChoice:
    """``2`` (fixed), ``[1, 2, 4]`` (choices, the first is the default) or
    ``{"min": 1, "max": 8, "default": 2}``."""
    check = (lambda v, w: _integer(v, w, minimum=1)) if integer else _number
    if isinstance(value, Mapping):
        unknown = set(value) - {"min", "max", "default"}
        if unknown or "max" not in value:
            raise ConfigError(
                f"{where} must have 'max' and may have 'min' and 'default' "
                f"(unknown: {sorted(unknown)})"
            )
        high = check(value["max"], f"{where}['max']")
        low = check(value.get("min", 1 if integer else min(0.25, high)), f"{where}['min']")
        default = check(value.get("default", low), f"{where}['default']")
        if not low <= default <= high:
            raise ConfigError(
                f"{where}: need min <= default <= max, got {low:g}, {default:g}, {high:g}"
            )
        return SizeChoice(default, low, high)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise ConfigError(f"{where} must list at least one size")
        choices = tuple(check(v, f"{where}[{i}]") for i, v in enumerate(value))
        return SizeChoice(choices[0], min(choices), max(choices), choices)
    fixed = check(value, where)
    return SizeChoice(fixed, fixed, fixed)


def _integer(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer of at least {minimum}, got {value!r}")
    return value


def _text(value: Any, where: str, limit: int = 1000) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ConfigError(f"{where} must be a string of at most {limit} characters")
    return value


def _optional_seconds(spec: Mapping[str, Any], key: str, where: str) -> float | None:
    if spec.get(key) is None:
        return None
    return _number(spec[key], f"{where}[{key!r}]", positive=False)


def parse_profile(name: str, spec: Mapping[str, Any], where: str) -> Profile:
    vos = spec.get("vos", [])
    if isinstance(vos, str) or not all(isinstance(v, str) for v in vos):
        raise ConfigError(f"{where}['vos'] must be a list of VO names, got {vos!r}")
    image = _text(spec.get("image", ""), f"{where}['image']")
    if image and not IMAGE.fullmatch(image):
        raise ConfigError(
            f"{where}['image'] = {image!r} is not an image reference or path "
            "(letters, digits and . _ : / @ + = - only)"
        )
    python = _text(spec.get("python", ""), f"{where}['python']", 4096)
    if python and (not os.path.isabs(python) or not python.isprintable()):
        raise ConfigError(
            f"{where}['python'] = {python!r} must be the absolute path of a Python "
            "interpreter (e.g. /opt/conda/envs/coffea/bin/python)"
        )
    pools = spec.get("pools", [])
    if isinstance(pools, str) or not all(isinstance(p, str) and p for p in pools):
        raise ConfigError(f"{where}['pools'] must be a list of pool names, got {pools!r}")
    env = spec.get("env", {})
    if not isinstance(env, Mapping):
        raise ConfigError(f"{where}['env'] must be a dict of environment variables")
    for key, value in env.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise ConfigError(f"{where}['env']: {key!r} is not an environment variable name")
        if not isinstance(value, str) or not value.isprintable():
            raise ConfigError(f"{where}['env'][{key!r}] must be a one-line string")
    return Profile(
        name=name,
        display_name=_text(spec.get("display_name", name), f"{where}['display_name']", 200),
        description=_text(spec.get("description", ""), f"{where}['description']"),
        vos=frozenset(vos),
        image=image,
        python=python,
        worker_cores=parse_size(
            spec.get("worker_cores", 1), f"{where}['worker_cores']", integer=True
        ),
        worker_memory=parse_size(
            spec.get("worker_memory", 2), f"{where}['worker_memory']", integer=False
        ),
        worker_gpus=_integer(spec.get("worker_gpus", 0), f"{where}['worker_gpus']"),
        pools=tuple(dict.fromkeys(pools)),
        idle_timeout=_optional_seconds(spec, "idle_timeout", where),
        max_lifetime=_optional_seconds(spec, "max_lifetime", where),
        no_client_timeout=_optional_seconds(spec, "no_client_timeout", where),
        detached_no_client_timeout=_optional_seconds(spec, "detached_no_client_timeout", where),
        env=dict(env),
    )


def parse_profiles(
    specs: Mapping[str, Any], trait: str = "ElasticBackend.profiles"
) -> dict[str, Profile]:
    """Validate the admin's profiles, keeping their order (the first is the default)."""
    return {
        name: parse_profile(name, spec, where)
        for name, spec, where in named_settings(specs, trait, PROFILE_KEYS, "profile")
    }


def check_references(
    profiles: Mapping[str, Profile], pools: Sequence[str], vos: Sequence[str]
) -> None:
    """Profiles may only name configured pools and VOs (checked once both are known)."""
    for p in profiles.values():
        where = f"ElasticBackend.profiles[{p.name!r}]"
        unknown = [n for n in p.pools if n not in pools]
        if unknown:
            raise ConfigError(
                f"{where}['pools'] names {unknown}, not pools of ElasticBackend.worker_pools "
                f"({', '.join(pools)})"
            )
        unknown = sorted(p.vos - set(vos))
        if unknown:
            raise ConfigError(
                f"{where}['vos'] names {unknown}, not VOs of ElasticBackend.vos "
                f"({', '.join(vos) or 'none configured'})"
            )


def check_interpreters(profiles: Mapping[str, Profile]) -> None:
    """Each profile's ``python`` runs here (checked at start-up, where it will run)."""
    for p in profiles.values():
        if p.python and not os.access(p.python, os.X_OK):
            raise ConfigError(
                f"ElasticBackend.profiles[{p.name!r}]['python'] = {p.python!r} is not an "
                "executable on this machine: install the environment or fix the path"
            )


def refuse_unlisted(name: str, usable: Sequence[Profile]) -> None:
    """``ValueError`` for a profile the user may not use, naming the ones they may."""
    names = ", ".join(p.name for p in usable) or "none"
    raise ValueError(f"profile {quoted(name)} is not one you may use; choose from: {names}")
