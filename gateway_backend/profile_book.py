"""Profiles as the way users choose what they run: the options each user sees,
and a request checked against the profile it names.

With profiles configured, the cluster options are ``profile`` (a select of the
profiles the user's VOs may use), ``worker_cores`` and ``worker_memory``
(within the chosen profile's sizes; its defaults when left out), plus ``vo``
and ``worker_pools`` where they apply. The chosen profile becomes the
cluster's config (image, Python, GPUs, lifetimes, environment variables).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dask_gateway_server.options import Float, Integer, Options, Select, String

from .options import GIB
from .pools import requested_pools
from .profiles import (
    Profile,
    check_interpreters,
    check_references,
    parse_profiles,
    refuse_unlisted,
)
from .usertext import quoted

# Profile keys that override the ElasticClusterConfig value of the same name.
LIFETIMES = ("idle_timeout", "max_lifetime", "no_client_timeout", "detached_no_client_timeout")

if TYPE_CHECKING:
    from .pools import PoolBook
    from .quota_book import QuotaBook


class ProfileBook:
    """The admin's profiles, and which of them a user may use."""

    def __init__(self, profiles: Mapping[str, Any], quotas: QuotaBook, pools: PoolBook) -> None:
        self.profiles: dict[str, Profile] = parse_profiles(profiles)
        check_references(self.profiles, [p.name for p in pools.pools], list(quotas.vos))
        check_interpreters(self.profiles)
        self.quotas = quotas
        self.pools = pools

    @property
    def enabled(self) -> bool:
        return bool(self.profiles)

    def usable(self, user) -> list[Profile]:
        """Profiles any of ``user``'s VOs may use (all of them with quotas off), in order."""
        if not self.quotas.enabled:
            return list(self.profiles.values())
        vos = {vo.name for vo in self.quotas.visible_to(user)}
        return [p for p in self.profiles.values() if not p.vos or p.vos & vos]

    def cluster_options(self, user) -> Options:
        """The options ``user`` sees: only their profiles, sizes spanning those profiles."""
        usable = self.usable(user)
        if not usable:
            return Options(handler=lambda options, user: {})
        first = usable[0]
        fields = [
            Select("profile", [p.name for p in usable], default=first.name, label="Profile"),
            Integer(
                "worker_cores",
                default=int(first.worker_cores.default),
                min=int(min(p.worker_cores.low for p in usable)),
                max=int(max(p.worker_cores.high for p in usable)),
                label="Worker cores (within the profile's sizes)",
            ),
            Float(
                "worker_memory",
                default=first.worker_memory.default,
                min=min(p.worker_memory.low for p in usable),
                max=max(p.worker_memory.high for p in usable),
                label="Worker memory, GiB (within the profile's sizes)",
            ),
        ]
        if self.quotas.enabled:
            fields.append(
                String("vo", default="", label="VO (empty: the profile's first of yours)")
            )
        if any(len(p.pools) > 1 for p in usable):
            fields.append(
                String(
                    "worker_pools",
                    default="",
                    label="Worker pools of the profile, comma-separated (empty: all, in order)",
                )
            )
        return Options(*fields, handler=self._config_of)

    def _config_of(self, options, user) -> dict[str, Any]:
        """The cluster config a profile choice means (upstream's options handler)."""
        profile = self.profiles[options.profile]
        config: dict[str, Any] = {
            "profile": profile.name,
            "worker_cores": int(options.worker_cores),
            "worker_memory": int(options.worker_memory * GIB),
            "worker_gpus": profile.worker_gpus,
            "image": profile.image,
            "python": profile.python,
        }
        for key in LIFETIMES:
            if getattr(profile, key) is not None:
                config[key] = getattr(profile, key)
        return config

    def complete_request(self, user, request: Mapping[str, Any]) -> dict[str, Any]:
        """The request with the profile's defaults filled in; ``ValueError`` if the
        profile is not one ``user`` may use (the message names those they may)."""
        usable = self.usable(user)
        if not usable:
            mine = ", ".join(vo.name for vo in self.quotas.visible_to(user)) or "none"
            raise ValueError(f"no profile is offered to your VOs ({mine}); ask the administrators")
        request = dict(request)
        name = request.get("profile", usable[0].name)
        profile = next((p for p in usable if p.name == name), None)
        if profile is None:
            refuse_unlisted(name, usable)
        request["profile"] = profile.name
        request.setdefault("worker_cores", int(profile.worker_cores.default))
        request.setdefault("worker_memory", profile.worker_memory.default)
        if self.quotas.enabled and not request.get("vo") and profile.vos:
            mine = [vo.name for vo in self.quotas.visible_to(user) if vo.name in profile.vos]
            if mine:
                request["vo"] = mine[0]
        return request

    def check_choice(self, options: Mapping[str, Any], vo: str | None) -> dict[str, Any]:
        """Refuse (``ValueError``) sizes, VO or pools outside the chosen profile;
        returns the options with the profile's pools filled in."""
        profile = self.profiles[options["profile"]]
        problems = []
        for key, choice in (
            ("worker_cores", profile.worker_cores),
            ("worker_memory", profile.worker_memory),
        ):
            allowed = choice.problem(float(options[key]))
            if allowed:
                problems.append(f"{key}={options[key]:g} is not offered: use {allowed}")
        if problems:
            raise ValueError(f"profile {profile.name}: " + "; ".join(problems))
        if not profile.allows(vo):
            raise ValueError(
                f"profile {profile.name} is for VO(s) {', '.join(sorted(profile.vos))}, "
                f"not {quoted(vo or '')}: choose one of those with the vo option, or "
                "another profile"
            )
        if not profile.pools:
            return dict(options)
        asked = requested_pools(options)
        outside = [n for n in asked if n not in profile.pools]
        if outside:
            raise ValueError(
                f"worker_pools: {', '.join(quoted(n) for n in outside[:5])} is not a pool "
                f"of profile {profile.name}; choose from: {', '.join(profile.pools)}"
            )
        return {**options, "worker_pools": ",".join(asked or profile.pools)}

    def environment_of(self, name: str) -> Mapping[str, str]:
        """A profile's extra environment variables (none for unknown/removed profiles)."""
        profile = self.profiles.get(name)
        return profile.env if profile else {}

    def visible(self, user) -> Sequence[dict[str, Any]]:
        """What ``/api/elastic/v1/profiles`` shows ``user``."""
        return [p.describe() for p in self.usable(user)]
