"""ElasticBackend: dask-gateway's backend hooks mapped onto launchers and worker pools.

Upstream's ``DBBackendBase`` keeps the state machine, the database and the
proxy routes. This class decides *where* things run: the scheduler on the
scheduler launcher, each worker in a pool chosen by the placement policy, with
worker starts, stops and checks batched per launcher.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence

from dask_gateway_server.backends.base import ClusterConfig, PublicException
from dask_gateway_server.backends.db_base import (
    Cluster,
    DBBackendBase,
    JobStatus,
    Worker,
)
from dask_gateway_server.backends.db_base import workers as workers_table
from dask_gateway_server.options import Options, String
from dask_gateway_server.traitlets import Type
from dask_gateway_server.utils import FrozenAttrDict, timestamp
from traitlets import Dict, Float, Integer, List, TraitError, Unicode, default, validate
from traitlets.utils.importstring import import_item

from . import api
from .batching import Batcher
from .events import EventLog
from .launchers import LAUNCHER_CLASSES, Launcher, LauncherUnavailable, WorkerCheck, WorkerPhase
from .options import default_cluster_options, explain_invalid_options
from .placement import ordered_spill
from .pools import ConfigError, WorkerPool, parse_pool_specs
from .quotas import (
    VO,
    QuotaRefused,
    Usage,
    check_new_cluster,
    choose_vo,
    describe_limit,
    holds_resources,
    parse_vos,
    vo_usage,
    workers_grantable,
)
from .scale_down import choose_running_to_retire, retire_on_scheduler
from .usertext import one_line, quoted


class ElasticBackend(DBBackendBase):
    """Schedulers and workers on launchers (local, Kubernetes, HTCondor), workers in pools."""

    cluster_config_class = Type(
        "gateway_backend.cluster_config.ElasticClusterConfig",
        klass=ClusterConfig,
        help="The cluster config class to use.",
        config=True,
    )

    scheduler_launcher = Unicode(
        "local",
        help="""
        Where schedulers run: a launcher name (``local``, ``kubernetes``) or the
        import path of a ``gateway_backend.launchers.Launcher`` subclass.
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
        - ``vos``: VOs allowed to use the pool (default: everyone).

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

    @validate("worker_pools", "vos")
    def _validate_structured(self, proposal):
        parse = {"worker_pools": parse_pool_specs, "vos": parse_vos}[proposal.trait.name]
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

    @default("cluster_options")
    def _default_cluster_options(self):
        return default_cluster_options(self.max_worker_cores, self.max_worker_memory)

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

    launcher_retry_delay = Float(
        5.0,
        min=0.1,
        help="Seconds before retrying to start workers in a pool whose service was unreachable.",
        config=True,
    )

    # -- set-up -------------------------------------------------------------------
    def _load_launchers(self) -> None:
        specs = parse_pool_specs(self.worker_pools)
        kinds = {self.scheduler_launcher} | {spec.launcher for spec in specs.values()}
        self.launchers: dict[str, Launcher] = {}
        for kind in sorted(kinds):
            path = LAUNCHER_CLASSES.get(kind, kind)
            try:
                cls = import_item(path)
            except Exception as exc:
                raise ConfigError(
                    f"launcher {kind!r} (used in ElasticBackend.worker_pools or "
                    f"ElasticBackend.scheduler_launcher) cannot be loaded: {exc}"
                ) from exc
            if not (isinstance(cls, type) and issubclass(cls, Launcher)):
                raise ConfigError(f"launcher {kind!r} ({path}) is not a Launcher subclass")
            self.launchers[kind] = cls(parent=self, log=self.log)
        self.pools = [
            WorkerPool(
                name, self.launchers[spec.launcher], spec.max_workers, spec.vos, spec.burst_after
            )
            for name, spec in specs.items()
        ]
        self.pools_by_name = {p.name: p for p in self.pools}
        self.scheduler_launcher_instance = self.launchers[self.scheduler_launcher]
        for vo, names in self.default_worker_pools.items():
            unknown = [n for n in names if n not in self.pools_by_name]
            if isinstance(names, str) or unknown:
                raise ConfigError(
                    f"ElasticBackend.default_worker_pools[{vo!r}] must list pool names from "
                    f"ElasticBackend.worker_pools ({', '.join(self.pools_by_name)}); "
                    f"unknown: {unknown or names!r}"
                )
        self._stoppers = {
            p.name: Batcher(p.launcher.stop_workers, self.stop_batch_window) for p in self.pools
        }

    def _load_vos(self) -> None:
        self.vo_table: dict[str, VO] = parse_vos(self.vos)
        if (
            self.vo_table
            and self.users_without_vo != "refuse"
            and self.users_without_vo not in self.vo_table
        ):
            raise ConfigError(
                f"ElasticBackend.users_without_vo = {self.users_without_vo!r} names no VO in "
                f"ElasticBackend.vos; use 'refuse' or one of {sorted(self.vo_table)}"
            )

    async def setup(self, app) -> None:
        self._started_launchers: list[Launcher] = []  # released in reverse on shutdown
        self._load_vos()
        # A stopped cluster's events stay readable as long as upstream keeps its record.
        self.events = EventLog(keep_stopped_for=self.db_cluster_max_age)
        # Latest pending/failure reason per worker name, from the launchers' checks.
        self.worker_conditions: dict[str, WorkerCheck] = {}
        # Clusters with fewer workers than requested (pools full, VO quota), in request order.
        self._waiting: dict[str, None] = {}
        # Scale-downs in progress: cluster name -> (count, deadline), see scale_down_by_pool.
        self._scale_targets: dict[str, tuple[int, float]] = {}
        self.quota_refusals: dict[tuple[str, str], int] = defaultdict(int)
        self._load_launchers()
        for launcher in self.launchers.values():
            await launcher.setup(self)
            self._started_launchers.append(launcher)
        api.add_routes(app, self)
        await super().setup(app)

    async def do_setup(self) -> None:
        """After a restart: remove what runs without a record, fail records without a process."""
        if any(p.burst_after for p in self.pools):
            self.task_pool.spawn(self._burst_loop())
        active = list(self.db.active_clusters())
        known_clusters = {c.name for c in active}
        known_workers = {w.name for c in active for w in c.workers.values() if w.is_active()}
        for launcher in self.launchers.values():
            removed = await launcher.remove_unknown(known_clusters, known_workers)
            if removed:
                self.log.warning("Removed %d %s resources with no record", removed, launcher.kind)

        started = [c for c in active if c.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)]
        if started:
            alive = await self.scheduler_launcher_instance.check_schedulers(started)
            for cluster, ok in zip(started, alive, strict=True):
                if not ok:
                    self._fail_cluster(cluster, "the scheduler was gone when the gateway restarted")

        for pool in self.pools:
            workers = [
                w
                for c in active
                if c.target == JobStatus.RUNNING
                for w in c.workers.values()
                if w.is_active()
                and w.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)
                and self.pool_of(w) is pool
            ]
            if not workers:
                continue
            checks = await pool.launcher.check_workers(workers)
            gone = [
                (w, {"target": JobStatus.FAILED})
                for w, c in zip(workers, checks, strict=True)
                if not c.alive
            ]
            self.db.update_workers(gone)
            for w, _ in gone:
                self.events.add(w.cluster.name, f"worker {w.name} was gone after a gateway restart")
                self.queue.put(w)

    async def cleanup(self) -> None:
        if not hasattr(self, "session"):
            # Setup stopped before the base classes ran (bad config): the startup
            # error is the whole story, release only the launchers that started.
            await self.do_cleanup()
            return
        await super().cleanup()

    async def do_cleanup(self) -> None:
        for launcher in reversed(getattr(self, "_started_launchers", [])):
            await launcher.cleanup()

    # -- cluster options and quotas ----------------------------------------------------
    async def get_cluster_options(self, user):
        """The admin's options, plus ``vo`` and ``worker_pools`` choices where they apply."""
        options = await super().get_cluster_options(user)
        have = {f.field for f in options.fields}
        extra = []
        if self.vo_table and "vo" not in have:
            extra.append(String("vo", default="", label="VO (empty: your only VO)"))
        if len(self.pools) > 1 and "worker_pools" not in have:
            extra.append(
                String(
                    "worker_pools",
                    default="",
                    label="Worker pools, comma-separated, in order (empty: the default)",
                )
            )
        if not extra:
            return options
        handler = options.handler
        ours = {f.field for f in extra}

        def without_ours(opts, user):
            opts = FrozenAttrDict({k: v for k, v in opts.items() if k not in ours})
            return dict(opts) if handler is None else handler(opts, user)

        return Options(*options.fields, *extra, handler=without_ours)

    async def process_cluster_options(self, user, request):
        options = await self.get_cluster_options(user)
        problem = explain_invalid_options(options, request or {})
        if problem:
            raise PublicException(one_line(problem))
        options, config = await super().process_cluster_options(user, request or {})
        if "worker_pools" in options:
            # Each pool once: a name repeated would count its cap once per repetition.
            options = {**options, "worker_pools": ",".join(self._requested_pools(options))}
        if self.vo_table:
            try:
                vo = choose_vo(
                    user.name,
                    user.groups,
                    options.get("vo", ""),
                    self.vo_table,
                    self.users_without_vo,
                )
            except QuotaRefused as exc:
                self.count_refusal(options.get("vo") or "", "membership")
                raise PublicException(one_line(str(exc))) from None
            options = {**options, "vo": vo.name}
            self._check_requested_pools(options, vo.name)
            if vo.max_workers_per_cluster is not None:
                current = config.cluster_max_workers
                limit = vo.max_workers_per_cluster
                config.cluster_max_workers = limit if current is None else min(current, limit)
        else:
            self._check_requested_pools(options, None)
        # Launchers refuse now, as a 4xx, what they could not submit later (an
        # HTCondor accounting user name, say).
        pools = self.pools_for(FrozenAttrDict({"options": options}))
        launchers = [self.scheduler_launcher_instance, *(pool.launcher for pool in pools)]
        for launcher in dict.fromkeys(launchers):
            try:
                launcher.check_cluster_request(user.name, options, config)
            except ValueError as exc:
                raise PublicException(one_line(str(exc))) from None
        return options, config

    def _requested_pools(self, options) -> list[str]:
        """The owner's pool names in order, each once."""
        raw = options.get("worker_pools") or ""
        names = (name.strip() for name in raw.split(","))
        return list(dict.fromkeys(name for name in names if name))

    def _check_requested_pools(self, options, vo: str | None) -> None:
        allowed = [p.name for p in self.pools if p.allows(vo)]
        bad = [n for n in self._requested_pools(options) if n not in allowed]
        if bad:
            shown = ", ".join(quoted(n) for n in bad[:5])
            raise PublicException(
                f"worker_pools: {shown} is not a pool you may use; "
                f"choose from: {', '.join(allowed) or 'none'}"
            )

    def count_refusal(self, vo: str, kind: str) -> None:
        """Count a quota refusal for the metrics, labelled only with configured VO names."""
        label = vo if vo in self.vo_table or vo == "" else "(unknown)"
        self.quota_refusals[(label, kind)] += 1

    def vo_of(self, cluster: Cluster) -> VO | None:
        return self.vo_table.get(cluster.options.get("vo") or "")

    def usage_of(self, vo: VO) -> Usage:
        return vo_usage(c for c in self.db.active_clusters() if c.options.get("vo") == vo.name).get(
            vo.name, Usage()
        )

    async def start_cluster(self, user, cluster_options):
        options, config = await self.process_cluster_options(user, cluster_options)
        config_dict = config.to_dict()
        vo = self.vo_table.get(options.get("vo") or "")
        # No await between the check and the record: concurrent requests cannot both pass.
        if vo is not None:
            try:
                check_new_cluster(vo, self.usage_of(vo), user.name, FrozenAttrDict(config_dict))
            except QuotaRefused as exc:
                self.count_refusal(vo.name, "cluster")
                raise PublicException(one_line(str(exc))) from None
        cluster = self.db.create_cluster(user.name, options, config_dict)
        self.log.info(
            "Created cluster %s for user %s (VO %s)", cluster.name, user.name, options.get("vo")
        )
        self.queue.put(cluster)
        return cluster.name

    def quota_message(self, cluster: Cluster, wanted: int) -> str | None:
        """What the VO grants of ``wanted`` workers now, for the scale/adapt response."""
        vo = self.vo_of(cluster)
        if vo is None:
            return None
        parts = []
        target = wanted
        if vo.max_workers_per_cluster is not None and wanted > vo.max_workers_per_cluster:
            target = vo.max_workers_per_cluster
            parts.append(
                f"VO {vo.name}: max_workers_per_cluster={target}, so {wanted} requested "
                f"becomes {target}."
            )
        usage = self.usage_of(vo)
        room, binding = workers_grantable(vo, usage, cluster.config)
        active = len(cluster.active_workers())
        if room is not None and active + room < target:
            granted = active + room
            parts.append(
                f"VO {vo.name}: {describe_limit(vo, binding, usage)}; granted {granted} of "
                f"{target} workers now, the other {target - granted} start by themselves "
                "when the VO's usage drops."
            )
            self.count_refusal(vo.name, "workers")
        return " ".join(parts) or None

    # -- pools and placement ------------------------------------------------------------
    def pool_of(self, worker: Worker) -> WorkerPool:
        """The pool a worker was placed in (records from before pools existed: the first)."""
        return self.pools_by_name.get(worker.state.get("pool"), self.pools[0])

    def pools_for(self, cluster: Cluster) -> list[WorkerPool]:
        """Pools this cluster places workers in, in order: the owner's choice, else the default."""
        vo = cluster.options.get("vo")
        allowed = {p.name: p for p in self.pools if p.allows(vo)}
        names = self._requested_pools(cluster.options)
        if not names:
            defaults = self.default_worker_pools
            names = defaults.get(vo or "", defaults.get("*", list(allowed)))
        return [allowed[n] for n in dict.fromkeys(names) if n in allowed]

    def pool_usage(self) -> dict[str, int]:
        """Workers per pool over all clusters, stopping ones until they are gone."""
        usage: dict[str, int] = defaultdict(int)
        for cluster in self.db.active_clusters():
            for w in cluster.workers.values():
                if holds_resources(w):
                    usage[self.pool_of(w).name] += 1
        return usage

    def _fail_cluster(self, cluster: Cluster, reason: str) -> None:
        self.log.warning("Cluster %s failed: %s", cluster.name, reason)
        self.events.add(cluster.name, f"cluster failed: {reason}", "error")
        self.db.update_cluster(
            cluster, target=JobStatus.FAILED, state={**cluster.state, "failure_reason": reason}
        )
        self.queue.put(cluster)

    async def _check_cluster_scale(self, cluster: Cluster) -> None:
        if cluster.worker_start_failure_count >= self.worker_start_failure_limit:
            last = cluster.state.get("last_worker_failure", "unknown")
            self._fail_cluster(
                cluster,
                f"{cluster.worker_start_failure_count} workers in a row failed to start "
                f"(limit ElasticBackend.worker_start_failure_limit="
                f"{self.worker_start_failure_limit}); last failure: {last}",
            )
            return
        missing = cluster.count - len(cluster.active_workers())
        if missing <= 0:
            self._waiting.pop(cluster.name, None)
            return
        wanted = missing
        vo = self.vo_of(cluster)
        if vo is not None:
            usage = self.usage_of(vo)
            room, binding = workers_grantable(vo, usage, cluster.config)
            if room is not None and room < missing:
                missing = room
                self._note_waiting(
                    cluster,
                    f"{wanted - room} worker(s) wait for VO {vo.name} quota "
                    f"({describe_limit(vo, binding, usage)})",
                )
        plan = ordered_spill(self.pools_for(cluster), self.pool_usage(), missing)
        placed = sum(k for _, k in plan)
        if placed < missing:
            self._note_waiting(
                cluster,
                f"{missing - placed} worker(s) wait for room: every pool this cluster may use "
                "is at its max_workers",
            )
        elif placed == wanted:
            self._waiting.pop(cluster.name, None)
        for pool, k in plan:
            await self._start_batch(cluster, pool, k)

    async def forward_message_to_scheduler(self, cluster, msg: dict) -> None:
        # Upstream's scale route calls this after authentication, the permission
        # check and validation of ``count``: the place to act on a user's scale-down.
        if msg.get("op") == "scale":
            record = self.db.get_cluster(cluster.name)
            if record is not None and record.status == JobStatus.RUNNING:
                await self.scale_down_by_pool(record, msg["count"])
        await super().forward_message_to_scheduler(cluster, msg)

    async def scale_down_by_pool(self, cluster: Cluster, count: int) -> None:
        """Before a user's ``scale(count)`` reaches the scheduler, retire running workers in
        pool order so the scheduler finds nothing left to choose."""
        self._scale_targets.pop(cluster.name, None)
        running = [w for w in cluster.active_workers() if w.status == JobStatus.RUNNING]
        # Pending workers go first (upstream's rule): only running ones beyond ``count`` leave.
        k = len(running) - count
        if k <= 0 or not cluster.scheduler_address:
            return
        order = list(self.scale_down_order)
        order += [p.name for p in reversed(self.pools_for(cluster)) if p.name not in order]
        chosen = choose_running_to_retire(running, lambda w: self.pool_of(w).name, order, k)
        self.db.update_workers([(w, {"close_expected": True}) for w in chosen])
        loop = asyncio.get_running_loop()
        self._scale_targets[cluster.name] = (count, loop.time() + self.retire_timeout + 30)
        try:
            await retire_on_scheduler(cluster, [w.name for w in chosen], self.retire_timeout)
        except Exception as exc:
            self.log.warning(
                "Cluster %s: retiring %d workers by pool order failed (%s); the scheduler "
                "chooses instead",
                cluster.name,
                len(chosen),
                exc,
            )
            self._scale_targets.pop(cluster.name, None)
        else:
            pools = sorted({self.pool_of(w).name for w in chosen})
            self.events.add(
                cluster.name, f"scale-down retired {len(chosen)} worker(s) from {', '.join(pools)}"
            )

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict) -> None:
        target = self._scale_targets.get(cluster_name)
        if target is not None:
            count, deadline = target
            if msg["count"] == count or asyncio.get_running_loop().time() > deadline:
                self._scale_targets.pop(cluster_name, None)
            elif msg["count"] > count:
                # The scheduler retired workers for a scale-down it has not been told of yet:
                # do not replace them.
                msg = {**msg, "count": count}
        await super().on_cluster_heartbeat(cluster_name, msg)

    def _note_waiting(self, cluster: Cluster, why: str) -> None:
        if cluster.name not in self._waiting:
            self._waiting[cluster.name] = None
            self.events.add(cluster.name, why)

    def _wake_waiting(self) -> None:
        """Resources freed: let clusters below their requested size grow, in request order."""
        for name in list(self._waiting):
            cluster = self.db.get_cluster(name)
            if cluster is not None and cluster.target == JobStatus.RUNNING:
                self.queue.put(cluster)
            else:
                self._waiting.pop(name, None)

    async def _burst_loop(self) -> None:
        period = min(p.burst_after for p in self.pools if p.burst_after) / 4
        while True:
            await asyncio.sleep(max(0.2, min(period, self.worker_status_period)))
            try:
                await self.burst_pending_workers()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.warning("Moving pending workers to other pools failed", exc_info=True)

    async def burst_pending_workers(self) -> None:
        """Move workers pending longer than their pool's ``burst_after`` to the next pool.

        The pending worker is withdrawn and a new one started in the first later
        pool (of the cluster's pools) with room, in the same step, so the cluster's
        size and VO usage do not change.
        """
        now = timestamp()
        for cluster in list(self.db.active_clusters()):
            if cluster.status != JobStatus.RUNNING or cluster.target != JobStatus.RUNNING:
                continue
            pools = self.pools_for(cluster)
            moves: dict[str, list[Worker]] = defaultdict(list)
            usage = self.pool_usage()
            for w in list(cluster.workers.values()):
                pool = self.pool_of(w)
                if (
                    w.status != JobStatus.SUBMITTED
                    or w.target != JobStatus.RUNNING
                    or not pool.burst_after
                    or now - w.start_time < pool.burst_after * 1000
                    or pool not in pools
                ):
                    continue
                later = pools[pools.index(pool) + 1 :]
                plan = ordered_spill(later, usage, 1)
                if not plan:
                    continue  # nowhere to go: it stays pending where it is
                target = plan[0][0]
                usage[target.name] = usage.get(target.name, 0) + 1
                moves[target.name].append(w)
            for target_name, stuck in moves.items():
                self.db.update_workers(
                    [(w, {"target": JobStatus.STOPPED, "close_expected": True}) for w in stuck]
                )
                for w in stuck:
                    self.queue.put(w)
                    condition = self.worker_conditions.get(w.name)
                    why = f" ({condition.reason})" if condition and condition.reason else ""
                    self.events.add(
                        cluster.name,
                        f"worker {w.name} pending in pool {self.pool_of(w).name} for more than "
                        f"{self.pool_of(w).burst_after:g}s{why}: moved to pool {target_name}",
                    )
                await self._start_batch(cluster, self.pools_by_name[target_name], len(stuck))

    def _create_workers(self, cluster: Cluster, pool: WorkerPool, n: int) -> list[Worker]:
        """Create ``n`` worker records in one transaction, already placed in ``pool``."""
        now = timestamp()
        created = []
        with self.db.db.begin() as conn:
            for _ in range(n):
                fields = {
                    "name": uuid.uuid4().hex,
                    "status": JobStatus.CREATED,
                    "target": JobStatus.RUNNING,
                    "state": {"pool": pool.name},
                    "start_time": now,
                    "close_expected": False,
                }
                res = conn.execute(workers_table.insert().values(cluster_id=cluster.id, **fields))
                worker = Worker(id=res.inserted_primary_key[0], cluster=cluster, **fields)
                cluster.workers[worker.name] = worker
                created.append(worker)
        return created

    async def _start_batch(self, cluster: Cluster, pool: WorkerPool, n: int) -> None:
        workers = self._create_workers(cluster, pool, n)
        self.log.info("Starting %d workers for cluster %s in pool %s", n, cluster.name, pool.name)
        try:
            async with asyncio.timeout(self.worker_start_timeout):
                states = await pool.launcher.start_workers(cluster, workers)
        except asyncio.CancelledError:
            raise
        except LauncherUnavailable as exc:
            # The pool's service is down, not the workers' fault: retry, do not count.
            self.events.add(
                cluster.name,
                f"pool {pool.name} is unavailable ({exc}); retrying in "
                f"{self.launcher_retry_delay:g}s",
                "warning",
            )
            stopped = {
                "status": JobStatus.SUBMITTED,
                "target": JobStatus.STOPPED,
                "close_expected": True,
            }
            self.db.update_workers([(w, dict(stopped)) for w in workers])
            for w in workers:
                self.queue.put(w)
            asyncio.get_running_loop().call_later(
                self.launcher_retry_delay, self.queue.put, cluster
            )
            return
        except Exception as exc:
            reason = f"pool {pool.name} could not start {n} worker(s): {exc}"
            self.log.warning("Cluster %s: %s", cluster.name, reason, exc_info=exc)
            self._record_worker_failure(cluster, reason)
            self.db.update_workers(
                [(w, {"status": JobStatus.SUBMITTED, "target": JobStatus.FAILED}) for w in workers]
            )
            for w in workers:
                self.queue.put(w)
            return
        updates, stopped_meanwhile = [], []
        for worker, state in zip(workers, states, strict=True):
            state = {"pool": pool.name, **state}
            if worker.status >= JobStatus.STOPPED:
                # Scaled down while we were submitting: record, then stop it below.
                stopped_meanwhile.append(worker)
                updates.append((worker, {"state": state}))
            else:
                updates.append((worker, {"state": state, "status": JobStatus.SUBMITTED}))
        self.db.update_workers(updates)
        if stopped_meanwhile:
            await pool.launcher.stop_workers(stopped_meanwhile)

    def _record_worker_failure(self, cluster: Cluster, reason: str, count: bool = True) -> None:
        """Remember why a worker failed; ``count`` it towards the cluster's failure limit."""
        if count:
            cluster.worker_start_failure_count += 1
        self.events.add(cluster.name, reason, "error")
        self.db.update_cluster(cluster, state={**cluster.state, "last_worker_failure": reason})

    async def _worker_to_stopped(self, worker: Worker) -> None:
        await super()._worker_to_stopped(worker)
        self.worker_conditions.pop(worker.name, None)
        self._wake_waiting()

    async def _cluster_to_stopped(self, cluster: Cluster) -> None:
        await super()._cluster_to_stopped(cluster)
        self.events.stopped(cluster.name)
        self._waiting.pop(cluster.name, None)
        self._wake_waiting()

    # -- DBBackendBase hooks ---------------------------------------------------------------
    async def do_start_cluster(self, cluster: Cluster):
        try:
            async for state in self.scheduler_launcher_instance.start_scheduler(cluster):
                yield state
        except Exception as exc:
            # Upstream only logs this; keep the reason where the user can see it.
            reason = f"the scheduler could not be started: {exc}"
            self.events.add(cluster.name, reason, "error")
            self.db.update_cluster(cluster, state={**cluster.state, "failure_reason": reason})
            raise

    async def do_stop_cluster(self, cluster: Cluster) -> None:
        # One call per launcher, not per pool: pools of one kind share their launcher.
        by_launcher: dict[Launcher, list[Worker]] = {p.launcher: [] for p in self.pools}
        for w in cluster.workers.values():
            if JobStatus.CREATED < w.status < JobStatus.STOPPED:
                by_launcher[self.pool_of(w).launcher].append(w)
        for launcher, workers in by_launcher.items():
            try:
                await launcher.stop_cluster_workers(cluster, workers)
            except Exception:
                self.log.warning(
                    "Stopping the %s workers of cluster %s failed",
                    launcher.kind,
                    cluster.name,
                    exc_info=True,
                )
        await self.scheduler_launcher_instance.stop_scheduler(cluster)
        for w in cluster.workers.values():
            self.worker_conditions.pop(w.name, None)

    async def do_check_clusters(self, clusters: Sequence[Cluster]) -> list[bool]:
        return await self.scheduler_launcher_instance.check_schedulers(clusters)

    async def do_start_worker(self, worker: Worker):
        # Only reached for workers created before a restart and never submitted.
        pool = self.pool_of(worker)
        [state] = await pool.launcher.start_workers(worker.cluster, [worker])
        yield {"pool": pool.name, **state}

    async def do_stop_worker(self, worker: Worker) -> None:
        await self._stoppers[self.pool_of(worker).name].add(worker)

    async def do_check_workers(self, workers: Sequence[Worker]) -> list[bool]:
        by_pool: dict[str, list[Worker]] = defaultdict(list)
        for w in workers:
            by_pool[self.pool_of(w).name].append(w)
        result: dict[str, bool] = {}
        for name, pool_workers in by_pool.items():
            checks = await self.pools_by_name[name].launcher.check_workers(pool_workers)
            for w, check in zip(pool_workers, checks, strict=True):
                result[w.name] = check.alive
                self.worker_conditions[w.name] = check
                if check.phase == WorkerPhase.FAILED:
                    # upstream's check loop counts the failure; here we only keep the reason
                    self._record_worker_failure(
                        w.cluster,
                        f"worker {w.name} in pool {name} failed: {check.reason}",
                        count=False,
                    )
        return [result[w.name] for w in workers]
