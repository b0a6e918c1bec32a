"""Turn submit-description text into job ClassAds, using the real ``htcondor2.Submit``.

The real bindings cannot build job ads without a schedd (``Submit.jobs()`` and
``Submit.procs()`` raise ``NotImplementedError`` in htcondor2 25.x), so this module does
the part ``condor_submit`` does in C++ in two halves:

* everything the real Python code can do is left to it: parsing the text
  (``htcondor2.Submit(text, queue=...)``), the queue statement (``getQArgs()``), the item
  data (``itemdata()``, which runs the C++ item parser) and macro expansion
  (``expand(key)`` after setting ``Process``/``ProcId``/``Cluster``/``Step``/``Row``/
  ``ItemIndex`` and the item variables, one proc at a time);
* the last step, naming each expanded submit command as a job-ad attribute, is a table
  here (``executable`` -> ``Cmd``, ``request_memory`` -> ``RequestMemory`` in MB, ...);
  the values are parsed with the real ``classad2``.

Argument and environment strings are stored in HTCondor's "new" (V2) canonical form
(``quoting.py``), which the starter uses to split them again.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import classad2
import htcondor2

from .quoting import (
    arguments_to_attr,
    environment_to_attr,
    format_env_v2,
    parse_env_v1,
    parse_env_v2,
)

#: ClassAd JobUniverse numbers for the universes a submit file may name.
UNIVERSES: dict[str, int] = {
    "vanilla": 5,
    "container": 5,
    "docker": 5,
    "scheduler": 7,
    "grid": 9,
    "java": 10,
    "parallel": 11,
    "local": 12,
    "vm": 13,
}

#: Submit commands whose value is a string attribute.
STRING_COMMANDS: dict[str, str] = {
    "output": "Out",
    "error": "Err",
    "input": "In",
    "log": "UserLog",
    "transfer_input_files": "TransferInput",
    "transfer_output_files": "TransferOutput",
    "transfer_output_remaps": "TransferOutputRemaps",
    "encrypt_input_files": "EncryptInputFiles",
    "encrypt_output_files": "EncryptOutputFiles",
    "dont_encrypt_input_files": "DontEncryptInputFiles",
    "dont_encrypt_output_files": "DontEncryptOutputFiles",
    "batch_name": "JobBatchName",
    "description": "JobDescription",
    "container_image": "ContainerImage",
    "docker_image": "DockerImage",
    "x509userproxy": "x509userproxy",
    "accounting_group": "AcctGroup",
    "accounting_group_user": "AcctGroupUser",
}

#: Submit commands whose value is a ClassAd expression.
EXPRESSION_COMMANDS: dict[str, str] = {
    "requirements": "Requirements",
    "rank": "Rank",
    "periodic_remove": "PeriodicRemove",
    "periodic_hold": "PeriodicHold",
    "periodic_release": "PeriodicRelease",
    "periodic_hold_reason": "PeriodicHoldReason",
    "periodic_hold_subcode": "PeriodicHoldSubCode",
    "on_exit_remove": "OnExitRemove",
    "on_exit_hold": "OnExitHold",
    "on_exit_hold_reason": "OnExitHoldReason",
    "on_exit_hold_subcode": "OnExitHoldSubCode",
    "priority": "JobPrio",
    "max_retries": "JobMaxRetries",
    "job_max_vacate_time": "JobMaxVacateTime",
    "allowed_execute_duration": "AllowedExecuteDuration",
    "allowed_job_duration": "AllowedJobDuration",
    "job_lease_duration": "JobLeaseDuration",
    "request_cpus": "RequestCpus",
    "request_gpus": "RequestGpus",
}

#: Submit commands whose value is a boolean.
BOOLEAN_COMMANDS: dict[str, str] = {
    "transfer_executable": "TransferExecutable",
    "encrypt_execute_directory": "EncryptExecuteDirectory",
    "stream_output": "StreamOut",
    "stream_error": "StreamErr",
    "leave_in_queue": "LeaveJobInQueue",
    "nice_user": "NiceUser",
}

#: Submit commands whose value is an upper-cased string.
UPPER_COMMANDS: dict[str, str] = {
    "should_transfer_files": "ShouldTransferFiles",
    "when_to_transfer_output": "WhenToTransferOutput",
}

_NOTIFICATION = {"never": 0, "always": 1, "complete": 2, "error": 3}
_FOREACH = re.compile(r"\b(in|from|matching)\b", re.IGNORECASE)
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGTP]?)B?\s*$", re.IGNORECASE)
_UNIT_POWER = {"": None, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


class SubmitError(Exception):
    """A submit description the real condor_submit would also refuse."""


# --- value conversions ---------------------------------------------------------------------------


def parse_expr(text: str, what: str) -> classad2.ExprTree:
    """Parse a ClassAd expression, with an error that names the submit command."""
    try:
        return classad2.ExprTree(text)
    except Exception as exc:  # classad2.ClassAdException, ValueError
        raise SubmitError(f"Parse error in expression for {what}: {text!r}") from exc


def parse_bool(text: str) -> bool | None:
    """Submit-language booleans (true/false/yes/no/1/0); None when it is an expression."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "t", "y", "1"):
        return True
    if lowered in ("false", "no", "f", "n", "0"):
        return False
    return None


def size_in(text: str, default_unit: str, unit: str) -> int | None:
    """Convert ``2GB``/``512``/``1.5 G`` into whole ``unit`` (K or M); None if not a size."""
    m = _SIZE.match(text)
    if not m:
        return None
    number, suffix = float(m.group(1)), m.group(2).upper() or default_unit
    power = _UNIT_POWER[suffix] or 0
    value = number * 1024 ** (power - (_UNIT_POWER[unit] or 0))
    return max(int(-(-value // 1)), 0)  # round up, like condor_submit


# --- the expansion itself ------------------------------------------------------------------------


@dataclass
class SubmitContext:
    """Where and by whom a submit happens (condor_submit takes these from its process)."""

    cluster_id: int
    qdate: int
    owner: str
    submit_cwd: str
    schedd_name: str = "standin"
    uid_domain: str = "standin"
    submitter_env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ExpandedSubmit:
    """The procs of one submit transaction."""

    ads: list[classad2.ClassAd]
    cluster_ad: classad2.ClassAd


def _count_from_qargs(submit: htcondor2.Submit, qargs: str) -> int:
    """The leading count of a queue statement (``queue 3 x from ...``), 1 when absent."""
    token = qargs.strip().split(None, 1)[0] if qargs.strip() else ""
    if not token or _FOREACH.fullmatch(token) or "," in token:
        return 1
    if "$" in token:
        submit["_standin_queue_count"] = token
        token = submit.expand("_standin_queue_count")
    try:
        return int(token)
    except ValueError:
        return 1  # a bare variable name: "queue name from ..."


def expand_submit(
    text: str,
    ctx: SubmitContext,
    *,
    count: int = 0,
    queue: str | None = None,
    spool: bool = False,
) -> ExpandedSubmit:
    """Expand a submit description into one job ad per proc (see module docstring)."""
    try:
        submit = htcondor2.Submit(text, queue=queue) if queue else htcondor2.Submit(text)
        qargs = submit.getQArgs()
        items = submit.itemdata()
    except (ValueError, htcondor2.HTCondorException) as exc:
        raise SubmitError(f"invalid submit description: {exc}") from exc
    item_list: list[dict[str, str]] | None = None
    if items is not None:
        item_list = [i if isinstance(i, dict) else {"Item": i} for i in items]
    elif _FOREACH.search(qargs):
        item_list = []  # a foreach clause that matched nothing
    per_item = count if count != 0 else _count_from_qargs(submit, qargs)
    n_items = 1 if item_list is None else len(item_list)
    if per_item < 0 or per_item * n_items <= 0:
        raise ValueError("invalid Queue statement")

    keys = [k for k in submit.keys() if not k.startswith("_standin")]
    raw = {k: submit[k] for k in keys}
    expander = htcondor2.Submit(raw)
    ads: list[classad2.ClassAd] = []
    proc = 0
    for row, item in enumerate(item_list if item_list is not None else [{}]):
        for step in range(per_item):
            live = {
                "Cluster": str(ctx.cluster_id),
                "ClusterId": str(ctx.cluster_id),
                "Process": str(proc),
                "ProcId": str(proc),
                "Step": str(step),
                "Row": str(row),
                "ItemIndex": str(row),
                "Node": "",
                **item,
            }
            for k, v in live.items():
                expander[k] = v
            expanded = {k: _expand_or_empty(expander, k) for k in keys}
            ads.append(_ad_from_commands(expanded, ctx, proc, spool))
            proc += 1
    return ExpandedSubmit(ads=ads, cluster_ad=_cluster_ad(ads))


def _cluster_ad(ads: list[classad2.ClassAd]) -> classad2.ClassAd:
    """The attributes all procs share, like the schedd's cluster ad."""
    cluster = classad2.ClassAd()
    first = ads[0]
    for key in first.keys():
        if key == "ProcId":
            continue
        text = str(first.lookup(key))
        if all(key in ad and str(ad.lookup(key)) == text for ad in ads[1:]):
            cluster[key] = first.lookup(key)
    return cluster


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def _ad_from_commands(
    cmds: dict[str, str], ctx: SubmitContext, proc: int, spool: bool
) -> classad2.ClassAd:
    """Name each expanded submit command as its job-ad attribute (condor_submit's last step)."""
    lower = {k.lower(): v for k, v in cmds.items()}
    ad = classad2.ClassAd()
    universe = lower.get("universe", "vanilla").strip().lower() or "vanilla"
    if universe not in UNIVERSES:
        raise SubmitError(f"I don't know about the '{universe}' universe.")
    iwd = _absolute(lower.get("initialdir") or lower.get("initial_dir") or ".", ctx.submit_cwd)
    executable = lower.get("executable", "").strip()
    if not executable:
        raise SubmitError("No 'executable' parameter was provided")
    ad.update(
        {
            "MyType": "Job",
            "TargetType": "Machine",
            "ClusterId": ctx.cluster_id,
            "ProcId": proc,
            "GlobalJobId": f"{ctx.schedd_name}#{ctx.cluster_id}.{proc}#{ctx.qdate}",
            "Owner": ctx.owner,
            "User": f"{ctx.owner}@{ctx.uid_domain}",
            "QDate": ctx.qdate,
            "EnteredCurrentStatus": ctx.qdate,
            "JobStatus": 1,
            "LastJobStatus": 0,
            "JobUniverse": UNIVERSES[universe],
            "Iwd": iwd,
            "Cmd": _absolute(executable, iwd),
            "In": "/dev/null",
            "Out": "/dev/null",
            "Err": "/dev/null",
            "JobPrio": 0,
            "NumJobStarts": 0,
            "NumHolds": 0,
            "CompletionDate": 0,
            "RequestCpus": 1,
            "RequestMemory": 128,
            "RequestDisk": 1024,
            "ShouldTransferFiles": "IF_NEEDED",
            "WhenToTransferOutput": "ON_EXIT",
            "PeriodicHold": False,
            "PeriodicRelease": False,
            "PeriodicRemove": False,
            "OnExitHold": False,
            "OnExitRemove": True,
            "LeaveJobInQueue": False,
        }
    )
    if universe == "container":
        ad["WantContainer"] = True
    if universe == "docker":
        ad["WantDocker"] = True

    env: dict[str, str] = {}
    getenv = lower.get("getenv", "").strip()
    if getenv and parse_bool(getenv) is not False:
        patterns = ["*"] if parse_bool(getenv) else [p.strip() for p in getenv.split(",")]
        for name, val in ctx.submitter_env.items():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                env[name] = val

    for key, value in lower.items():
        value = value.strip()
        if key in STRING_COMMANDS:
            attr = STRING_COMMANDS[key]
            if attr == "UserLog" and value:
                value = _absolute(value, iwd)
            elif attr.startswith("Transfer"):
                value = ", ".join(p.strip() for p in value.split(",") if p.strip())
            ad[attr] = value
            if key == "container_image":
                ad["WantContainer"] = True
        elif key in EXPRESSION_COMMANDS:
            if value:
                ad[EXPRESSION_COMMANDS[key]] = parse_expr(value, key)
        elif key in BOOLEAN_COMMANDS:
            flag = parse_bool(value)
            ad[BOOLEAN_COMMANDS[key]] = flag if flag is not None else parse_expr(value, key)
        elif key in UPPER_COMMANDS:
            ad[UPPER_COMMANDS[key]] = value.upper()
        elif key == "request_memory":
            mb = size_in(value, "M", "M")
            ad["RequestMemory"] = mb if mb is not None else parse_expr(value, key)
        elif key == "request_disk":
            kb = size_in(value, "K", "K")
            ad["RequestDisk"] = kb if kb is not None else parse_expr(value, key)
        elif key.startswith("request_") and key not in ("request_cpus", "request_gpus"):
            name = key[len("request_") :]
            ad["Request" + name[:1].upper() + name[1:]] = parse_expr(value, key)
        elif key == "arguments":
            try:
                attr, text = arguments_to_attr(value)
            except ValueError as exc:
                raise SubmitError(f"arguments: {exc}") from exc
            ad[attr] = text
        elif key == "environment":
            try:
                attr, text = environment_to_attr(value)
            except ValueError as exc:
                raise SubmitError(f"environment: {exc}") from exc
            if attr == "Environment":
                env.update(parse_env_v2(text))
            else:
                env.update(parse_env_v1(text))
        elif key == "notification":
            ad["JobNotification"] = _NOTIFICATION.get(value.lower(), 0)
        elif key.startswith("my."):
            name = _original_key(cmds, key)[3:]
            ad[name] = parse_expr(value, "+" + name)
    if env:
        ad["Environment"] = format_env_v2(env)
    if "AcctGroup" in ad:
        user = ad.get("AcctGroupUser", ctx.owner)
        ad["AcctGroupUser"] = user
        ad["AccountingGroup"] = f"{ad['AcctGroup']}.{user}"

    if spool:
        _submit_held(ad, "Spooling input data files", 16)
    elif parse_bool(lower.get("hold", "false")):
        _submit_held(ad, "submitted on hold at user's request", 15)
    return ad


def _original_key(cmds: dict[str, str], lowered: str) -> str:
    """The original spelling of a (case-insensitive) submit key, for attribute names."""
    for key in cmds:
        if key.lower() == lowered:
            return key
    return lowered


def _submit_held(ad: classad2.ClassAd, reason: str, code: int) -> None:
    ad["JobStatus"] = 5
    ad["HoldReason"] = reason
    ad["HoldReasonCode"] = code
    ad["HoldReasonSubCode"] = 0


def _expand_or_empty(expander: htcondor2.Submit, key: str) -> str:
    """``key``'s expanded value; a command given with an empty value reads as empty."""
    try:
        return expander.expand(key)
    except KeyError:
        return ""
