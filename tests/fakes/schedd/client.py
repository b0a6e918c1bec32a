"""``StandinSchedd``: the ``htcondor2.Schedd`` look-alike that the launcher is given.

It is blocking, like the real binding, and every call has a timeout, so a hung daemon can
never hang the caller. Failures to reach the schedd raise ``htcondor2.HTCondorException``
with the messages the real binding gives for an unreachable schedd.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import classad2
import htcondor2

# The real bindings' own helpers: the job_spec dispatch (ids vs constraint) and the way
# Schedd.submit() serialises item data.  Using them keeps the stand-in's behaviour identical.
from htcondor2._schedd import DefaultItemData, _add_line_from_itemdata, job_spec_hack

from .protocol import StandinUnreachable, parse_ad_texts, request

#: What the real htcondor2 says when the schedd cannot be reached, per method
#: (observed against a closed port with htcondor 25.14).
_UNREACHABLE = {
    "submit": "Failed to connect to schedd, errmsg=CEDAR:6001:Failed to connect to {addr}",
    "query": "Failed to fetch ads from schedd, errmsg=CEDAR:6001:Failed to connect to {addr}",
    "act": "Error when performing action on the schedd.",
    "edit": "Failed to connect to schedd.",
}
_TIMED_OUT = {
    "submit": "Failed to connect to schedd, errmsg=CEDAR:6004:timed out after {t:g}s "
    "waiting for {addr}",
    "query": "Failed to fetch ads from schedd, errmsg=CEDAR:6004:timed out after {t:g}s "
    "waiting for {addr}",
    "act": "Error when performing action on the schedd.",
    "edit": "Failed to connect to schedd.",
}


class StandinSchedd:
    """Blocking client with the ``htcondor2.Schedd`` methods the launcher uses.

    ``submit``, ``query``, ``act`` and ``edit`` take the same arguments as htcondor2 25.x
    and return the same types (``SubmitResult``, lists of ``classad2.ClassAd``, ...).
    """

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._addr = f"<unix:{self.socket_path}>"

    def __repr__(self) -> str:
        return f"StandinSchedd({str(self.socket_path)!r})"

    def _call(self, method: str, op_args: dict[str, Any]) -> Any:
        try:
            return request(self.socket_path, method, op_args, self.timeout)
        except StandinUnreachable as exc:
            table = _TIMED_OUT if exc.timed_out else _UNREACHABLE
            message = table[method].format(addr=self._addr, t=self.timeout)
            raise htcondor2.HTCondorException(message) from exc

    def submit(
        self,
        description: htcondor2.Submit,
        count: int = 0,
        spool: bool = False,
        itemdata: Iterator[str] | Iterator[dict[str, str]] | None = DefaultItemData,
        queue: str | None = None,
    ) -> htcondor2.SubmitResult:
        """Submit one cluster in one transaction (text built exactly as Schedd.submit does)."""
        if not isinstance(description, htcondor2.Submit):
            raise TypeError("description must be an htcondor2.Submit object")
        text = _submit_text(description, itemdata, queue, count)
        getenv = (description.get("getenv") or "").strip().lower()
        env = dict(os.environ) if getenv not in ("", "false", "no", "0") else {}
        result = self._call(
            "submit",
            {
                "text": text,
                "queue": queue,
                "count": count,
                "spool": spool,
                "cwd": os.getcwd(),
                "env": env,
            },
        )
        cluster_ad = classad2.parseOne(result["cluster_ad"])
        return htcondor2.SubmitResult(
            result["cluster"], result["first_proc"], result["num_procs"], cluster_ad, None
        )

    def query(
        self,
        constraint: str | classad2.ExprTree = "True",
        projection: Sequence[str] = (),
        callback: Callable[[classad2.ClassAd], Any] | None = None,
        limit: int = -1,
        opts: htcondor2.QueryOpt = htcondor2.QueryOpt.Default,
    ) -> list[Any]:
        """Job ads matching ``constraint`` (evaluated by classad2 in the daemon)."""
        texts = self._call(
            "query",
            {"constraint": str(constraint), "projection": list(projection), "limit": int(limit)},
        )
        results = parse_ad_texts(texts)
        if callback is None:
            return results
        return [r for r in (callback(ad) for ad in results) if r is not None]

    def act(
        self,
        action: htcondor2.JobAction,
        job_spec: list[str] | str | classad2.ExprTree | int,
        reason: str | tuple[str, int] | None = None,
    ) -> classad2.ClassAd:
        """Remove/Hold/Release/... jobs; returns the totals ad (TotalSuccess, ...)."""
        if not isinstance(action, htcondor2.JobAction):
            raise TypeError("action must be a JobAction")
        reason_code: Any = None
        if reason is None:
            reason_string: str | None = "Python-initiated action"
        elif isinstance(reason, tuple):
            reason_string, reason_code = reason
        else:
            # NB: htcondor2 25.x drops a plain-string reason (only None and tuples reach
            # the schedd); the stand-in honours it.  See README.md.
            reason_string = str(reason)

        def send(mode: str) -> Callable[..., dict[str, int]]:
            def call(_addr: str, spec: str, *args: Any) -> dict[str, int]:
                act_args = {"action": args[0], "reason": args[1], "reason_code": args[2]}
                return self._call("act", {"mode": mode, "spec": spec, **act_args})

            return call

        totals = job_spec_hack(
            self._addr,
            job_spec,
            send("ids"),
            send("constraint"),
            (int(action), reason_string, str(reason_code)),
        )
        ad = classad2.ClassAd()
        ad.update(totals)
        return ad

    def edit(
        self,
        job_spec: list[str] | str | classad2.ExprTree | int,
        attr: str,
        value: str | classad2.ExprTree,
        flags: htcondor2.TransactionFlag = htcondor2.TransactionFlag.Default,
    ) -> int:
        """Set ``attr`` to the ClassAd expression ``value`` on matching jobs; the match count."""
        if not isinstance(flags, htcondor2.TransactionFlag):
            raise TypeError("flags must be a TransactionFlag")
        str_value = repr(value) if isinstance(value, classad2.ExprTree) else str(value)

        def send(mode: str) -> Callable[..., int]:
            def call(_addr: str, spec: str, *args: Any) -> int:
                edit_args = {"attr": args[0], "value": args[1], "flags": int(args[2])}
                return int(self._call("edit", {"mode": mode, "spec": spec, **edit_args}))

            return call

        spec_args = (attr, str_value, flags)
        return int(job_spec_hack(self._addr, job_spec, send("ids"), send("constraint"), spec_args))


def _submit_text(
    description: htcondor2.Submit,
    itemdata: Iterator[str] | Iterator[dict[str, str]] | None,
    queue: str | None,
    count: int,
) -> str:
    """The submit file htcondor2.Schedd.submit() would hand to the C++ side (25.x logic)."""
    text = "".join(f"{key} = {value}\n" for key, value in description.items()) + "\n"
    has_queue, has_items, has_count = queue is not None, itemdata is not DefaultItemData, count != 0
    if has_queue and (has_items or has_count):
        raise ValueError("queue and count/itemdata are mutually exclusive")
    separator = "\x1f"
    if itemdata is DefaultItemData:
        if queue is None:
            text += "queue " + description.getQArgs() + "\n"
            queue_args = description.getQArgs().casefold()
        else:
            queue_args = queue.casefold()
        first_from = queue_args.find("from")
        if first_from != -1 and (first_from == 0 or queue_args[first_from - 1] == " "):
            parts = queue_args[first_from:].partition("table")
            if parts[1] != "" and parts[0].endswith(" "):
                separator = ","
        if text.strip().endswith("("):
            original = description.itemdata()
            if original is not None:
                first = next(original)
                projection = first.keys() if isinstance(first, dict) else None
                text = _add_line_from_itemdata(text, first, separator, projection)
                for item in original:
                    text = _add_line_from_itemdata(text, item, separator, projection)
                text += ")\n"
    elif itemdata is None:
        text += "queue\n"
    else:
        items = iter(itemdata)
        first = next(items)
        if isinstance(first, str):
            projection = None
            text += "QUEUE item FROM "
        elif isinstance(first, dict):
            if any(not isinstance(k, str) for k in first):
                raise TypeError("itemdata dictionaries must have string keys")
            projection = first.keys()
            text += f"QUEUE {','.join(projection)} FROM "
        else:
            raise TypeError("itemdata must be a list of strings or dictionaries")
        text += "(\n"
        text = _add_line_from_itemdata(text, first, separator, projection)
        for item in items:
            text = _add_line_from_itemdata(text, item, separator, projection)
        text += ")\n"
    return text
