"""The Helm chart's ``values.json`` as dask-gateway configuration.

The chart mounts a two-line ``gateway_config.py`` next to ``values.json`` (the
values the gateway needs, rendered by Helm, without secrets); it calls
``configure_from_file``. Keeping the mapping here rather than in Go templates
lets it be tested in Python and lets every mistake name the values key to
change (``gateway.backend.vos.cms.max_cores: ...``) before the gateway starts.
Secrets arrive only as environment variables set from Secrets by the chart.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from traitlets import TraitError
from traitlets.config import Config, Configurable
from traitlets.utils.importstring import import_item

from .config import ConfigError

ELASTIC_BACKEND = "gateway_backend.ElasticBackend"
JUPYTERHUB_AUTHENTICATOR = "gateway_backend.jupyterhub_auth.ElasticJupyterHubAuthenticator"
SIMPLE_AUTHENTICATOR = "dask_gateway_server.auth.SimpleAuthenticator"
KERBEROS_AUTHENTICATOR = "dask_gateway_server.auth.KerberosAuthenticator"

# Environment variables the chart sets from Secrets (secretKeyRef) or to paths.
STATE_DIR_ENV = "ELASTIC_GATEWAY_STATE_DIR"
DB_URL_ENV = "ELASTIC_GATEWAY_DB_URL"
SIMPLE_PASSWORD_ENV = "ELASTIC_GATEWAY_SIMPLE_PASSWORD"
JUPYTERHUB_TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
KEYTAB_ENV = "ELASTIC_GATEWAY_KERBEROS_KEYTAB"

# gateway.backend keys that are ElasticBackend settings under another (camelCase) name.
BACKEND_TRAITS = {
    "schedulerLauncher": "scheduler_launcher",
    "pools": "worker_pools",
    "vos": "vos",
    "usersWithoutVo": "users_without_vo",
    "profiles": "profiles",
    "defaultWorkerPools": "default_worker_pools",
    "scaleDownOrder": "scale_down_order",
    "stopClustersOnShutdown": "stop_clusters_on_shutdown",
    "maxWorkerCores": "max_worker_cores",
    "maxWorkerMemory": "max_worker_memory",
}
# gateway.backend sections holding one class's settings by their own names.
LAUNCHER_SECTIONS = {
    "kubernetes": "gateway_backend.launchers.kubernetes.KubernetesLauncher",
    "htcondor": "gateway_backend.launchers.htcondor.HTCondorLauncher",
    "slurm": "gateway_backend.launchers.slurm.SlurmLauncher",
    "local": "gateway_backend.launchers.local.LocalLauncher",
}
# Launchers that tag what they start with a gateway_id: the release's full name by default,
# so that two releases sharing a namespace, schedd or Slurm account never adopt each other's.
GATEWAY_ID_SECTIONS = ("kubernetes", "htcondor", "slurm")
# ElasticBackend settings that gateway.backend.settings may not set, and what to use instead.
SETTINGS_ELSEWHERE = {
    "db_url": "gateway.state.databaseUrl or gateway.state.existingSecret (kept in a Secret)",
    "db_encrypt_keys": "gateway.existingSecret (key encrypt-keys)",
    "metrics_api_token": "gateway.existingSecret (key metrics-token)",
    **{trait: f"gateway.backend.{key}" for key, trait in BACKEND_TRAITS.items()},
}
# The pools of a chart that names none (values.yaml cannot default them: Helm merges maps).
DEFAULT_POOLS = {"pods": {"launcher": "kubernetes"}}
# gateway.logLevel (the gateway's, Python's names) -> the Go proxy's level.
PROXY_LOG_LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warn",
    "ERROR": "error",
    "CRITICAL": "error",
}


def configure_from_file(c: Config, config_file: str) -> Config:
    """Configure ``c`` from the ``values.json`` next to ``config_file`` (the chart's layout)."""
    path = Path(config_file).resolve().parent / "values.json"
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    return configure(c, values)


def configure(c: Config, values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Set dask-gateway's traitlets config ``c`` from the chart's rendered values.

    ``env`` (default ``os.environ``) holds the secrets the chart passes from
    Secrets. Raises ``ValueError`` naming the values key on any unknown key or
    wrong value. ``gateway.extraConfig`` snippets run last, in name order.
    """
    env = os.environ if env is None else env
    _keys(values, "values.json", {"release", "apiUrl", "prefix", "gateway"})
    release = _keys(values.get("release", {}), "release", {"name", "namespace", "fullname"})
    gateway = _keys(
        values.get("gateway", {}),
        "gateway",
        {"logLevel", "ports", "backend", "auth", "extraConfig"},
    )
    _configure_server(c, values, gateway)
    _configure_backend(c, gateway.get("backend", {}), release, env)
    _configure_auth(c, gateway.get("auth", {"type": "simple"}), env)
    _run_extra_config(c, gateway.get("extraConfig", {}))
    return c


def _configure_server(c: Config, values: Mapping[str, Any], gateway: Mapping[str, Any]) -> None:
    ports = _keys(gateway.get("ports", {}), "gateway.ports", {"api", "http", "tls"})
    for name in ("api", "http", "tls"):
        port = ports.get(name)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(
                f"gateway.ports.{name}: must be a port number (1-65535), got {port!r}"
            )
    c.DaskGateway.backend_class = ELASTIC_BACKEND
    c.DaskGateway.address = f":{ports['api']}"
    c.Proxy.address = f":{ports['http']}"
    c.Proxy.tcp_address = f":{ports['tls']}"
    prefix = values.get("prefix", "")
    if not isinstance(prefix, str) or (prefix and not re.fullmatch(r"/[^\s]*[^/\s]", prefix)):
        raise ConfigError(
            f"jupyterhub.prefix: must be a path like /services/dask-gateway, got {prefix!r}"
        )
    c.Proxy.prefix = prefix
    level = gateway.get("logLevel", "INFO")
    if level not in PROXY_LOG_LEVELS:
        raise ConfigError(
            f"gateway.logLevel: must be one of {sorted(PROXY_LOG_LEVELS)}, got {level!r}"
        )
    c.DaskGateway.log_level = level
    c.Proxy.log_level = PROXY_LOG_LEVELS[level]
    api_url = values.get("apiUrl")
    if not isinstance(api_url, str) or not re.match(r"https?://", api_url):
        raise ConfigError(f"apiUrl (rendered from apiService): not an http(s) URL: {api_url!r}")
    c.ElasticBackend.api_url = api_url


def _configure_backend(
    c: Config,
    backend: Mapping[str, Any],
    release: Mapping[str, Any],
    env: Mapping[str, str],
) -> None:
    from .backend import ElasticBackend
    from .cluster_config import ElasticClusterConfig

    where = "gateway.backend"
    allowed = set(BACKEND_TRAITS) | set(LAUNCHER_SECTIONS) | {"settings", "clusterConfig"}
    _keys(backend, where, allowed)
    backend = {**backend, "pools": backend.get("pools") or DEFAULT_POOLS}
    state_dir = env.get(STATE_DIR_ENV) or os.getcwd()
    db_url = env.get(DB_URL_ENV) or f"sqlite:///{state_dir}/gateway.sqlite"
    c.ElasticBackend.db_url = db_url
    # Workers' and schedulers' logs outlive them (cluster.logs()): on the state volume too.
    c.ElasticBackend.log_directory = f"{state_dir}/logs"
    presets = {"db_url": db_url}
    for key, trait in BACKEND_TRAITS.items():
        if key in backend:
            c.ElasticBackend[trait] = _checked(
                ElasticBackend, trait, backend[key], f"{where}.{key}", presets
            )

    settings = _mapping(backend.get("settings", {}), f"{where}.settings")
    for name, value in settings.items():
        if name in SETTINGS_ELSEWHERE:
            raise ConfigError(f"{where}.settings.{name}: set it with {SETTINGS_ELSEWHERE[name]}")
        c.ElasticBackend[name] = _checked(
            ElasticBackend, name, value, f"{where}.settings.{name}", presets
        )
    cluster_config = _mapping(backend.get("clusterConfig", {}), f"{where}.clusterConfig")
    for name, value in cluster_config.items():
        checked = _checked(ElasticClusterConfig, name, value, f"{where}.clusterConfig.{name}")
        c.ElasticClusterConfig[name] = checked

    for section, path in LAUNCHER_SECTIONS.items():
        given = _mapping(backend.get(section, {}), f"{where}.{section}")
        if not _used(backend, section) and not any(v not in ("", None) for v in given.values()):
            continue  # not used, nothing given: do not import its dependencies
        settings = _launcher_defaults(section, dict(given), release, state_dir)
        cls = _import_class(path, f"{where}.{section}")
        for name, value in settings.items():
            c[cls.__name__][name] = _checked(cls, name, value, f"{where}.{section}.{name}")
    _check_launcher_overrides(backend, where)


def _launcher_defaults(
    section: str, settings: dict[str, Any], release: Mapping[str, Any], state_dir: str
) -> dict[str, Any]:
    """What the chart sets in a launcher section unless the admin did."""
    if section in GATEWAY_ID_SECTIONS:
        settings["gateway_id"] = settings.get("gateway_id") or release.get("fullname")
    if section == "kubernetes":
        settings["namespace"] = settings.get("namespace") or release.get("namespace", "")
        if not settings.get("image"):
            settings.pop("image", None)  # the launcher's own default image
    if section == "local":
        settings.setdefault("work_directory", f"{state_dir}/clusters")
    return {k: v for k, v in settings.items() if v is not None}


def _used(backend: Mapping[str, Any], launcher: str) -> bool:
    """Whether the scheduler launcher or a pool names ``launcher``."""
    scheduler = backend.get("schedulerLauncher", "local")
    if isinstance(scheduler, Mapping):
        scheduler = scheduler.get("launcher")
    pools = backend.get("pools", {}) or {}
    return scheduler == launcher or any(
        isinstance(p, Mapping) and p.get("launcher", "local") == launcher for p in pools.values()
    )


def _check_launcher_overrides(backend: Mapping[str, Any], where: str) -> None:
    """Every launcher named must import; the settings a pool or the scheduler launcher
    overrides are checked against its class (the backend would only find out at start)."""
    from .pools import POOL_KEYS

    scheduler = backend.get("schedulerLauncher", "local")
    if not isinstance(scheduler, Mapping):
        scheduler = {"launcher": scheduler}
    named = [(f"{where}.schedulerLauncher", scheduler, set())]
    named += [(f"{where}.pools.{n}", p, POOL_KEYS) for n, p in backend["pools"].items()]
    for at, spec, own_keys in named:
        kind = spec.get("launcher", "local")
        cls = _import_class(LAUNCHER_SECTIONS.get(kind, kind), f"{at}.launcher")
        for key, value in spec.items():
            if key not in own_keys and key != "launcher":
                _checked(cls, key, value, f"{at}.{key}")


def _configure_auth(c: Config, auth: Mapping[str, Any], env: Mapping[str, str]) -> None:
    kind = _mapping(auth, "gateway.auth").get("type")
    sections = {"jupyterhub", "simple", "kerberos", "custom"}
    if kind not in sections:
        raise ConfigError(f"gateway.auth.type: must be one of {sorted(sections)}, got {kind!r}")
    _keys(auth, "gateway.auth", {"type", kind})
    where = f"gateway.auth.{kind}"
    if kind == "simple":
        password = env.get(SIMPLE_PASSWORD_ENV, "")
        if not password:
            raise ConfigError(
                f"{where}: {SIMPLE_PASSWORD_ENV} is empty, so anyone could log in; the chart "
                "sets it from the Secret (gateway.auth.simple.existingSecret or the chart's)"
            )
        c.DaskGateway.authenticator_class = SIMPLE_AUTHENTICATOR
        c.SimpleAuthenticator.password = password
    elif kind == "jupyterhub":
        hub = _keys(auth.get(kind, {}), where, {"apiUrl", "serviceName", "stopClustersWithServer"})
        api_url = hub.get("apiUrl", "")
        if not isinstance(api_url, str) or not re.match(r"https?://\S+$", api_url):
            raise ConfigError(f"{where}.apiUrl: the hub's API URL, e.g. http://hub:8081/hub/api")
        token = env.get(JUPYTERHUB_TOKEN_ENV, "")
        if not token:
            raise ConfigError(
                f"{where}: {JUPYTERHUB_TOKEN_ENV} is empty; the chart sets it from "
                f"{where}.existingSecret or the chart's Secret (key jupyterhub-api-token)"
            )
        c.DaskGateway.authenticator_class = JUPYTERHUB_AUTHENTICATOR
        c.ElasticJupyterHubAuthenticator.jupyterhub_api_url = api_url
        c.ElasticJupyterHubAuthenticator.jupyterhub_api_token = token
        c.ElasticJupyterHubAuthenticator.jupyterhub_service_name = _string(
            hub.get("serviceName", "dask-gateway"), f"{where}.serviceName"
        )
        stop_with_server = hub.get("stopClustersWithServer", False)
        if not isinstance(stop_with_server, bool):
            raise ConfigError(
                f"{where}.stopClustersWithServer: must be true or false, got {stop_with_server!r}"
            )
        c.ElasticJupyterHubAuthenticator.stop_clusters_with_server = stop_with_server
    elif kind == "kerberos":
        kerberos = _keys(auth.get(kind, {}), where, {"serviceName"})
        keytab = env.get(KEYTAB_ENV, "")
        if not keytab:
            raise ConfigError(f"{where}.keytabSecret: {KEYTAB_ENV} (the keytab's path) is unset")
        c.DaskGateway.authenticator_class = KERBEROS_AUTHENTICATOR
        c.KerberosAuthenticator.keytab = keytab
        c.KerberosAuthenticator.service_name = _string(
            kerberos.get("serviceName", "HTTP"), f"{where}.serviceName"
        )
    else:
        custom = _keys(auth.get(kind, {}), where, {"class", "config"})
        path = _string(custom.get("class", ""), f"{where}.class")
        cls = _import_class(path, f"{where}.class")
        c.DaskGateway.authenticator_class = path
        for name, value in _mapping(custom.get("config", {}), f"{where}.config").items():
            c[cls.__name__][name] = _checked(cls, name, value, f"{where}.config.{name}")


def _run_extra_config(c: Config, snippets: Mapping[str, Any]) -> None:
    """Run the admin's snippets in name order, as upstream dask-gateway's chart does."""
    for name in sorted(_mapping(snippets, "gateway.extraConfig")):
        code = _string(snippets[name], f"gateway.extraConfig.{name}")
        exec(compile(code, f"<gateway.extraConfig.{name}>", "exec"), {"c": c})


# -- checks --------------------------------------------------------------------------------------
def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _keys(value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    unknown = sorted(set(_mapping(value, where)) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
        )
    return value


def _import_class(path: str, where: str) -> type[Configurable]:
    try:
        cls = import_item(path)
    except Exception as exc:  # any import failure is the admin's to fix, by this key
        raise ConfigError(f"{where}: {path!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Configurable)):
        raise ConfigError(f"{where}: {path!r} is not a configurable class")
    return cls


def _checked(
    cls: type[Configurable],
    name: str,
    value: Any,
    where: str,
    presets: Mapping[str, Any] | None = None,
) -> Any:
    """``value`` as trait ``name`` of ``cls`` accepts it, or an error naming ``where``.

    ``presets``: settings that validators compare with (``db_url`` for ElasticBackend).
    """
    traits = cls.class_traits(config=True)
    if name not in traits:
        raise ConfigError(
            f"{where}: {cls.__name__} has no setting {name!r} (its settings: "
            f"{', '.join(sorted(traits))})"
        )
    # An instance without __init__ (no launcher or backend starts), so that the class's own
    # @validate checks run as well as the trait's type check.
    probe = cls.__new__(cls)
    Configurable.__init__(probe)
    for preset, preset_value in (presets or {}).items():
        setattr(probe, preset, preset_value)
    try:
        setattr(probe, name, value)
    except (TraitError, ValueError, TypeError) as exc:
        raise ConfigError(_values_message(str(exc), where)) from None
    return getattr(probe, name)


def _values_message(message: str, where: str) -> str:
    """Name the values key where a message names the trait.

    ``ElasticBackend.vos['cms']['max_cores'] must be...`` becomes
    ``gateway.backend.vos.cms.max_cores: must be...``.
    """
    match = re.match(r"\w+\.\w+((?:\['[^']*'\])+)\s*", message)
    if match:
        keys = re.findall(r"\['([^']*)'\]", match.group(1))
        return f"{'.'.join([where, *keys])}: {message[match.end() :]}"
    return f"{where}: {message}"
