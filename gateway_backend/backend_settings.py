"""The admin's settings of ``ElasticBackend`` (``c.ElasticBackend.<name>``).

Kept apart from the backend's logic so that the class wiring upstream's hooks
reads as the hooks; the ``help=`` texts are the admin's documentation
(``docs/configuration.md`` is generated from them).
"""

from __future__ import annotations

import os
import tempfile

from dask_gateway_server.backends.base import ClusterConfig
from dask_gateway_server.traitlets import Type
from traitlets import (
    CaselessStrEnum,
    Dict,
    Float,
    Integer,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)
from traitlets.config import Configurable

from .config import ConfigError
from .launchers.loading import scheduler_spec
from .pools import parse_pool_specs
from .profiles import parse_profiles
from .quotas import parse_vos


class ElasticSettings(Configurable):
    """Settings of ``ElasticBackend``; configure them as ``c.ElasticBackend.<name>``."""

    cluster_config_class = Type(
        "gateway_backend.cluster_config.ElasticClusterConfig",
        klass=ClusterConfig,
        help="The cluster config class to use.",
        config=True,
    )

    scheduler_launcher = Union(
        [Unicode(), Dict()],
        default_value="local",
        help="""
        Where schedulers run: a launcher name (``local``, ``kubernetes``) or the
        import path of a ``gateway_backend.launchers.Launcher`` subclass; or a
        dict with ``launcher`` and settings of that launcher class that the
        scheduler launcher overrides, e.g. ``{"launcher": "kubernetes",
        "namespace": "dask"}``.
        """,
        config=True,
    )

    worker_pools = Dict(
        {"local": {"launcher": "local"}},
        help="""
        Named worker pools, in placement order. Each value is a dict with:

        - ``launcher``: ``local``, ``htcondor``, ``kubernetes`` or an import path
          (default ``local``);
        - ``max_workers``: cap on workers in this pool over all clusters
          (default: no cap);
        - ``vos``: VOs allowed to use the pool (default: everyone);
        - ``burst_after``: seconds a worker may stay pending here before it
          moves to the next pool of its cluster (default: never);
        - any setting of the launcher class, overridden for this pool only
          (``{"gpu": {"launcher": "htcondor", "extra_submit": {"requirements":
          "CUDACapability >= 8"}}}``): each pool that overrides settings runs its
          own launcher instance; pools that override nothing share one.

        New workers fill the pools in order, each up to its cap.
        """,
        config=True,
    )

    vos = Dict(
        {},
        help="""
        Virtual organisations and their quotas. Keys are VO names; each value
        is a dict with any of:

        - ``groups``: authenticator groups whose members belong to the VO;
        - ``max_cores``, ``max_memory`` (bytes or a string like ``"8 TiB"``),
          ``max_gpus``: totals over all clusters of the VO, schedulers and
          workers included;
        - ``max_clusters_per_user``, ``max_workers_per_cluster``;
        - ``accounting_group``: the HTCondor accounting group of its jobs.

        An omitted limit is unlimited. With no VOs configured, quotas are off.
        """,
        config=True,
    )

    profiles = Dict(
        {},
        help="""
        The catalogue of cluster profiles users choose from (the cluster option
        ``profile``), in order; the first a user may use is their default. Each
        value is a dict with any of:

        - ``display_name``, ``description``: what users read;
        - ``vos``: VOs that may use it (default: everyone);
        - ``image``: the container image of its pods and HTCondor jobs (pods'
          ``image``, HTCondor's ``container_image``), scheduler and workers;
        - ``python``: the interpreter the local launcher runs its scheduler and
          workers with (e.g. ``/opt/conda/envs/coffea/bin/python``; it needs
          ``distributed``, ``dask-gateway`` and ``bokeh`` installed);
        - ``worker_cores``, ``worker_memory`` (GiB): a number (fixed), a list
          of choices (the first is the default) or ``{"min": .., "max": ..,
          "default": ..}``;
        - ``worker_gpus``: GPUs per worker (advertised as the Dask resource ``GPU``);
        - ``pools``: pools of ``worker_pools`` its workers use, in order
          (default: every pool the VO may use);
        - ``idle_timeout``, ``max_lifetime``, ``no_client_timeout``,
          ``detached_no_client_timeout``: seconds (0: off; default: the
          ``ElasticClusterConfig`` values);
        - ``env``: extra environment variables of scheduler and workers.

        Empty (the default): no profiles; users choose worker cores and memory
        within ``max_worker_cores``/``max_worker_memory``.
        """,
        config=True,
    )

    @validate("worker_pools", "vos", "scheduler_launcher", "profiles")
    def _validate_structured(self, proposal):
        parse = {
            "profiles": parse_profiles,
            "worker_pools": parse_pool_specs,
            "vos": parse_vos,
            "scheduler_launcher": scheduler_spec,
        }[proposal.trait.name]
        try:
            parse(proposal.value)
        except ConfigError as exc:
            raise TraitError(str(exc)) from None
        return proposal.value

    users_without_vo = Unicode(
        "refuse",
        help="""
        What happens to users whose groups match no VO: ``"refuse"`` (their
        cluster requests are refused with an explanation) or the name of a VO
        in ``vos`` to count them against.
        """,
        config=True,
    )

    default_worker_pools = Dict(
        {},
        help="""
        Pools a cluster uses when its owner does not choose with the cluster
        option ``worker_pools``, per VO: ``{"cms": ["pods", "condor"], "*":
        ["condor"]}`` (``"*"``: everyone else). In the listed order. Default:
        every pool the VO may use, in ``worker_pools`` order.
        """,
        config=True,
    )

    scale_down_order = List(
        Unicode(),
        [],
        help="""
        Pools whose running workers leave first when a user scales a cluster
        down (after its pending workers), e.g. ``["condor", "pods"]``. Pools not
        listed follow in reverse placement order; default: reverse placement
        order, so the pools a cluster spilled into are released first.
        Adaptive scale-down is left to the scheduler's own choice.
        """,
        config=True,
    )

    retire_timeout = Float(
        60.0,
        help="Seconds the scheduler may take to retire workers (moving their data).",
        config=True,
    )

    max_worker_cores = Integer(
        4,
        min=1,
        help="Largest ``worker_cores`` a user may request with the default cluster options.",
        config=True,
    )

    max_worker_memory = Float(
        16.0,
        min=0.25,
        help="Largest ``worker_memory`` (GiB) a user may request with the default options.",
        config=True,
    )

    stop_batch_window = Float(
        0.05,
        min=0,
        help="""
        Seconds to collect worker stop requests before sending them to a launcher
        as one call (one ``condor_rm`` constraint, one round of pod deletions).
        """,
        config=True,
    )

    metrics_api_token = Unicode(
        "",
        help="""
        Bearer token that Prometheus presents to scrape ``/api/elastic/v1/metrics``
        (``authorization: {credentials: ...}`` in the scrape config). Without it,
        only users the authenticator marks as admins may read the metrics, which
        name every VO with its limits and usage. Keep it out of world-readable
        files; the environment variable ``ELASTIC_GATEWAY_METRICS_TOKEN`` is read
        when this is not set.
        """,
        config=True,
    )

    @default("metrics_api_token")
    def _default_metrics_api_token(self) -> str:
        return os.environ.get("ELASTIC_GATEWAY_METRICS_TOKEN", "")

    worker_restart_grace = Float(
        30.0,
        min=0,
        help="""
        Seconds a worker the scheduler reports gone without being asked (a Nanny
        restarting it for ``client.restart()`` or a nanny plugin) still counts as
        running, so its job or pod is not stopped while it comes back. A worker
        that is really gone is noticed by its launcher's own check meanwhile.
        """,
        config=True,
    )

    worker_failure_budget = Integer(
        5,
        min=1,
        help="""
        Rounds of lost workers in a row after which a cluster stops replacing them. A
        worker is lost when its process, job or pod ends or disappears, before or after
        it connected, without the analyst or adaptive scaling asking for fewer; workers
        lost together (within one back-off) are one round. When the budget is spent the
        cluster keeps the workers it has, shows one event naming the repeated reason,
        and starts no more until the analyst scales it again. Replaces upstream's
        ``worker_start_failure_limit`` for lost workers, which failed the whole cluster.
        """,
        config=True,
    )

    worker_replace_backoff = Float(
        2.0,
        min=0,
        help="""
        Seconds a cluster waits after losing a worker before it starts workers again;
        doubled for each further round of losses in a row, up to
        ``worker_replace_backoff_max``.
        """,
        config=True,
    )

    worker_replace_backoff_max = Float(
        60.0,
        min=0,
        help="The longest wait before replacing lost workers (see ``worker_replace_backoff``).",
        config=True,
    )

    worker_healthy_after = Float(
        600.0,
        min=0,
        help="""
        Seconds after which a worker counts as healthy: losing a worker that had been
        connected this long (a preempted job, a drained node) does not spend the failure
        budget and clears the count, and so does a loss this long after the last counted
        one. Shorter-lived workers lost in a row are a crash loop and spend it.
        """,
        config=True,
    )

    launcher_retry_delay = Float(
        5.0,
        min=0.1,
        help="Seconds before retrying to start workers in a pool whose service was unreachable.",
        config=True,
    )

    sqlite_synchronous = CaselessStrEnum(
        ["FULL", "NORMAL", "OFF"],
        "NORMAL",
        help="""
        With a SQLite database file (the embedded default): the database runs in
        write-ahead-log mode and this is its ``PRAGMA synchronous``. ``NORMAL``:
        commits do not wait for the disk (a crash of the gateway loses nothing; a
        power loss may lose the last transactions, never the database; the
        gateway reconciles with what runs when it starts again). ``FULL``: every
        commit waits for the disk, on the event loop. PostgreSQL is not affected.
        """,
        config=True,
    )

    log_directory = Unicode(
        help="""
        Directory (made mode 0700; files in it 0600) where the gateway keeps the
        logs of schedulers and workers for their owners, so ``cluster.logs()``
        answers for stopped and failed workers and clusters too. ``elastic-gateway
        serve`` puts it in its state directory; otherwise a new temporary directory.
        Keep it on a disk only admins can read.
        """,
        config=True,
    )

    @default("log_directory")
    def _default_log_directory(self) -> str:
        return tempfile.mkdtemp(prefix="elastic-gateway-logs-")

    log_max_bytes_per_process = Integer(
        256 * 1024,
        min=1024,
        help="""
        Bytes of log kept per scheduler or worker (its newest lines). Logs are
        fetched from each launcher's source (files, the Kubernetes log API, job
        output) when asked for, when a worker fails and before it is removed.
        """,
        config=True,
    )

    log_max_bytes_per_cluster = Integer(
        16 * 1024 * 1024,
        min=1024,
        help="""
        Bytes of log kept per cluster, over its scheduler and all its workers
        (stopped ones too). Beyond it every process keeps an equal share of its
        newest lines.
        """,
        config=True,
    )

    log_keep_for = Float(
        7 * 86400.0,
        min=0,
        help="""
        Seconds a stopped cluster's logs are kept for its owner (and admins) to
        read with ``cluster.logs()`` or ``GET /api/elastic/v1/clusters/<name>/logs``;
        then they are deleted. 0 deletes them when the cluster stops.
        """,
        config=True,
    )
