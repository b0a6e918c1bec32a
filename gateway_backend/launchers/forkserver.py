"""A pre-imported process that forks local Dask schedulers and workers.

Starting ``dask worker`` costs an interpreter start and the import of
distributed, twice with a nanny (the nanny spawns its worker). On a laptop or
login node that cost dominates scale-up. The fork server imports distributed
once; each worker is a ``fork`` of it that sets its own session, directory,
log and environment and runs distributed's own ``dask worker`` entry point.
With ``DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=fork`` in a worker's
request environment, its nanny forks the worker too.

Protocol: one JSON request per line on stdin (``{"program": "worker" |
"scheduler" | "exec", "argv": [...], "env": {...}, "cwd": str, "log": str}``), one
JSON answer per line on stdout (``{"pid": int}`` or ``{"error": str}``). ``exec``
runs ``argv`` as a new program (a custom ``worker_cmd``). The server exits when
stdin closes (the gateway went away); the workers, in their own sessions, keep
running.

With ``LocalLauncher.run_as = "user"`` each OS user gets a server of their own,
started *as that user* (uid, gid and groups set before the interpreter starts):
nothing forked from it ever held root, and its memory only ever held requests for
that user's clusters (a scheduler's request carries its API token).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

# Log file of each child still running: its exit status is written next to it.
_LOGS: dict[int, str] = {}
EXIT_SUFFIX = ".exit"


def _reap(signum, frame) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        log = _LOGS.pop(pid, None)
        if log is not None:
            _write_exit_status(log + EXIT_SUFFIX, status)


def _write_exit_status(path: str, status: int) -> None:
    """``{"code": n}`` or ``{"signal": n}``: only the parent learns how a child ended,
    and the gateway's status check reads it here for the reason it reports."""
    if os.WIFSIGNALED(status):
        text = json.dumps({"signal": os.WTERMSIG(status)})
    else:
        text = json.dumps({"code": os.waitstatus_to_exitcode(status)})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


PROGRAMS = {
    "worker": ("distributed.cli.dask_worker", "dask worker"),
    "scheduler": ("distributed.cli.dask_scheduler", "dask scheduler"),
}


def _run(request: dict[str, Any]) -> None:
    """In the forked child: become the program described by ``request``; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the nanny waits for its own child
        os.setsid()
        # The working directory is the process's marker (a restarted gateway finds its
        # workers by it), so it is set first thing.
        os.makedirs(request["cwd"], mode=0o700, exist_ok=True)
        os.chdir(request["cwd"])
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        log = os.open(request["log"], flags, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("program") == "exec":
            os.execvpe(request["argv"][0], request["argv"], request["env"])
        import dask.config

        dask.config.refresh()  # TLS paths and the like come from this worker's environment
        import importlib

        module, prog = PROGRAMS[request.get("program", "worker")]
        main = importlib.import_module(module).main
        sys.argv = [prog, *request["argv"]]
        main(args=request["argv"], prog_name=prog, standalone_mode=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def serve(preload: bool = True) -> None:
    """The server loop (``python -m gateway_backend.launchers.forkserver [--no-preload]``)."""
    if preload:  # the point: import once, before forking
        import dask_gateway.scheduler_preload  # noqa: F401
        import distributed.cli.dask_scheduler
        import distributed.cli.dask_worker  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        # SIGCHLD waits until the child's log is noted, so no exit goes unrecorded.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            request = json.loads(line)
            pid = os.fork()
        except Exception as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            out.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            out.flush()
            continue
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _run(request)
        if isinstance(request.get("log"), str):
            _LOGS[pid] = request["log"]
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()


class ForkServer:
    """The gateway's handle on a fork server process.

    ``user`` (``{"uid", "gid", "groups"}``) starts the server as that OS user, with
    umask 077 and its stderr drained into ``log`` instead of sharing the gateway's.
    """

    def __init__(
        self,
        env: dict[str, str],
        user: dict[str, Any] | None = None,
        preload: bool = True,
        log: Any = None,
    ) -> None:
        self.env = env
        self.user = user
        self.preload = preload
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._drain: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the server now (it takes an import of distributed), not at the first fork."""
        async with self._lock:
            await self._ensure_started()

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc
        argv = [sys.executable, "-m", "gateway_backend.launchers.forkserver"]
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {
                "user": self.user["uid"],
                "group": self.user["gid"],
                "extra_groups": list(self.user["groups"]),
                "umask": 0o077,
                "cwd": "/",
                "stderr": asyncio.subprocess.PIPE,
            }
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            *([] if self.preload else ["--no-preload"]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            start_new_session=True,
            **kwargs,
        )
        if self.user is not None:
            self._drain = asyncio.ensure_future(self._drain_stderr(self.proc))
        ready = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not ready:
            raise RuntimeError("the worker fork server exited while starting")
        return self.proc

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Forward what the server itself prints (not its children: they have logs)."""
        async for line in proc.stderr:
            if self.log is not None:
                self.log.warning("fork server %d: %s", proc.pid, line.decode(errors="replace"))

    async def spawn_many(self, requests: list[dict[str, Any]]) -> list[int]:
        """Fork one process per request, all in one exchange; returns their pids in order."""
        async with self._lock:
            proc = await self._ensure_started()
            proc.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
            await proc.stdin.drain()
            pids = []
            for _ in requests:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                if not line:
                    raise RuntimeError("the worker fork server exited")
                answer = json.loads(line)
                if "error" in answer:
                    raise RuntimeError(f"fork server: {answer['error']}")
                pids.append(answer["pid"])
            return pids

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)


if __name__ == "__main__":
    serve(preload="--no-preload" not in sys.argv[1:])
