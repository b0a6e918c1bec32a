"""Worker batch scripts: ``#SBATCH`` directives from checked values, a body of quoted words.

Injection is ruled out by construction. Directive values are admin settings or
gateway-made names, each matched against a narrow pattern (no blank, quote, ``%``
or line break, so nothing can end a directive or start another). Everything that
may come from a user (environment values, the command, the owner's name) lands
only in the body, after the first command, where sbatch reads no directive, and
there as a quoted shell word on one line (``shell_word``), or percent-encoded.

The job array's tasks are the batch's workers: task ``i`` runs worker
``names[i]``. Slurm keeps at most 1024 characters of a comment, so the comment
names the cluster and a batch id, and the batch's worker names are kept in a
file of the cluster's staging directory (``batches/<id>``), which a restarted
gateway reads to tell which worker each task is.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

COMMENT_TAG = "eg1"

#: Stands for the worker's name in its command line until the script is written.
WORKER_NAME = "\0worker_name\0"

_WORD = re.compile(r"[A-Za-z0-9_.:+@-]{1,128}")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,:&|()\[\]*!@+-]{1,512}")
_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE")
_PATH = re.compile(r"/[A-Za-z0-9_./+@:-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BATCH = re.compile(r"[0-9a-f]{16}")
_COMMENT = re.compile(r"[A-Za-z0-9_.:+@%;~-]{1,1024}")


class UnsafeValue(ValueError):
    """A value that cannot be passed on to Slurm exactly as given."""


def check_word(
    value: str, what: str, *, empty: bool = False, constraint: bool = False, time: bool = False
) -> str:
    """A directive value: one word of a narrow alphabet (no blank, quote, ``%``, newline)."""
    if empty and value == "":
        return value
    pattern = _TIME if time else _CONSTRAINT if constraint else _WORD
    if not pattern.fullmatch(value):
        allowed = (
            "Slurm's time format (D-HH:MM:SS)"
            if time
            else "letters, digits and _ . , : & | ( ) [ ] * ! @ + -"
            if constraint
            else "letters, digits and _ . : + @ - (at most 128)"
        )
        raise UnsafeValue(f"{what} {value!r} may only hold {allowed}")
    return value


def check_directive(value: str) -> str:
    """An admin's extra ``#SBATCH`` option: starts with ``-``, one printable line."""
    if not value.startswith("-") or not value.isprintable():
        raise UnsafeValue(
            f"extra sbatch option {value!r} must start with '-' and be one printable line"
        )
    return value


def check_path(value: str, what: str) -> str:
    """A path in a directive (``--output``): absolute, no blank, ``%`` (a pattern) or quote."""
    if not _PATH.fullmatch(value):
        raise UnsafeValue(
            f"{what} {value!r} must be an absolute path of letters, digits and _ . / + @ : -"
        )
    return value


def check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise UnsafeValue(f"environment variable name {name!r} is not a shell variable name")
    return name


def check_name(value: str, what: str) -> str:
    """A gateway-made name (cluster, worker): letters, digits, ``_`` and ``-``."""
    if not _NAME.fullmatch(value):
        raise UnsafeValue(f"{what} {value!r} is not a plain name")
    return value


def shell_word(value: str, what: str) -> str:
    """``value`` as one quoted bash word, on one line of the script.

    Printable text is single-quoted (``shlex.quote``). Text with a line break or
    another control character becomes an ANSI-C word (``$'...'``) whose bytes
    outside printable ASCII are ``\\xHH``: no user text ever starts a line of the
    script, so not even a ``#SBATCH`` line below the first command can appear.
    Bash words cannot hold a NUL byte: refused.
    """
    if "\0" in value:
        raise UnsafeValue(f"{what} contains a NUL character, which a shell cannot pass on")
    if value.isprintable():
        return shlex.quote(value)
    out = []
    for byte in value.encode("utf-8", "surrogateescape"):
        char = chr(byte)
        out.append(char if 0x20 <= byte < 0x7F and char not in "\\'" else f"\\x{byte:02x}")
    return "$'" + "".join(out) + "'"


def submitter_id(gateway_id: str, staging_directory: str) -> str:
    """``<gateway_id>:<tag of the staging directory>``: whose jobs these are.

    Pools of one gateway may stage into different directories; a launcher
    instance only tells (and cancels) the jobs whose batch files it can read.
    """
    digest = hashlib.sha256(os.path.abspath(staging_directory).encode()).hexdigest()
    return f"{gateway_id}:{digest[:8]}"


def job_comment(submitter: str, cluster: str, username: str, batch: str) -> str:
    """``eg1;<submitter>;<cluster>;<owner, percent-encoded>;<batch>``, within Slurm's 1024.

    ``submitter`` is ``submitter_id``; ``batch`` names the file in the cluster's
    staging directory that lists the array's worker names (a comment could hold
    only ~25 of them).
    """
    owner = urllib.parse.quote(username, safe="")[:200]
    check_name(cluster, "cluster name")
    return ";".join([COMMENT_TAG, submitter, cluster, owner, check_batch(batch)])


def check_comment(comment: str) -> str:
    """A comment as ``job_comment`` makes them: one word, at most Slurm's 1024 characters."""
    if not _COMMENT.fullmatch(comment):
        raise UnsafeValue(f"job comment {comment!r} is not one word of at most 1024 characters")
    return comment


def check_batch(batch: str) -> str:
    if not _BATCH.fullmatch(batch):
        raise UnsafeValue(f"batch id {batch!r} is not 16 hexadecimal digits")
    return batch


def parse_comment(comment: str, submitter: str) -> tuple[str, str] | None:
    """(cluster, batch) of a job ``submitter`` (see ``submitter_id``) submitted, else None."""
    parts = comment.split(";")
    if len(parts) != 5 or parts[0] != COMMENT_TAG or parts[1] != submitter:
        return None
    if not _NAME.fullmatch(parts[2]) or not _BATCH.fullmatch(parts[4]):
        return None
    return parts[2], parts[4]


@dataclass(frozen=True)
class WorkerJob:
    """Everything one batch script says, already resolved from settings and the cluster."""

    job_name: str
    comment: str
    workers: Sequence[str]
    stage: str  # the cluster's private staging directory (TLS files, lease, logs)
    cores: int
    memory_bytes: int
    gpus: int
    environment: Mapping[str, str]
    command: Sequence[str]  # WORKER_NAME stands for the worker's name
    lease_duration: float
    options: Mapping[str, str]  # partition, account, qos, constraint, time (checked words)
    extra: Sequence[str] = ()
    gpu_gres: str = "gpu"


def directives(job: WorkerJob) -> list[str]:
    """The ``#SBATCH`` lines: checked words only."""
    lines = [
        f"--job-name={check_word(job.job_name, 'job name')}",
        f"--comment={check_comment(job.comment)}",
        f"--array=0-{len(job.workers) - 1}",
        "--export=NONE",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={max(1, int(job.cores))}",
        f"--mem={max(1, math.ceil(int(job.memory_bytes) / 2**20))}M",
        f"--chdir={check_path(job.stage, 'staging directory')}",
        f"--output={job.stage}/logs/slurm-%A_%a.out",
    ]
    if job.gpus:
        lines.append(f"--gres={check_word(job.gpu_gres, 'gpu_gres')}:{int(job.gpus)}")
    for option, value in job.options.items():
        if value:
            checked = check_word(
                value, option, constraint=option == "constraint", time=option == "time"
            )
            lines.append(f"--{option}={checked}")
    lines += [check_directive(d) for d in job.extra]
    return [f"#SBATCH {line}" for line in lines]


def _command_words(command: Sequence[str]) -> str:
    return " ".join(
        '"$name"' if arg == WORKER_NAME else shell_word(arg, "an argument of the worker command")
        for arg in command
    )


BODY = """\
# Elastic Gateway worker job: task i of this array runs worker names[i]. No secret is
# written here: the TLS files are copied from the cluster's private staging directory.
set -u
umask 077
names=({names})
name=${{names[$SLURM_ARRAY_TASK_ID]}}
stage={stage}
lease_seconds={lease}
lease_check={check}
fresh() {{
    local mtime
    mtime=$(stat -c %Y -- "$stage/lease" 2>/dev/null) || return 1
    [ $(( $(date +%s) - mtime )) -le "$lease_seconds" ]
}}
if ! fresh; then
    echo "elastic-gateway: the gateway's lease lapsed before worker $name started; ending" >&2
    exit 0
fi
creds=$(mktemp -d "${{TMPDIR:-/tmp}}/elastic-gateway.XXXXXXXX") || exit 1
worker=
cleanup() {{
    if [ -n "$worker" ]; then kill -TERM "$worker" 2>/dev/null; wait "$worker"; fi
    rm -rf -- "$creds"
}}
trap cleanup EXIT
trap 'exit 143' TERM INT
cp -- "$stage/dask.crt" "$stage/dask.pem" "$creds/" || exit 1
cd -- "$creds" || exit 1
(
{exports}
exec {command}
) &
worker=$!
waited=0
while kill -0 "$worker" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if [ "$waited" -ge "$lease_check" ]; then
        waited=0
        if ! fresh; then
            echo "elastic-gateway: lease lapsed (not renewed for ${{lease_seconds}}s:" \\
                "the gateway is gone); stopping worker $name" >&2
            exit 0
        fi
    fi
done
wait "$worker"
status=$?
worker=
exit "$status"
"""


def render(job: WorkerJob) -> str:
    """The whole batch script of one job array."""
    exports = "\n".join(
        f"export {check_env_name(k)}={shell_word(str(v), f'environment variable {k}')}"
        for k, v in job.environment.items()
    )
    body = BODY.format(
        names=" ".join(check_name(w, "worker name") for w in job.workers),
        stage=shlex.quote(job.stage),
        lease=max(1, int(job.lease_duration)),
        check=max(1, min(30, int(job.lease_duration // 4))),
        exports=exports,
        command=_command_words(job.command),
    )
    return "\n".join(["#!/bin/bash", *directives(job), body])
