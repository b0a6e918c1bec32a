"""Cluster requests: the options a user sees, and a request checked before a record exists.

Everything refusable is refused here, as a 4xx that says what to change: options
outside the user's profiles, VOs, pools and quotas, and what a launcher could
not run. A mixin of ``ElasticBackend`` (upstream's hooks are backend methods).
"""

from __future__ import annotations

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.utils import FrozenAttrDict

from .hub_servers import TIE_KEY, server_text
from .launchers import ClusterFacts
from .options import explain_invalid_options, with_gateway_choices
from .pools import requested_pools
from .quotas import VO, QuotaRefused
from .usertext import one_line


def facts_of_vo(vo: VO | None) -> ClusterFacts:
    """What launchers learn of a cluster's VO (nothing when quotas are off)."""
    return ClusterFacts(vo.name, vo.accounting_group) if vo else ClusterFacts()


class ClusterRequests:
    """``get_cluster_options``, ``process_cluster_options`` and ``start_cluster``.

    Reads the backend's ``profile_book``, ``quotas``, ``pools``, ``db`` and the
    launchers; it is never used on its own.
    """

    async def get_cluster_options(self, user):
        """The user's profiles (when configured), else the admin's options, plus ``vo``
        and ``worker_pools`` choices where they apply."""
        if self.profile_book.enabled:
            return self.profile_book.cluster_options(user)
        options = await super().get_cluster_options(user)
        return with_gateway_choices(options, vo=self.quotas.enabled, pools=len(self.pools) > 1)

    async def process_cluster_options(self, user, request):
        request = request or {}
        if self.profile_book.enabled and isinstance(request, dict):
            try:
                request = self.profile_book.complete_request(user, request)
            except ValueError as exc:
                raise PublicException(one_line(str(exc))) from None
        options = await self.get_cluster_options(user)
        problem = explain_invalid_options(options, request)
        if problem:
            raise PublicException(one_line(problem))
        options, config = await super().process_cluster_options(user, request)
        if "worker_pools" in options:
            # Each pool once: a name repeated would count its cap once per repetition.
            options = {**options, "worker_pools": ",".join(requested_pools(options))}
        facts = ClusterFacts()
        try:
            if self.quotas.enabled:
                vo = self.quotas.choose(user, options.get("vo") or "")
                options = {**options, "vo": vo.name}
                facts = facts_of_vo(vo)
                if vo.max_workers_per_cluster is not None:
                    current, limit = config.cluster_max_workers, vo.max_workers_per_cluster
                    config.cluster_max_workers = limit if current is None else min(current, limit)
            if self.profile_book.enabled:
                options = self.profile_book.check_choice(options, facts.vo)
                extra = self.profile_book.environment_of(options["profile"])
                config.environment = {**config.environment, **extra}
            self.pools.refuse_unusable(options, facts.vo)
            # Launchers refuse now, as a 4xx, what they could not run later (an
            # HTCondor accounting user name, say).
            launchers = [self.scheduler_launcher_instance]
            launchers += [p.launcher for p in self.pools.pools_for(options)]
            for launcher in dict.fromkeys(launchers):
                launcher.check_cluster_request(user.name, options, config, facts)
        except (QuotaRefused, ValueError) as exc:
            raise PublicException(one_line(str(exc))) from None
        return options, config

    async def start_cluster(self, user, cluster_options):
        options, config = await self.process_cluster_options(user, cluster_options)
        config_dict = config.to_dict()
        vo = self.quotas.vos.get(options.get("vo") or "")
        # No await between the check and the record: concurrent requests cannot both pass.
        if vo is not None:
            try:
                self.quotas.admit_cluster(vo, user.name, FrozenAttrDict(config_dict))
            except QuotaRefused as exc:
                raise PublicException(one_line(str(exc))) from None
        # The hub named the server of the user's token (never the client): see hub_servers.
        tie = getattr(user, "jupyterhub_server", None)
        if tie:
            config_dict[TIE_KEY] = tie
        cluster = self.db.create_cluster(user.name, options, config_dict)
        self.log.info(
            "Created cluster %s for user %s (VO %s)", cluster.name, user.name, options.get("vo")
        )
        if tie:
            self.events.add(
                cluster.name,
                f"stops when {server_text(tie)} stops (unless created with "
                "shutdown_on_close=False)",
            )
        self.queue.put(cluster)
        return cluster.name
