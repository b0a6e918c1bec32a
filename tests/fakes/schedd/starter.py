"""The starter: runs one job as a local process group, as HTCondor's starter does on a slot.

It makes the scratch dir, transfers inputs, builds the job's environment and starts the
process; when the process ends it kills what the job left behind, transfers outputs and
removes the scratch dir. What an exit means for the job (complete, hold, requeue) is the
queue's business: the starter reports facts and ``StartFailure``s with HTCondor's hold codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import classad2

from .classads import IDLE, RUNNING, int_attr, policy, str_attr
from .config import Config
from .quoting import job_argv_tail, job_environment

log = logging.getLogger("htcondor_standin")


class StartFailure(Exception):
    """Starting a job failed the way a starter/shadow failure puts a job on hold."""

    def __init__(self, code: int, subcode: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason


def killpg(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


JOBSTARTER = Path(__file__).with_name("jobstarter.py")


def process_start_ticks(pid: int) -> int | None:
    """A live process's start time (clock ticks since boot), None when gone or a zombie.

    A pid alone could name a newer process that reused it; the pair (pid, start) cannot.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


@dataclass
class Run:
    """One execution of a job: its starter process (group), scratch dir, slot, stdio files.

    ``process`` is None for a run adopted by a restarted daemon (no longer its child): then
    the starter is watched through /proc, and its exit file says how the job ended.
    """

    pid: int
    start_ticks: int
    scratch: Path
    exit_file: Path
    slot: int
    files: list[IO[bytes]]
    process: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    #: (errno, strerror) when the starter could not execute the job.
    exec_error: tuple[int, str] | None = None
    argv: list[str] | None = None
    host: str | None = None

    def signal(self, sig: signal.Signals) -> None:
        """Signal the job's whole process group."""
        killpg(self.pid, sig)

    def poll(self) -> int | None:
        """The job's wait status (negative: killed by that signal) once it ended, else None."""
        if self.returncode is not None:
            return self.returncode
        if self.process is not None:
            starter_status = self.process.poll()
        else:
            gone = not self.starter_alive()
            starter_status = -signal.SIGKILL if gone else None
        if starter_status is None:
            return None
        try:
            ended = json.loads(self.exit_file.read_text())
            self.returncode = int(ended["returncode"])
        except (OSError, ValueError, KeyError, TypeError):
            self.returncode = starter_status  # killed before it could record the job's end
            return self.returncode
        if ended.get("exec_error"):
            self.exec_error = (int(ended["exec_error"][0]), str(ended["exec_error"][1]))
        return self.returncode

    def record(self) -> dict[str, Any]:
        """What the job queue log keeps, to find this run again after a restart."""
        return {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "scratch": str(self.scratch),
            "exit_file": str(self.exit_file),
            "slot": self.slot,
        }

    def starter_alive(self) -> bool:
        """Whether this run's starter process still runs (the same process, not a reused pid)."""
        return process_start_ticks(self.pid) == self.start_ticks

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Run:
        """The run a job queue log record names (a restarted daemon adopts it, not a child)."""
        return cls(
            pid=int(record["pid"]),
            start_ticks=int(record["start_ticks"]),
            scratch=Path(record["scratch"]),
            exit_file=Path(record["exit_file"]),
            slot=int(record["slot"]),
            files=[],
        )


def _cannot_execute(path: str) -> tuple[int, str] | None:
    """(errno, strerror) execve would fail with for ``path``, as far as it can be told."""
    if not os.path.exists(path):
        return errno.ENOENT, os.strerror(errno.ENOENT)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return errno.EACCES, os.strerror(errno.EACCES)
    return None


def exec_failure(
    ad: classad2.ClassAd, argv: list[str], host: str, code: int, text: str
) -> StartFailure:
    """HTCondor's hold (code 6) for a job that could not be executed."""
    args = " ".join(argv[1:])
    with_args = f" with arguments {args}" if args else ""
    cmd = str_attr(ad, "Cmd")
    return StartFailure(
        6,
        code,
        f"Error from {host}: Failed to execute '{cmd}'{with_args}: (errno={code}: '{text}')",
    )


class Starter:
    """Starts jobs in their own session and cleans up after them (see module docstring)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def start(self, ad: classad2.ClassAd, key: tuple[int, int], slot: int) -> tuple[Run, dict]:
        """Start the job in ``slot``: its Run and the ad updates that say it is running.

        Raises ``StartFailure`` (with files closed and the scratch dir gone) when it cannot.
        """
        cluster, proc = key
        host = f"slot{slot}@{self.cfg.name}"
        starts = int_attr(ad, "NumJobStarts", 0)
        iwd = Path(str_attr(ad, "Iwd", "/"))
        scratch = self.cfg.workdir / "execute" / f"dir_{cluster}.{proc}_{starts + 1}"
        files: list[IO[bytes]] = []
        try:
            if not iwd.is_dir():
                raise StartFailure(
                    14, errno.ENOENT, f"Error from {host}: Failed to access Iwd {iwd}"
                )
            scratch.mkdir(parents=True, exist_ok=True)
            transfer = str_attr(ad, "ShouldTransferFiles", "IF_NEEDED").upper() != "NO"
            if transfer:
                self._transfer_inputs(ad, iwd, scratch, host)
            argv = [self._executable(ad, scratch, transfer, host), *job_argv_tail(ad)]
            env = self._job_env(ad, scratch, iwd, slot)
            stdin = self._open(ad, "In", iwd, "rb", 8, host, files)
            stdout = self._open(ad, "Out", iwd, "wb", 7, host, files)
            same = str_attr(ad, "Err") == str_attr(ad, "Out") and stdout is not None
            stderr = stdout if same else self._open(ad, "Err", iwd, "wb", 7, host, files)
            stdio = (stdin, stdout, stderr)
            now = int(time.time())
            running = {
                "JobStatus": RUNNING,
                "LastJobStatus": IDLE,
                "EnteredCurrentStatus": now,
                "JobCurrentStartDate": now,
                "NumJobStarts": starts + 1,
                "RemoteHost": host,
            }
            if "JobStartDate" not in ad:
                running["JobStartDate"] = now
            job_ad_text = self._job_ad_text(ad, running)
            (scratch / ".job.ad").write_text(job_ad_text)
            (scratch / ".machine.ad").write_text(self._machine_ad(host, slot).printOld())
            exit_file = self.cfg.workdir / "spool" / f"exit_{cluster}.{proc}_{starts + 1}"
            exit_file.parent.mkdir(parents=True, exist_ok=True)
            exit_file.unlink(missing_ok=True)
            cannot = _cannot_execute(argv[0])
            if cannot is not None:
                raise exec_failure(ad, argv, host, *cannot)
            process = self._spawn(
                argv, exit_file, cwd=scratch if transfer else iwd, env=env, stdio=stdio
            )
        except StartFailure:
            for f in files:
                f.close()
            if not self.cfg.keep_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        ticks = process_start_ticks(process.pid)  # the starter lives at least until it execs
        run = Run(process.pid, ticks or 0, scratch, exit_file, slot, files, process=process)
        run.argv, run.host = argv, host
        return run, running

    def _spawn(
        self, argv: list[str], exit_file: Path, cwd: Path, env: dict[str, str], stdio: tuple
    ) -> subprocess.Popen[bytes]:
        """Start the job under its own starter process (``jobstarter.py``), in a new session.

        The starter is what outlives a SIGKILLed daemon. This does not wait for it to start
        the job (a Python start-up per job would stall the daemon's loop); an exec failure
        the check before it could not foresee comes back in its exit file.
        """
        starter = [sys.executable, "-I", "-S", str(JOBSTARTER), str(exit_file)]
        return subprocess.Popen(
            [*starter, "--", *argv],
            cwd=cwd,
            env=env,
            stdin=stdio[0] or subprocess.DEVNULL,
            stdout=stdio[1] or subprocess.DEVNULL,
            stderr=stdio[2] or subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    def exec_failure(self, run: Run, ad: classad2.ClassAd) -> StartFailure | None:
        """The hold for a run whose starter could not execute the job, else None."""
        if run.exec_error is None:
            return None
        host = run.host or f"slot{run.slot}@{self.cfg.name}"
        return exec_failure(ad, run.argv or [str_attr(ad, "Cmd")], host, *run.exec_error)

    def _transfer_inputs(self, ad: classad2.ClassAd, iwd: Path, scratch: Path, host: str) -> None:
        """Copy ``transfer_input_files`` into the scratch dir (code 13 when one is missing)."""
        for entry in [e.strip() for e in str_attr(ad, "TransferInput").split(",") if e.strip()]:
            path = entry[len("file://") :] if entry.startswith("file://") else entry
            if "://" in path:
                raise StartFailure(
                    13, 0, f"Error from {host}: the stand-in cannot transfer URL {entry}"
                )
            src = Path(path) if os.path.isabs(path) else iwd / path
            try:
                if src.is_dir():
                    dest = scratch if path.endswith("/") else scratch / src.name
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copy2(src, scratch / src.name)
                else:
                    raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            except OSError as exc:
                raise StartFailure(
                    13,
                    exc.errno or 0,
                    f"Error from {host}: Transfer input files failure at access point "
                    f"{self.cfg.name} while sending files to execution point {host}. "
                    f"Details: reading from file {src}: (errno {exc.errno}) {exc.strerror}",
                ) from exc

    def _executable(self, ad: classad2.ClassAd, scratch: Path, transfer: bool, host: str) -> str:
        """The path to run: ``Cmd`` itself, or its copy ``condor_exec.exe`` when transferred."""
        cmd = str_attr(ad, "Cmd")
        transfer_exe = policy(ad, "TransferExecutable") if "TransferExecutable" in ad else True
        if not (transfer and transfer_exe):
            return cmd
        dest = scratch / "condor_exec.exe"
        try:
            shutil.copy2(cmd, dest)
        except OSError as exc:
            raise StartFailure(
                13,
                exc.errno or 0,
                f"Error from {host}: Transfer input files failure at access point "
                f"{self.cfg.name} while sending files to execution point {host}. "
                f"Details: reading from file {cmd}: (errno {exc.errno}) {exc.strerror}",
            ) from exc
        dest.chmod(0o755)
        return str(dest)

    def _job_env(self, ad: classad2.ClassAd, scratch: Path, iwd: Path, slot: int) -> dict[str, str]:
        """A minimal base environment + the job's own, never the daemon's whole environment."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(job_environment(ad))
        for name in ("TMPDIR", "TMP", "TEMP"):
            env.setdefault(name, str(scratch))
        env.setdefault("OMP_NUM_THREADS", str(int_attr(ad, "RequestCpus", 1)))
        env.update(
            {
                "_CONDOR_SCRATCH_DIR": str(scratch),
                "_CONDOR_JOB_AD": str(scratch / ".job.ad"),
                "_CONDOR_MACHINE_AD": str(scratch / ".machine.ad"),
                "_CONDOR_JOB_IWD": str(iwd),
                "_CONDOR_SLOT": f"slot{slot}",
                "BATCH_SYSTEM": "HTCondor",
            }
        )
        return env

    def _open(
        self,
        ad: classad2.ClassAd,
        attr: str,
        iwd: Path,
        mode: str,
        code: int,
        host: str,
        files: list[IO[bytes]],
    ) -> IO[bytes] | None:
        name = str_attr(ad, attr, "/dev/null") or "/dev/null"
        if name == "/dev/null":
            return None
        path = Path(name) if os.path.isabs(name) else iwd / name
        try:
            handle: IO[bytes] = open(path, mode)  # closed when the job ends
        except OSError as exc:
            what = "standard input" if attr == "In" else "standard output/error"
            raise StartFailure(
                code,
                exc.errno or 0,
                f"Error from {host}: Failed to open '{path}' as {what}: "
                f"{exc.strerror} (errno {exc.errno})",
            ) from exc
        files.append(handle)
        return handle

    def _job_ad_text(self, ad: classad2.ClassAd, updates: dict[str, Any]) -> str:
        copy = classad2.ClassAd()
        copy.update({k: ad.lookup(k) for k in ad.keys()})
        copy.update(updates)
        return copy.printOld()

    def _machine_ad(self, host: str, slot: int) -> classad2.ClassAd:
        return classad2.ClassAd(
            {
                "MyType": "Machine",
                "Name": host,
                "SlotID": slot,
                "Machine": self.cfg.name,
                "OpSys": "LINUX",
                "Arch": "X86_64",
            }
        )

    def finish(self, run: Run, ad: classad2.ClassAd, transfer_outputs: bool) -> str | None:
        """After the process ended: kill its leftovers, transfer outputs.

        Returns the hold reason when an output file is missing, else None. The scratch dir
        and the exit file stay until ``clean_up``, once the queue has logged the exit: a
        crash in between finds them and records the exit again, never runs the job again.
        """
        run.signal(signal.SIGKILL)  # the job's leftover children, like the starter
        for f in run.files:
            f.close()
        if transfer_outputs:
            return self._transfer_outputs(ad, run.scratch)
        return None

    def clean_up(self, run: Run) -> None:
        """Remove what the run left (its exit file, its scratch dir) after its exit is logged."""
        run.exit_file.unlink(missing_ok=True)
        if not self.cfg.keep_scratch:
            shutil.rmtree(run.scratch, ignore_errors=True)

    def _transfer_outputs(self, ad: classad2.ClassAd, scratch: Path) -> str | None:
        """Copy ``transfer_output_files`` back to Iwd; an error text when one is missing."""
        if str_attr(ad, "ShouldTransferFiles", "IF_NEEDED").upper() == "NO":
            return None
        iwd = Path(str_attr(ad, "Iwd", "/"))
        for entry in [e.strip() for e in str_attr(ad, "TransferOutput").split(",") if e.strip()]:
            src = scratch / entry
            try:
                if src.is_dir():
                    shutil.copytree(src, iwd / src.name, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, iwd / src.name)
            except OSError as exc:
                return (
                    f"Transfer output files failure at access point {self.cfg.name} while "
                    f"receiving files from the execution point. Details: reading from file "
                    f"{src}: (errno {exc.errno}) {exc.strerror}"
                )
        return None

    async def kill_all(self, runs: list[Run]) -> None:
        """Kill every run's process group (TERM, then KILL), bounded in time."""
        for run in runs:
            run.signal(signal.SIGTERM)
            run.signal(signal.SIGCONT)
        for _ in range(int(min(self.cfg.kill_grace, 3.0) / 0.05)):
            if all(r.poll() is not None for r in runs):
                break
            await asyncio.sleep(0.05)
        for run in runs:
            run.signal(signal.SIGKILL)
            if run.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.process.wait(timeout=2)
            else:  # adopted after a restart: not our child, watched through /proc
                for _ in range(40):
                    if not run.starter_alive():
                        break
                    await asyncio.sleep(0.05)
            for f in run.files:
                f.close()
            run.exit_file.unlink(missing_ok=True)
            if not self.cfg.keep_scratch:
                shutil.rmtree(run.scratch, ignore_errors=True)
        log.info("killed %d running jobs at shutdown", len(runs))
