"""Schedulers and workers as Kubernetes pods, through kubernetes-asyncio.

One module per concern, lowest layer first: ``status`` (what a pod's status
means), ``client`` (kubeconfig, API calls with retries, errors),
``watch`` (the pod informer), ``manifests`` (the objects, pure functions),
``settings`` (the admin's traits) and ``launcher`` (``KubernetesLauncher``:
lifecycle and reconciliation). ``KubernetesLauncher`` is imported from here:
``gateway_backend.launchers.kubernetes.KubernetesLauncher`` is the path in
admins' configs.
"""

from __future__ import annotations

from .client import REQUIRED_PERMISSIONS
from .launcher import KubernetesLauncher

__all__ = ["REQUIRED_PERMISSIONS", "KubernetesLauncher"]
