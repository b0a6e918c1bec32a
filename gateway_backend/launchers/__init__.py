"""Launchers: one module per place where schedulers and workers run."""

from __future__ import annotations

from .base import Launcher, LauncherUnavailable, WorkerCheck, WorkerPhase

# Short names admins may use in ``ElasticBackend.worker_pools`` and
# ``ElasticBackend.scheduler_launcher``; anything else is an import path.
LAUNCHER_CLASSES = {
    "local": "gateway_backend.launchers.local.LocalLauncher",
    "htcondor": "gateway_backend.launchers.htcondor.HTCondorLauncher",
    "kubernetes": "gateway_backend.launchers.kubernetes.KubernetesLauncher",
}

__all__ = ["LAUNCHER_CLASSES", "Launcher", "LauncherUnavailable", "WorkerCheck", "WorkerPhase"]
