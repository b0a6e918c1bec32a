"""Errors and parsing shared by every part of the admin's configuration."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what to change."""


def named_settings(
    spec: Mapping[str, Any], trait: str, allowed: set[str] | None, noun: str
) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """Check a config dict of named settings dicts; yield (name, settings, where-for-errors).

    ``allowed`` lists the keys a settings dict may have (None: any; the caller checks).
    """
    for name, entry in spec.items():
        where = f"{trait}[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{trait}: {noun} names must be non-empty strings, got {name!r}")
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a dict of settings, got {entry!r}")
        unknown = set() if allowed is None else set(entry) - allowed
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        yield name, entry, where
