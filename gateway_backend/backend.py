"""ElasticBackend: dask-gateway's backend hooks mapped onto launchers and worker pools.

Upstream's ``DBBackendBase`` keeps the state machine, the database and the
proxy routes. This class decides *where* things run: the scheduler on the
scheduler launcher, each worker in a pool chosen by the placement policy, with
worker starts, stops and checks batched per launcher. Quotas (``QuotaBook``),
pools (``PoolBook``) and the HTTP additions (``api``) are objects of their own;
launchers see a ``LauncherContext``, never this class.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from dask_gateway_server.backends.db_base import Cluster, DBBackendBase, JobStatus, Worker
from dask_gateway_server.proxy import Proxy
from dask_gateway_server.utils import TaskPool, timestamp
from traitlets import default

from . import api
from .backend_settings import ElasticSettings
from .batching import Batcher
from .bursting import PendingBursts
from .cluster_requests import ClusterRequests, facts_of_vo
from .config import ConfigError
from .events import EventLog
from .hub_servers import watch_hub_servers
from .launchers import (
    Check,
    ClusterFacts,
    KnownRecords,
    Launcher,
    LauncherContext,
    Phase,
)
from .launchers.loading import LauncherSpec, build_launchers, scheduler_spec
from .lifetimes import over_lifetime
from .options import default_cluster_options
from .periodic import run_periodically
from .placement import ordered_spill
from .pools import PoolBook, WorkerPool, parse_pool_specs
from .profile_book import ProfileBook
from .quota_book import QuotaBook
from .record_changes import CountedOnce, RecordChanges
from .replacement import FailureBudget, checked_closures, why_lost
from .restart import reconcile_after_restart, refuse_to_start_empty_over_running
from .restarts import RestartGrace
from .scale_down import PoolOrderScaleDown
from .scheduler_events import SchedulerEvents
from .scheduler_watch import watch_schedulers
from .sqlite_tuning import tune_sqlite
from .tls_keys import TLSKeys
from .tls_keys import install as use_prepared_tls_keys
from .views import GatewayViews
from .worker_fates import WorkerFates
from .worker_logs import LogKeeper
from .worker_starts import WorkerStarts


class ElasticBackend(
    ClusterRequests,
    SchedulerEvents,
    WorkerStarts,
    PendingBursts,
    ElasticSettings,
    DBBackendBase,
):
    """Schedulers and workers on launchers (local, Kubernetes, HTCondor), workers in pools."""

    @default("cluster_options")
    def _default_cluster_options(self):
        return default_cluster_options(self.max_worker_cores, self.max_worker_memory)

    # -- set-up -------------------------------------------------------------------
    def _load_launchers(self) -> None:
        self.logs = LogKeeper.for_backend(self)  # the pools' stops keep logs first
        specs = parse_pool_specs(self.worker_pools)
        pool_specs = {
            name: LauncherSpec(
                spec.launcher, spec.settings, f"ElasticBackend.worker_pools[{name!r}]"
            )
            for name, spec in specs.items()
        }
        self.scheduler_launcher_instance, by_pool = build_launchers(
            scheduler_spec(self.scheduler_launcher), pool_specs, self, self.log
        )
        self.pools = PoolBook(
            (
                WorkerPool(name, by_pool[name], spec.max_workers, spec.vos, spec.burst_after)
                for name, spec in specs.items()
            ),
            self.default_worker_pools,
        )
        # Each instance once, the scheduler launcher first: set up in this order.
        self.launchers: list[Launcher] = list(
            dict.fromkeys([self.scheduler_launcher_instance, *by_pool.values()])
        )
        self._stoppers = {
            p.name: Batcher(self.logs.before_stop(p.launcher.stop_workers), self.stop_batch_window)
            for p in self.pools.pools
        }

    def _admin_set(self, name: str) -> bool:
        """Whether the admin's config sets ``name`` for this backend (or a base class)."""
        return any(name in self.config.get(cls.__name__, {}) for cls in type(self).__mro__)

    def _context_for(self, launcher: Launcher) -> LauncherContext:
        names = [p.name for p in self.pools.pools if p.launcher is launcher]
        if launcher is self.scheduler_launcher_instance:
            names.insert(0, "scheduler")
        return LauncherContext(
            api_url=self.api_url,
            heartbeat_period=self.cluster_heartbeat_period,
            proxy_tls_address=self.proxy.tcp_address,
            known_records=self.known_records,
            add_event=self.events.add,
            scheduler_launcher=self.scheduler_launcher_instance,
            name=", ".join(names),
        )

    def known_records(self) -> KnownRecords:
        """Clusters and workers not stopped yet: what launchers reconcile against."""
        clusters = [c for c in self.db.name_to_cluster.values() if c.status < JobStatus.STOPPED]
        workers = (w for c in clusters for w in c.workers.values())
        return KnownRecords(
            frozenset(c.name for c in clusters),
            frozenset(w.name for w in workers if w.status < JobStatus.STOPPED),
        )

    async def setup(self, app) -> None:
        self._started_launchers: list[Launcher] = []  # released in reverse on shutdown
        self.record_changes = RecordChanges()  # counted from do_setup on
        self._pool_counts = CountedOnce(
            self.record_changes,
            lambda: self.pools.usage(self.db.active_clusters(), self.holds_resources),
        )
        self.quotas = QuotaBook(
            self.vos,
            self.users_without_vo,
            lambda: self.db.active_clusters(),
            version=lambda: self.record_changes.version,
            holds=self.holds_resources,
        )
        # A stopped cluster's events stay readable as long as upstream keeps its record.
        self.events = EventLog(keep_stopped_for=self.db_cluster_max_age)
        # Latest pending/failure reason per worker name, from the launchers' checks.
        self.worker_conditions: dict[str, Check] = {}
        # Clusters with fewer workers than requested (pools full, VO quota), in request order.
        self._waiting: dict[str, None] = {}
        # Workers whose start call is still running: they hold resources even if stopped.
        self._starting: set[str] = set()
        self._restarts = RestartGrace(self.worker_restart_grace)
        self._budget = FailureBudget(
            self.worker_failure_budget,
            self.worker_replace_backoff,
            self.worker_replace_backoff_max,
            self.worker_healthy_after,
        )
        self._scale_down = PoolOrderScaleDown(
            self.scale_down_order, self.retire_timeout, self.events, self.log
        )
        self._loops = TaskPool()
        self.tls_keys = TLSKeys()
        use_prepared_tls_keys()
        # Launchers are set up before upstream's setup starts the reconcilers that call
        # them, but their context needs the proxy's addresses (and ``api_url``, whose
        # default reads ``self.proxy``): the same Proxy config upstream reads, early.
        # Upstream replaces this instance with the one it starts.
        self.proxy = Proxy(parent=self, log=self.log)
        self._load_launchers()
        conditions, active = self.worker_conditions, lambda: self.db.active_clusters()
        self.fates = WorkerFates(active, self.pools.pool_of, self.events, conditions, self.logs)
        self.profile_book = ProfileBook(self.profiles, self.quotas, self.pools)
        if self.profile_book.enabled and self._admin_set("cluster_options"):
            raise ConfigError(
                "ElasticBackend.profiles and cluster_options are both set: with profiles the "
                "cluster options are the profiles' (profile, worker_cores, worker_memory); "
                "remove cluster_options, or the profiles"
            )
        for launcher in self.launchers:
            context = self._context_for(launcher)
            try:
                await launcher.setup(context)
            except ConfigError as exc:
                # Name the pools whose launcher refused: its message names its own key.
                raise ConfigError(f"the {launcher.kind} launcher of {context.name}: {exc}") from exc
            self._started_launchers.append(launcher)
        views = GatewayViews(
            get_cluster=lambda name: self.db.get_cluster(name),
            quotas=self.quotas,
            pools=self.pools,
            pool_usage=self.pool_usage,
            events=self.events,
            conditions=self.worker_conditions,
            metrics_api_token=self.metrics_api_token,
            profiles=self.profile_book,
            note_scheduler_stop=self.note_scheduler_stop,
            scheduler_report=self.scheduler_report,
            clusters_of=lambda user: self.db.list_clusters(username=user),
            logs=self.logs,
            fates=self.fates,
        )
        api.add_routes(app, views)
        await super().setup(app)

    async def do_setup(self) -> None:
        """After a restart: remove what runs without a record, fail records without a process."""
        tune_sqlite(self.db.db, self.sqlite_synchronous)  # upstream just opened it
        # No record at all: a first start, or records lost.
        if not self.db.name_to_cluster:
            await refuse_to_start_empty_over_running(
                self.launchers, self.known_records(), self.db_url
            )
        self.record_changes.watch(self.db)
        run_periodically(self._loops, self.logs.prune, 60, self.log, "Deleting old logs")
        period, why = self.worker_status_period, "Checking running workers"
        run_periodically(self._loops, self.fates.check_running, period, self.log, why)
        watch_schedulers(self)
        watch_hub_servers(self)
        bursts = [p.burst_after for p in self.pools.pools if p.burst_after]
        if bursts:
            period = max(0.2, min(min(bursts) / 4, self.worker_status_period))
            run_periodically(
                self._loops, self.burst_pending_workers, period, self.log, "Moving pending workers"
            )
        await reconcile_after_restart(
            db=self.db,
            queue=self.queue,
            log=self.log,
            launchers=self.launchers,
            scheduler_launcher=self.scheduler_launcher_instance,
            pools=self.pools,
            known=self.known_records(),
            events=self.events,
            fail_cluster=self._fail_cluster,
        )

    async def cleanup(self) -> None:
        if not hasattr(self, "session"):
            # Setup stopped before the base classes ran (bad config): the startup
            # error is the whole story, release only the launchers that started.
            await self.do_cleanup()
            return
        await super().cleanup()

    async def do_cleanup(self) -> None:
        if hasattr(self, "_loops"):
            await self._loops.close()
        for launcher in reversed(getattr(self, "_started_launchers", [])):
            await launcher.cleanup()

    async def start_cluster(self, user, cluster_options):
        # The new record's RSA key is made in a thread, not on the event loop (tls_keys).
        await self.tls_keys.prepare()
        return await super().start_cluster(user, cluster_options)

    def facts_of(self, cluster: Cluster) -> ClusterFacts:
        return facts_of_vo(self.quotas.vo_of(cluster))

    # -- pools and placement ------------------------------------------------------------
    def _pool_name_of(self, worker: Worker) -> str:
        return self.pools.pool_of(worker).name

    def _launcher_of(self, worker: Worker) -> Launcher:
        return self.pools.pool_of(worker).launcher

    def pool_usage(self) -> dict[str, int]:
        """Workers per pool over all clusters, stopping ones until they are gone (a copy
        of the count made once per change of the records)."""
        return dict(self._pool_counts())

    def _fail_cluster(self, cluster: Cluster, reason: str) -> None:
        self.log.warning("Cluster %s failed: %s", cluster.name, reason)
        self.events.add(cluster.name, f"cluster failed: {reason}", "error")
        self.db.update_cluster(
            cluster, target=JobStatus.FAILED, state={**cluster.state, "failure_reason": reason}
        )
        self.queue.put(cluster)

    async def _check_timeouts(self) -> None:
        await super()._check_timeouts()
        for cluster, reason in list(over_lifetime(self.db.active_clusters(), timestamp())):
            self._note_stop_reason(cluster, reason)
            await self.stop_cluster(cluster.name)

    async def _check_cluster_scale(self, cluster: Cluster) -> None:
        missing = cluster.count - len(cluster.active_workers())
        if missing <= 0:
            self._waiting.pop(cluster.name, None)
            return
        if wait := self._budget.wait(cluster.name):  # backing off after lost workers
            if wait < math.inf:
                self.queue.put_after(cluster, wait)
            return
        wanted = missing
        missing, why = self.quotas.grantable(cluster, missing)
        if why:
            self._note_waiting(cluster, why)
        plan = ordered_spill(self.pools.pools_for(cluster.options), self.pool_usage(), missing)
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
                if self._budget.renew(record.name):
                    self.events.add(record.name, "scaled again: replacing lost workers again")
                pools = [p.name for p in self.pools.pools_for(record.options)]
                pool_of = self._pool_name_of
                await self._scale_down.scale_down(self.db, record, msg["count"], pools, pool_of)
        await super().forward_message_to_scheduler(cluster, msg)

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict) -> None:
        count = self._scale_down.heartbeat_count(cluster_name, msg["count"])
        record = self.db.get_cluster(cluster_name)
        expected = [w.name for w in record.workers.values() if w.close_expected] if record else []
        if record is not None:
            closed = msg["closed_workers"]
            checks = await checked_closures(record, closed, self._launcher_of, self.log)
            self.worker_conditions.update(checks)
            expected += [name for name, check in checks.items() if not check.alive]
        msg = self._restarts.hold(cluster_name, {**msg, "count": count}, expected)
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

    def _record_worker_failure(self, cluster: Cluster, reason: str) -> None:
        """Remember why a worker failed (its loss counts when it stops: ``FailureBudget``)."""
        self.events.add(cluster.name, reason, "error")
        self.db.update_cluster(cluster, state={**cluster.state, "last_worker_failure": reason})

    async def _worker_to_stopped(self, worker: Worker) -> None:
        cluster = worker.cluster
        if worker.target == JobStatus.FAILED and cluster.target == JobStatus.RUNNING:
            check = self.worker_conditions.get(worker.name)
            if check is not None and check.phase == Phase.FAILED:  # a heartbeat's check found it
                pool = self._pool_name_of(worker)
                self.fates.record(cluster.name, worker.name, pool, check.reason)
            why = why_lost(worker, check, cluster.state.get("last_worker_failure", ""))
            loss = self._budget.lost(cluster.name, **why)
            if loss.message:
                self.events.add(cluster.name, loss.message, loss.level)
        await super()._worker_to_stopped(worker)
        self.worker_conditions.pop(worker.name, None)
        self._wake_waiting()

    async def _cluster_to_stopped(self, cluster: Cluster) -> None:
        if cluster.target == JobStatus.FAILED and cluster.status > JobStatus.CREATED:
            await self._record_why_the_scheduler_stopped(cluster)
        await super()._cluster_to_stopped(cluster)
        self.events.stopped(cluster.name)
        self.logs.stopped(cluster.name)
        self._restarts.forget(cluster.name)
        self._budget.forget(cluster.name)
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
        # One call per launcher instance, not per pool: pools may share their launcher.
        by_launcher: dict[Launcher, list[Worker]] = {p.launcher: [] for p in self.pools.pools}
        for w in cluster.workers.values():
            if JobStatus.CREATED < w.status < JobStatus.STOPPED:
                by_launcher[self.pools.pool_of(w).launcher].append(w)
        await self.logs.collect(
            cluster, [w for ws in by_launcher.values() for w in ws], scheduler=True
        )
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

    async def _record_why_the_scheduler_stopped(self, cluster: Cluster) -> None:
        """Upstream fails a cluster (missed heartbeats, a failed start check) without a word:
        if no reason was kept yet, ask the launcher how its scheduler ended, for the owner."""
        if cluster.state.get("failure_reason"):
            return
        try:
            [check] = await self.scheduler_launcher_instance.check_schedulers([cluster])
        except Exception:
            self.log.debug("Cluster %s: no scheduler check for the reason", cluster.name)
            return
        if not check.alive and check.reason:
            reason = f"the scheduler stopped: {check.reason}"
            if "last log lines" not in reason and (tail := await self.logs.scheduler_tail(cluster)):
                reason += f"; last log lines: {tail}"
            self.events.add(cluster.name, reason, "error")
            self.db.update_cluster(cluster, state={**cluster.state, "failure_reason": reason})

    async def do_check_clusters(self, clusters: Sequence[Cluster]) -> list[bool]:
        checks = await self.scheduler_launcher_instance.check_schedulers(clusters)
        return [check.alive for check in checks]

    async def do_start_worker(self, worker: Worker):
        # Only reached for workers created before a restart and never submitted.
        pool = self.pools.pool_of(worker)
        facts = self.facts_of(worker.cluster)
        [state] = await pool.launcher.start_workers(worker.cluster, [worker], facts)
        yield {"pool": pool.name, **state}

    async def do_stop_worker(self, worker: Worker) -> None:
        await self._stoppers[self.pools.pool_of(worker).name].add(worker)

    async def do_check_workers(self, workers: Sequence[Worker]) -> list[bool]:
        by_pool: dict[str, list[Worker]] = defaultdict(list)
        for w in workers:
            by_pool[self.pools.pool_of(w).name].append(w)
        result: dict[str, bool] = {}
        for name, pool_workers in by_pool.items():
            checks = await self.pools.by_name[name].launcher.check_workers(pool_workers)
            for w, check in zip(pool_workers, checks, strict=True):
                result[w.name] = check.alive
                self.worker_conditions[w.name] = check
                if check.phase == Phase.FAILED:
                    self.fates.record(w.cluster.name, w.name, name, check.reason)
                    # upstream's check loop fails it; here we only keep the reason
                    self._record_worker_failure(
                        w.cluster, f"worker {w.name} in pool {name} failed: {check.reason}"
                    )
        return [result[w.name] for w in workers]
