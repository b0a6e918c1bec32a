"""Command lines and environments for Dask schedulers and workers.

Shared by every launcher so that a scheduler or worker looks the same whether it
runs as a local process, a pod or an HTCondor job. Secrets are never placed
here: the API token goes to the scheduler only (which needs it to heartbeat),
and TLS material is always passed as file paths.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster

CERT_FILE = "dask.crt"
KEY_FILE = "dask.pem"


@cache
def scheduler_checks_source() -> str:
    """The text of ``scheduler_checks``, a preload the scheduler runs wherever it runs."""
    from . import scheduler_checks

    return inspect.getsource(scheduler_checks)


@cache
def scheduler_preload_sources() -> tuple[str, ...]:
    """The texts of our scheduler preloads: the link to the gateway they share,
    reachability, client presence, versions, and the tasks of lost workers.

    Texts, not module names: the scheduler runs in the cluster's environment,
    where this package may not be installed.
    """
    from . import scheduler_link, scheduler_presence, scheduler_versions, worker_loss_preload

    return (
        inspect.getsource(scheduler_link),  # first: the others' line to the gateway
        scheduler_checks_source(),
        inspect.getsource(scheduler_presence),
        inspect.getsource(scheduler_versions),
        inspect.getsource(worker_loss_preload),
    )


def scheduler_command(cluster: Cluster, *, host: str, heartbeat_period: float) -> list[str]:
    """The scheduler command, with the dask-gateway preload that heartbeats to the API
    and ours: every worker reachable from the scheduler, no cluster left without a
    client, versions compared where they meet."""
    config = cluster.config
    ours = [arg for source in scheduler_preload_sources() for arg in ("--preload", source)]
    return [
        *config.scheduler_cmd,
        "--protocol",
        "tls",
        "--port",
        "0",
        "--host",
        host,
        "--dashboard-address",
        f"{host}:0",
        "--preload",
        "dask_gateway.scheduler_preload",
        "--dg-api-address",
        f"{host}:0",
        "--dg-heartbeat-period",
        str(heartbeat_period),
        "--dg-adaptive-period",
        str(config.adaptive_period),
        "--dg-idle-timeout",
        str(config.idle_timeout),
        *ours,
    ]


def worker_command(
    cluster: Cluster,
    worker_name: str,
    scheduler_address: str,
    *,
    host: str,
    scheduler_sni: str | None = None,
    dashboard: bool = True,
) -> list[str]:
    """The worker command. ``scheduler_sni`` routes through the gateway proxy.

    ``dashboard=False`` starts the worker without its own dashboard (and without importing
    Bokeh for it, a good part of a worker's start).
    """
    config = cluster.config
    cmd = [
        *config.worker_cmd,
        scheduler_address,
        "--host",
        host,
        *(["--dashboard-address", f"{host}:0"] if dashboard else ["--no-dashboard"]),
        "--name",
        worker_name,
        "--nthreads",
        str(config.worker_threads),
        "--memory-limit",
        str(config.worker_memory),
    ]
    gpus = getattr(config, "worker_gpus", 0)
    if gpus:
        # Dask schedules ``resources={"GPU": 1}`` tasks only on workers advertising it.
        cmd += ["--resources", f"GPU={int(gpus)}"]
    if scheduler_sni:
        cmd += ["--scheduler-sni", scheduler_sni]
    return cmd


def nanny_sni_preload(scheduler_sni: str) -> list[str]:
    """Arguments that let a worker's Nanny reach its scheduler through the proxy.

    ``--scheduler-sni`` reaches the Worker only; the Nanny connects to the scheduler
    too (``register_nanny``, plugins, restarts) with its own connection arguments.
    A nanny preload (Python text, which distributed runs before the Nanny first
    connects) adds the server name to them. The name is the proxy's route of a
    gateway-made cluster name (hex), so it needs no quoting beyond ``repr``.
    """
    code = f"def dask_setup(nanny): nanny.connection_args.update(server_hostname={scheduler_sni!r})"
    return ["--preload-nanny", code]


def proxy_sni(cluster: Cluster) -> str:
    """The TLS server name under which the gateway proxy routes to this cluster."""
    return f"daskgateway-{cluster.name}"


def _common_env(cluster: Cluster) -> dict[str, str]:
    env = {k: str(v) for k, v in dict(cluster.config.environment).items()}
    env["DASK_GATEWAY_CLUSTER_NAME"] = cluster.name
    env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    tick = getattr(cluster.config, "tick_interval", 0)  # 0 in records made before it existed
    if tick:
        env.setdefault("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", f"{tick}s")
    return env


def scheduler_env(cluster: Cluster, *, api_url: str, cert_path: str, key_path: str) -> dict:
    """Environment of the scheduler: gateway API access plus its TLS file paths."""
    env = _common_env(cluster)
    config = cluster.config
    env.update(
        {
            "ELASTIC_GATEWAY_REACHABILITY_TIMEOUT": str(
                config.get("worker_reachability_timeout", 5)
            ),
            "ELASTIC_GATEWAY_NO_CLIENT_TIMEOUT": str(config.get("no_client_timeout", 0)),
            "ELASTIC_GATEWAY_DETACHED_NO_CLIENT_TIMEOUT": str(
                config.get("detached_no_client_timeout", 0)
            ),
            "ELASTIC_GATEWAY_VERSION_MISMATCH": str(config.get("version_mismatch", "warn")),
            "DASK_GATEWAY_API_URL": api_url,
            "DASK_GATEWAY_API_TOKEN": cluster.token,
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert_path,
            "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": cert_path,
            "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": key_path,
        }
    )
    return env


def worker_env(cluster: Cluster, *, cert_path: str, key_path: str) -> dict[str, str]:
    """Environment of a worker: TLS file paths only, no API token."""
    env = _common_env(cluster)
    env.update(
        {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert_path,
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": cert_path,
            "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": key_path,
        }
    )
    return env
