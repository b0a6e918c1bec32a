"""Slurm through ``slurmrestd`` (OpenAPI ``v0.0.38``, Slurm 22.05): JSON over HTTP.

The same three operations as ``SlurmClient`` (submit a job array, list this
gateway's jobs in one call, cancel chosen array tasks) without a process per
call. ``unix:///path/to/socket`` talks to a ``rest_auth/local`` slurmrestd (the
socket's peer is the gateway's user); ``http(s)://host:port`` sends a JWT from
a token file as ``X-SLURM-USER-NAME``/``X-SLURM-USER-TOKEN`` (``rest_auth/jwt``).

slurmrestd does not read ``#SBATCH`` lines: the rendered script's directives
are turned into the job description (``job_properties``), the script itself is
submitted unchanged. An unreachable slurmrestd or slurmctld is
``LauncherUnavailable``; a refusal is a ``SlurmRefused`` with Slurm's words.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from ..base import LauncherUnavailable
from .client import _UNREACHABLE, JobRecord, SlurmRefused, job_records

API = "/slurm/v0.0.38"

#: Slurm error numbers that mean "could not talk to slurmctld" (slurm_errno.h).
_UNREACHABLE_ERRORS = frozenset({1001, 1800, 1801, 1802, 1803, 5004, 5005})
#: HTTP statuses that are no answer of Slurm's: a proxy without slurmrestd behind it, or
#: credentials slurmrestd does not take (an expired token: the admin's to fix, not the
#: analyst's, so the pool waits rather than failing clusters).
_OUTAGE = frozenset({401, 403, 502, 503, 504})
#: Cancelling a job that already ended (or is gone) is fine: ESLURM_INVALID_JOB_ID, ALREADY_DONE.
_GONE_ERRORS = frozenset({2017, 2021})

#: ``#SBATCH --<option>=<value>`` -> v0.0.38 job property, for options given as text.
_TEXT = {
    "job-name": "name",
    "comment": "comment",
    "array": "array",
    "chdir": "current_working_directory",
    "output": "standard_output",
    "error": "standard_error",
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "constraint": "constraints",
    "gres": "gres",
    "reservation": "reservation",
    "licenses": "licenses",
    "wckey": "wckey",
    "gpus": "gpus",
    "gpus-per-node": "gpus_per_node",
    "gpus-per-task": "gpus_per_task",
    "cpus-per-gpu": "cpus_per_gpu",
    "prefer": "prefer",
    "deadline": "deadline",
    "signal": "signal",
    "exclusive": "exclusive",
}
_INTEGER = {"ntasks": "tasks", "cpus-per-task": "cpus_per_task", "nice": "nice"}
_MEGABYTES = {"mem": "memory_per_node", "mem-per-cpu": "memory_per_cpu"}
_FLAGS = {"requeue": ("requeue", True), "no-requeue": ("requeue", False), "hold": ("hold", True)}
_DIRECTIVE = re.compile(r"#SBATCH\s+--([a-z-]+)(?:=(.*))?")


def megabytes(value: str) -> int:
    """``--mem`` style sizes (``512``, ``3000M``, ``3G``, ``1T``) in MB."""
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", value.strip().upper())
    if not match:
        raise ValueError(f"{value!r} is not a size")
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "": 1}[match[2]]
    return max(1, int(int(match[1]) * scale))


def minutes(value: str) -> int:
    """Slurm's time format (``M``, ``M:S``, ``H:M:S``, ``D-H[:M[:S]]``) in whole minutes."""
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return 0xFFFFFFFF  # Slurm's INFINITE
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-H, D-H:M, D-H:M:S
        h, m, s = [*parts, 0, 0][:3]
    else:  # M, M:S, H:M:S
        h, m, s = [0, *parts, 0][:3] if len(parts) < 3 else parts
    total = int(days or 0) * 86400 + h * 3600 + m * 60 + s
    return max(1, -(-total // 60))


def option_property(option: str, value: str | None) -> tuple[str, Any]:
    """One ``#SBATCH --option[=value]`` as a (job property, value); ValueError if unknown."""
    try:
        if value is None:
            return _FLAGS[option]
        if option in _TEXT:
            return _TEXT[option], value
        if option in _INTEGER:
            return _INTEGER[option], int(value)
        if option in _MEGABYTES:
            return _MEGABYTES[option], megabytes(value)
        if option == "time":
            return "time_limit", minutes(value)
        if option == "nodes":
            low, _, high = value.partition("-")
            return "nodes", [int(low), int(high or low)]
    except (KeyError, ValueError):
        pass
    shown = f"--{option}" + ("" if value is None else f"={value}")
    raise ValueError(f"sbatch option {shown!r} cannot be passed to slurmrestd (v0.0.38)")


def job_properties(script: str) -> dict[str, Any]:
    """The v0.0.38 job description the script's ``#SBATCH`` lines ask for.

    ``--export=NONE`` becomes an environment holding only ``SLURM_EXPORT_ENV``
    (slurmrestd requires one; nothing of the gateway's own environment goes).
    """
    job: dict[str, Any] = {"environment": {"SLURM_EXPORT_ENV": "NONE"}}
    for line in script.splitlines()[1:]:
        if not line.startswith("#"):
            break  # sbatch reads directives only up to the first command
        match = _DIRECTIVE.fullmatch(line.strip())
        if not line.startswith("#SBATCH"):
            continue
        if match is None:
            raise ValueError(f"{line!r} cannot be passed to slurmrestd: only --long=value options")
        option, value = match[1], match[2]
        if option == "export":
            if value != "NONE":
                raise ValueError("only --export=NONE can be passed to slurmrestd")
            continue
        key, converted = option_property(option, value)
        job[key] = converted
    return job


def error_words(document: Mapping) -> str:
    """The ``errors`` of a slurmrestd answer as one line."""
    words = []
    for error in document.get("errors") or []:
        text = error.get("description") or error.get("error") or ""
        if error.get("error") and error.get("error") not in text:
            text = f"{text}: {error['error']}".strip(": ")
        words.append(text or f"error {error.get('error_number', error.get('error_code', '?'))}")
    return "; ".join(words)


def check_answer(
    status: int, document: Mapping, what: str, ignore: frozenset[int] = frozenset()
) -> None:
    """Raise for a failed answer: unreachable slurmctld or a refusal, with Slurm's words."""
    errors = [
        e
        for e in document.get("errors") or []
        if int(e.get("error_number", e.get("error_code", 0)) or 0) not in ignore
    ]
    if not errors and (status < 400 or document.get("errors")):
        return  # fine, or only errors the caller may ignore (a job already gone)
    message = f"slurmrestd {what} failed ({status}): {error_words({'errors': errors})}"
    codes = {int(e.get("error_number", e.get("error_code", 0)) or 0) for e in errors}
    if status in _OUTAGE or codes & _UNREACHABLE_ERRORS or _UNREACHABLE.search(message):
        raise LauncherUnavailable(message)
    raise SlurmRefused(message)


class SlurmRestClient:
    """Talks to slurmrestd; counts requests (``calls``) as ``SlurmClient`` counts commands."""

    def __init__(
        self, url: str, timeout: float, token_file: str = "", user: str = "", concurrency: int = 8
    ) -> None:
        if url.startswith("unix://"):
            self.socket, self.base = url[len("unix://") :], "http://slurmrestd"
        elif url.startswith(("http://", "https://")):
            self.socket, self.base = "", url.rstrip("/")
        else:
            raise ValueError(f"slurmrestd URL {url!r} must be unix:///path or http(s)://host:port")
        self.timeout = timeout
        self.token_file = token_file
        self.user = user or getpass.getuser()
        self.calls = 0
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        """JWT headers (read per request: tokens are renewed in place); none for local auth."""
        if not self.token_file:
            return {}
        try:
            with open(self.token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            raise LauncherUnavailable(f"cannot read the slurmrestd token file: {exc}") from exc
        return {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": token}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=self.socket) if self.socket else None
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, ignore: frozenset[int] = frozenset()
    ) -> dict:
        """One request with a deadline; its JSON answer, checked (see ``check_answer``)."""
        self.calls += 1
        what = f"{method} {path}"
        headers = self._headers()
        async with self._limit:
            try:
                async with asyncio.timeout(self.timeout):
                    async with self._open().request(
                        method, self.base + API + path, json=body, headers=headers
                    ) as response:
                        status, text = response.status, await response.text()
            except TimeoutError:
                raise LauncherUnavailable(
                    f"slurmrestd {what} did not answer within {self.timeout:g}s"
                ) from None
            except aiohttp.ClientError as exc:
                raise LauncherUnavailable(f"slurmrestd {what}: {exc}") from exc
        try:
            document = json.loads(text) if text.strip() else {}
        except ValueError:
            document = None
        if not isinstance(document, dict):
            outage = status >= 500 or status < 400 or status in _OUTAGE
            kind = LauncherUnavailable if outage else SlurmRefused
            raise kind(f"slurmrestd {what} answered {status} without JSON: {text[:200]!r}")
        check_answer(status, document, what, ignore)
        return document

    async def submit(self, script: str) -> str:
        """POST the rendered script, its directives as the job description; the job id."""
        try:
            job = job_properties(script)
        except ValueError as exc:
            raise SlurmRefused(str(exc)) from None
        answer = await self.request("POST", "/job/submit", {"script": script, "job": job})
        job_id = str(answer.get("job_id", ""))
        if not job_id.isdigit():
            raise SlurmRefused(f"slurmrestd answered no job id: {str(answer)[:200]}")
        return job_id

    async def jobs(self, job_name: str) -> list[JobRecord]:
        """Every array task named ``job_name``: one ``GET /jobs`` (every job, as squeue --json)."""
        return job_records(await self.request("GET", "/jobs"), job_name)

    async def cancel(self, job_ids: Sequence[str]) -> None:
        """One ``DELETE /job/<id>`` per job or array task (v0.0.38 has no batch cancel)."""
        results = await asyncio.gather(
            *(self.request("DELETE", f"/job/{j}", ignore=_GONE_ERRORS) for j in job_ids),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        unavailable = [f for f in failures if isinstance(f, LauncherUnavailable)]
        if unavailable or failures:
            raise (unavailable or failures)[0]
