"""The Slurm world of benchmarks/chaos.py (``--with slurm``).

Real Debian ``munged``, ``slurmctld`` and ``slurmd`` on loopback (tests/slurm/harness.py),
and a gateway worker pool "slurm" submitting to them (schedulers stay where the other
pools put them).

Faults: ``slurmctld-kill``, SIGKILL of slurmctld, restarted after 0-5 s on the same
StateSaveLocation (a real slurmctld recovers its jobs from there, and running jobs stay
with slurmd meanwhile); ``slurmctld-pause``, SIGSTOP of slurmctld for 2-8 s, then SIGCONT
(a hung controller: commands hang instead of failing).

The truth is ``squeue``'s active array tasks named with this gateway's ``gateway_id``
(mapped to workers by the gateway's batch files, as tests/slurm/fixtures.py does), and the
processes whose environment names a job of this gateway that is no longer active (strays).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.chaos_world import Seen, fault_window
from gateway_backend.launchers.slurm.client import job_records
from gateway_backend.launchers.slurm.script import parse_comment, submitter_id

KINDS = ("slurmctld-kill", "slurmctld-pause")
POOL = "slurm"
CAP = 3


class World:
    """One-node Slurm cluster of this run, started and stopped as one."""

    pool = POOL
    cap = CAP
    kinds = KINDS

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.staging = root / "slurm-staging"
        self.rng = rng
        self.gateway_id = f"chaos-{uuid.uuid4().hex[:6]}"
        self.submitter = submitter_id(self.gateway_id, str(self.staging))

    def __enter__(self) -> World:
        from tests.slurm.harness import SlurmHarness, slurm_installed

        if not slurm_installed():
            raise RuntimeError(
                "--with slurm needs Debian's slurmctld, slurmd and munge: "
                "apt-get install slurmctld slurmd munge"
            )
        self.harness = SlurmHarness().start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.harness.stop()

    def config(self) -> str:
        """The capped pool "slurm" on the harness's default partition."""
        bindir = os.path.dirname(sys.executable)
        return f"""
c.ElasticBackend.worker_pools[{POOL!r}] = {{"launcher": "slurm", "max_workers": {CAP}}}
c.SlurmLauncher.gateway_id = {self.gateway_id!r}
c.SlurmLauncher.slurm_conf = {str(self.harness.conf)!r}
c.SlurmLauncher.staging_directory = {str(self.staging)!r}
c.SlurmLauncher.environment = {{"PATH": {bindir + ":/usr/bin:/bin"!r}}}
c.SlurmLauncher.partition = "debug"
c.SlurmLauncher.status_period = 1
c.SlurmLauncher.command_timeout = 4
c.SlurmLauncher.worker_host = "127.0.0.1"
"""

    def inject(self, kind: str, during: Callable[[], None]) -> dict[str, Any]:
        """SIGKILL slurmctld, ``during()`` while it is down, restart it on its saved state;
        or SIGSTOP it, ``during()`` while it hangs, SIGCONT."""
        h = self.harness
        if kind == "slurmctld-pause":
            stalled = self.rng.uniform(2, 8)
            fault_window(stalled, h.pause_controller, h.resume_controller, during)
            return {"stalled s": round(stalled, 1)}
        if kind != "slurmctld-kill":
            raise ValueError(f"not a Slurm fault kind: {kind}")
        down = self.rng.uniform(0, 5)
        fault_window(down, h.kill_controller, h.start_controller, during)
        return {"down s": round(down, 1)}

    def live(self) -> Seen:
        """Active tasks of this gateway by (cluster, worker); processes of ended ones."""
        done = subprocess.run(
            ["squeue", "--json"],
            env={**os.environ, **self.harness.env},
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        seen = Seen()
        active = set()
        for record in job_records(json.loads(done.stdout), self.gateway_id):
            if not record.active:
                continue
            active.add(record.job_id)
            parsed = parse_comment(record.comment, self.submitter)
            if parsed is None:
                seen.workers.add(("?", f"job {record.job_id} ({record.comment!r})"))
                continue
            cluster, batch = parsed
            names = self._batch_names(cluster, batch)
            worker = names[record.task] if record.task < len(names) else record.job_id
            seen.workers.add((cluster, worker))
        for pid, job in self._job_processes().items():
            if job not in active:
                seen.strays.append(f"pid {pid} of Slurm job {job} (not active)")
        return seen

    def _batch_names(self, cluster: str, batch: str) -> list[str]:
        with contextlib.suppress(OSError):
            return (self.staging / cluster / "batches" / batch).read_text().split()
        return []

    def _job_processes(self) -> dict[int, str]:
        """pid -> "<array job>_<task>" of every process a job of this gateway started."""
        out = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                env = dict(
                    v.split(b"=", 1)
                    for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    if b"=" in v
                )
                if env.get(b"SLURM_JOB_NAME") == self.gateway_id.encode():
                    array = env.get(b"SLURM_ARRAY_JOB_ID", b"?").decode()
                    task = env.get(b"SLURM_ARRAY_TASK_ID", b"?").decode()
                    out[int(pid)] = f"{array}_{task}"
        return out
