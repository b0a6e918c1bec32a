"""Launchers: one module per place where schedulers and workers run."""

from __future__ import annotations

from .base import (
    Check,
    ClusterFacts,
    KnownRecords,
    Launcher,
    LauncherContext,
    LauncherUnavailable,
    Phase,
)
from .loading import LAUNCHER_CLASSES

__all__ = [
    "LAUNCHER_CLASSES",
    "Check",
    "ClusterFacts",
    "KnownRecords",
    "Launcher",
    "LauncherContext",
    "LauncherUnavailable",
    "Phase",
]
