"""A one-node Slurm cluster on loopback, started and stopped by the tests themselves.

Debian's ``munged``, ``slurmctld`` and ``slurmd`` run as the test's user (root here)
from a private temporary directory: a fresh munge key (0600, in a 0700 directory),
a ``slurm.conf`` with ``SlurmctldHost=<host>(127.0.0.1)`` and free ports, state and
spool directories inside it. Every wait is bounded and every started daemon is
stopped by ``stop()``, also when the start failed half way.

The node has ``gpus`` (at most 4) pretend GPUs (``gres.conf`` naming ``/dev/null``
and the like). Partitions: ``debug`` (the default, every CPU), ``small`` (at most ``small_cpus``
CPUs in use, so further jobs pend with reason ``Resources``) and ``parked`` (state
DOWN: jobs queue and stay pending with reason ``PartitionDown``, nothing runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
RESTD = "/usr/sbin/slurmrestd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_installed() -> bool:
    return all(os.path.exists(f"/usr/sbin/{d}") for d in DAEMONS)


class SlurmHarness:
    """Own daemons in ``root`` (a private temporary directory); ``env`` for the CLI."""

    def __init__(
        self,
        cpus: int = 6,
        small_cpus: int = 2,
        memory_mb: int = 64000,
        gpus: int = 2,
        rest: bool = False,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="eg-slurm-"))
        os.chmod(self.root, 0o700)
        self.cpus, self.small_cpus, self.memory_mb, self.gpus = cpus, small_cpus, memory_mb, gpus
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        # slurmrestd (rest_auth/local) on a Unix socket only the test's user can reach.
        self.rest = rest
        self.rest_socket = self.root / "slurmrestd.socket"

    @property
    def rest_url(self) -> str:
        return f"unix://{self.rest_socket}" if self.rest else ""

    # -- configuration ------------------------------------------------------------------
    def _write_config(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o700)
        key = munge / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(1024))
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(mode=0o700)
        r = self.root
        lines = [
            "ClusterName=egtest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MaxArraySize=1001",
            "MinJobAge=60",
            "KillWait=5",
            "MessageTimeout=5",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "GresTypes=gpu",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=small Nodes={self.host} MaxCPUsPerNode={self.small_cpus} State=UP",
            f"PartitionName=parked Nodes={self.host} State=DOWN",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # Pretend GPUs (character devices every machine has): jobs asking --gres=gpu:n
        # queue for them, nothing uses them.
        devices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random"][: self.gpus]
        gres = "".join(f"Name=gpu File={d}\n" for d in devices)
        (self.root / "gres.conf").write_text("AutoDetect=off\n" + gres)

    @property
    def env(self) -> dict[str, str]:
        """Environment of Slurm commands talking to these daemons."""
        return {"SLURM_CONF": str(self.conf), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    # -- daemons --------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env, **(env or {})},
            start_new_session=True,
        )
        log.close()

    def start(self, timeout: float = 30) -> SlurmHarness:
        try:
            self._write_config()
            m = self.root / "munge"
            self._spawn(
                "munged",
                [
                    "munged",
                    "--foreground",
                    "--force",
                    f"--socket={self.munge_socket}",
                    f"--key-file={m / 'munge.key'}",
                    f"--pid-file={m / 'munged.pid'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}",
                    f"--seed-file={m / 'munged.seed'}",
                ],
            )
            self._wait(lambda: self.munge_socket.exists(), timeout, "munged's socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait(self._controller_answers, timeout, "slurmctld to answer")
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
            self._wait(self._node_idle, timeout, "the node to be idle")
            if self.rest:
                self._start_rest(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_rest(self, timeout: float) -> None:
        """slurmrestd on a Unix socket (rest_auth/local: the socket's peer is the user).

        It refuses to run as root or as SlurmUser, both root here:
        ``SLURMRESTD_SECURITY=disable_user_check`` lets the tests' root run it; a site
        runs it as an unprivileged user.
        """
        socket_arg = f"unix:{self.rest_socket}"
        argv = [RESTD, "-f", str(self.conf), "-a", "rest_auth/local", "-s", "openapi/v0.0.38"]
        env = {"SLURMRESTD_SECURITY": "disable_user_check"}
        self._spawn("slurmrestd", [*argv, socket_arg], env)
        self._wait(self.rest_socket.exists, timeout, "slurmrestd's socket")
        os.chmod(self.rest_socket, 0o600)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}); {self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}; {self.logs()}")

    def logs(self) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*")):
            tail = path.read_text(errors="replace")[-1500:]
            out.append(f"--- {path.name}:\n{tail}")
        return "\n".join(out)

    def run(self, *argv: str, timeout: float = 15, check: bool = True) -> str:
        """A Slurm command against these daemons; its stdout."""
        env = {**os.environ, **self.env}
        # In the harness's directory: a job without --output writes slurm-<id>.out to the
        # submitter's working directory, never into the repository.
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if check and done.returncode:
            raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def rest_requests(self, request: str) -> int:
        """How many ``request`` lines (``POST /slurm/v0.0.38/job/submit``) slurmrestd logged."""
        path = self.root / "log" / "slurmrestd.stdout"
        return path.read_text(errors="replace").count(f"] {request}") if path.exists() else 0

    def _controller_answers(self) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return "UP" in self.run("scontrol", "ping", timeout=5, check=False)
        return False

    def _node_idle(self) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
            state = self.run("sinfo", "-h", "-n", self.host, "-o", "%T", timeout=5)
            return "idle" in state or "mixed" in state or "allocated" in state
        return False

    def pause_controller(self) -> None:
        """slurmctld stops answering (SIGSTOP): connections hang as in a real outage."""
        self.procs["slurmctld"].send_signal(signal.SIGSTOP)

    def resume_controller(self) -> None:
        self.procs["slurmctld"].send_signal(signal.SIGCONT)

    def kill_controller(self) -> None:
        """SIGKILL slurmctld (a crash): what it had not saved in StateSaveLocation is lost."""
        ctld = self.procs["slurmctld"]
        ctld.kill()
        ctld.wait(10)

    def start_controller(self, timeout: float = 30) -> None:
        """Start slurmctld again on the same StateSaveLocation: it recovers its jobs there."""
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(self._controller_answers, timeout, "the restarted slurmctld to answer")

    def stop(self) -> None:
        """Stop every job and daemon started here, then remove the directory.

        Jobs first (``scancel``, bounded wait): slurmd leaves running jobs behind when
        it stops. Whatever still runs with this harness's ``SLURM_CONF`` after the
        daemons stopped (job steps, their processes) is killed.
        """
        ctld = self.procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            ctld.send_signal(signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
                self.run("scancel", f"--user={os.getuid()}", timeout=10, check=False)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self._queued():
                    time.sleep(0.3)
        for name in ("slurmrestd", *reversed(DAEMONS)):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in self._job_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(self.root)], check=False)

    def _queued(self) -> bool:
        """Whether slurmctld still lists a job that is not finished."""
        return bool(self.run("squeue", "--noheader", "--format=%i", timeout=5, check=False).strip())

    def _job_processes(self) -> list[int]:
        """Processes (job steps and what they run) with this harness's ``SLURM_CONF``."""
        marker = f"SLURM_CONF={self.conf}".encode()
        daemons = {proc.pid for proc in self.procs.values()}
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in daemons or int(pid) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(pid))
        return found


def squeue_json(env: dict[str, str]) -> list[dict]:
    """Every job slurmctld lists, as ``squeue --json`` returns them."""
    done = subprocess.run(
        ["squeue", "--json"], env={**os.environ, **env}, capture_output=True, text=True, timeout=15
    )
    return json.loads(done.stdout)["jobs"]
