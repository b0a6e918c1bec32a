"""Talking to the API server: kubeconfig, requests with retries, errors admins can act on.

Requests retry 5xx answers, time-outs and connection errors with back-off and
then raise ``LauncherUnavailable`` (the backend retries later without counting
worker failures); a 403 becomes a message naming the missing permission and
``deploy/rbac.yaml``; other errors are not retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client import Configuration, CoreV1Api

from ...config import ConfigError
from ..base import LauncherUnavailable
from .status import shorten

# Every permission the launcher uses, in the namespace it runs pods in. deploy/rbac.yaml
# grants exactly these (a unit test compares them).
REQUIRED_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "pods": ("create", "delete", "deletecollection", "list", "watch"),
    # Owner references with blockOwnerDeletion need this where the
    # OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, the tests).
    "pods/finalizers": ("update",),
    # Logs of workers and schedulers, read before their pods are deleted (cluster.logs()).
    "pods/log": ("get",),
    "services": ("create", "delete"),
    "secrets": ("create", "delete"),
}

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubernetesAPIError(Exception):
    """The API server answered with an error that retrying will not fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KubernetesForbidden(KubernetesAPIError):
    """403: the gateway's service account lacks a permission (see deploy/rbac.yaml)."""


class WatchExpired(Exception):
    """410 Gone: the watch's resourceVersion is too old; the cache must be re-listed."""


def api_error_message(body: Any) -> str:
    """The ``message`` of a Kubernetes Status body, else the body itself."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    try:
        return str(json.loads(body).get("message") or body)
    except (TypeError, ValueError, AttributeError):
        return str(body or "")


def forbidden_message(verb: str, resource: str, namespace: str, detail: str) -> str:
    """An admin-facing 403 explanation naming the missing permission."""
    return (
        f"Kubernetes refused the gateway permission to {verb} {resource} in namespace "
        f"{namespace!r} (403: {shorten(detail)}). Grant the gateway's service account "
        f'"{verb}" on "{resource}" in that namespace: deploy/rbac.yaml is the Role with '
        "every permission the Kubernetes launcher needs."
    )


def describe_error(exc: BaseException) -> str:
    """A short name for a failed request, for logs and pending reasons."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def request_json(
    request: Callable[..., Awaitable[Any]],
    *,
    verb: str,
    resource: str,
    namespace: str,
    request_timeout: float,
    retry_for: float,
    log: logging.Logger,
) -> dict:
    """One API call returning the JSON body; retried on 5xx/time-outs with back-off.

    ``request`` is a bound kubernetes-asyncio method; it is called with
    ``_preload_content=False`` and ``_request_timeout``. ``verb``, ``resource``
    and ``namespace`` only name the call in errors and logs. Raises
    ``LauncherUnavailable`` once ``retry_for`` seconds are spent,
    ``KubernetesForbidden`` on 403 and ``KubernetesAPIError`` on other errors
    (404, 409, 422...).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    delay = 0.25
    while True:
        try:
            resp = await request(_preload_content=False, _request_timeout=request_timeout)
            try:
                body = await resp.read()
            finally:
                resp.release()
            if 200 <= resp.status < 300:
                return json.loads(body) if body else {}
            detail = api_error_message(body)
            if resp.status == 403:
                raise KubernetesForbidden(403, forbidden_message(verb, resource, namespace, detail))
            if resp.status not in RETRYABLE_STATUS:
                raise KubernetesAPIError(
                    resp.status,
                    f"Kubernetes API: {verb} {resource} in namespace {namespace!r} "
                    f"failed with {resp.status}: {shorten(detail)}",
                )
            last = f"{resp.status} {shorten(detail)}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = describe_error(exc)
        if loop.time() + delay > deadline:
            raise LauncherUnavailable(
                f"Kubernetes API unavailable: {verb} {resource} in namespace "
                f"{namespace!r} failed ({last})"
            )
        log.info("Kubernetes %s %s failed (%s); retrying in %.2fs", verb, resource, last, delay)
        await asyncio.sleep(delay * (1 + 0.2 * random.random()))
        delay = min(delay * 2, 5.0)


async def open_pod_watch(
    core: CoreV1Api,
    namespace: str,
    *,
    label_selector: str,
    resource_version: str,
    request_timeout: float,
    watch_timeout: float,
) -> AsyncIterator[dict]:
    """Start watching pods from ``resource_version``; the events as decoded dicts.

    Raises ``WatchExpired`` on 410 Gone (the caller must re-list),
    ``KubernetesForbidden`` on 403 and ``KubernetesAPIError`` otherwise.
    """
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=request_timeout,
        sock_read=watch_timeout + request_timeout,
    )
    resp = await core.list_namespaced_pod(
        namespace,
        label_selector=label_selector,
        watch=True,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        # Spread re-opens of many gateways; the server ends the stream before sock_read.
        timeout_seconds=max(1, int(watch_timeout * (0.9 + 0.1 * random.random()))),
        _preload_content=False,
        _request_timeout=timeout,
    )
    if resp.status != 200:
        try:
            detail = api_error_message(await resp.read())
        finally:
            resp.release()
        if resp.status == 410:
            raise WatchExpired(detail)
        if resp.status == 403:
            raise KubernetesForbidden(403, forbidden_message("watch", "pods", namespace, detail))
        raise KubernetesAPIError(resp.status, f"watch pods failed with {resp.status}: {detail}")
    return _watch_events(resp)


async def _watch_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict]:
    try:
        async for line in resp.content:
            line = line.strip()
            if line:
                yield json.loads(line)
    finally:
        resp.release()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


async def load_kube_config(
    configuration: Configuration, *, kubeconfig: str = "", context: str = "", namespace: str = ""
) -> str:
    """Fill ``configuration`` from the kubeconfig or the service account; the namespace.

    Precedence: ``kubeconfig``, else ``$KUBECONFIG``, else the in-cluster
    service account when running in a pod, else ``~/.kube/config``. The
    namespace: ``namespace``, else the pod's own (in-cluster) or the context's,
    else ``default``. Raises ``ConfigError`` saying which source failed.
    """
    path = kubeconfig or os.environ.get("KUBECONFIG", "")
    in_cluster = not path and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    where = "in-cluster service account" if in_cluster else f"kubeconfig {path or '~/.kube/config'}"
    try:
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)
            if not namespace and os.path.exists(IN_CLUSTER_NAMESPACE):
                namespace = (await asyncio.to_thread(_read, IN_CLUSTER_NAMESPACE)).strip()
        else:
            loader = await k8s_config.load_kube_config(
                config_file=path or None,
                context=context or None,
                client_configuration=configuration,
                persist_config=False,
            )
            if not namespace:
                ctx = (loader.current_context or {}).get("context") or {}
                namespace = ctx.get("namespace")
    except Exception as exc:
        raise ConfigError(
            f"KubernetesLauncher cannot load its Kubernetes configuration "
            f"({where}): {exc}; set KubernetesLauncher.kubeconfig (and kubeconfig_context) "
            "to a working kubeconfig"
        ) from exc
    return namespace or "default"
