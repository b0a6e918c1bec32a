"""The cluster options users see by default, and refusals that say what to change."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dask_gateway_server.options import Float, Integer, Options, String
from dask_gateway_server.utils import FrozenAttrDict

from .usertext import quoted

GIB = 2**30


def default_cluster_options(max_worker_cores: int, max_worker_memory_gib: float) -> Options:
    """Worker cores and memory (in GiB), bounded by the admin's per-worker maximums."""

    def handler(options):
        return {
            "worker_cores": options.worker_cores,
            "worker_memory": int(options.worker_memory * GIB),
        }

    return Options(
        Integer("worker_cores", default=1, min=1, max=max_worker_cores, label="Worker cores"),
        Float(
            "worker_memory",
            default=min(2.0, max_worker_memory_gib),
            min=0.25,
            max=max_worker_memory_gib,
            label="Worker memory (GiB)",
        ),
        handler=handler,
    )


def _describe(spec: Mapping[str, Any]) -> str:
    kind = spec["spec"]
    t = kind.get("type")
    if t in ("int", "float"):
        noun = "an integer" if t == "int" else "a number"
        lo, hi = kind.get("min"), kind.get("max")
        if lo is not None and hi is not None:
            return f"{noun} from {lo:g} to {hi:g}"
        if lo is not None:
            return f"{noun} of at least {lo:g}"
        if hi is not None:
            return f"{noun} of at most {hi:g}"
        return noun
    if t == "select":
        return "one of " + ", ".join(repr(o) for o in kind.get("options", []))
    return {"string": "a string", "bool": "true or false", "mapping": "a mapping"}.get(t, str(t))


def explain_invalid_options(options: Options, request: Any) -> str | None:
    """A message naming each bad option and its valid values, or None if all are valid."""
    if not isinstance(request, Mapping):
        return f"cluster options must be a mapping of option name to value, got {quoted(request)}"
    specs = {s["field"]: s for s in options.get_specification()}
    problems = []
    unknown = sorted(set(request) - set(specs), key=str)
    if unknown:
        accepted = ", ".join(sorted(specs)) or "none"
        shown = ", ".join(quoted(name) for name in unknown[:5])
        if len(unknown) > 5:
            shown += f" and {len(unknown) - 5} more"
        problems.append(
            f"unknown option(s) {shown}: remove them (this gateway accepts: {accepted})"
        )
    for field in options.fields:
        if field.field not in request:
            continue
        try:
            field.validate(request[field.field])
        except (TypeError, ValueError, ArithmeticError):
            # ArithmeticError: float(10**400) overflows inside upstream's validation.
            problems.append(
                f"{field.field}={quoted(request[field.field])} is not valid: "
                f"use {_describe(specs[field.field])}"
            )
    if not problems:
        return None
    return "Invalid cluster options: " + "; ".join(problems) + "."


def with_gateway_choices(options: Options, vo: bool, pools: bool) -> Options:
    """The admin's options plus the gateway's own: ``vo`` (quotas on) and ``worker_pools``
    (more than one pool), unless the admin defined them. The admin's handler never sees
    ours, so their options need not know about them."""
    have = {f.field for f in options.fields}
    extra = []
    if vo and "vo" not in have:
        extra.append(String("vo", default="", label="VO (empty: your only VO)"))
    if pools and "worker_pools" not in have:
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
