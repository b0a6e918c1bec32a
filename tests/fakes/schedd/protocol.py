"""The stand-in's wire: one JSON line per request and one per answer, over a Unix socket.

There is one connection per call, like CEDAR, so clients keep no state and a hung daemon costs
a caller no more than its timeout. Both ends live here so that the encoding is defined once.
Faults (unreachable, hung, slow) are injected at this layer because that is where a real
schedd's outages show; control calls (``ctl.*``) are never affected by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import classad2
import htcondor2

log = logging.getLogger("htcondor_standin")

#: Requests bigger than this are refused (a whole submit is one line).
MAX_REQUEST_BYTES = 64 * 1024 * 1024

#: The requests that stand for ``htcondor2.Schedd`` methods: faults and counters apply to them.
SCHEDD_METHODS = ("submit", "query", "act", "edit")

_ERROR_TYPES: dict[str, type[Exception]] = {
    "ValueError": ValueError,
    "TypeError": TypeError,
    "HTCondorException": htcondor2.HTCondorException,
}

Handler = Callable[[dict[str, Any]], Any]


class RequestError(Exception):
    """An error to send back to the client as an exception of type ``kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StandinUnreachable(Exception):
    """The daemon did not answer (refused, closed the connection, or timed out)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


# --- the client end ------------------------------------------------------------------------------


def request(
    socket_path: str | os.PathLike[str], op: str, args: dict[str, Any], timeout: float
) -> Any:
    """Send one request and wait (at most ``timeout`` seconds) for its answer."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(socket_path))
            sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
            chunks: list[bytes] = []
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
        except TimeoutError as exc:
            raise StandinUnreachable(f"timed out after {timeout:g}s", timed_out=True) from exc
        except OSError as exc:
            raise StandinUnreachable(f"cannot connect: {exc}") from exc
    finally:
        sock.close()
    data = b"".join(chunks)
    if not data.endswith(b"\n"):
        raise StandinUnreachable("connection closed without an answer")
    answer = json.loads(data)
    if answer["ok"]:
        return answer["result"]
    raise _ERROR_TYPES.get(answer["kind"], htcondor2.HTCondorException)(answer["message"])


# --- ads on the wire -----------------------------------------------------------------------------


def ad_texts(ads: Iterable[classad2.ClassAd]) -> list[str]:
    """Serialise ads as new-style ClassAd text (what the client parses with ``parseAds``)."""
    return [str(ad) for ad in ads]


def parse_ad_texts(texts: Iterable[str]) -> list[classad2.ClassAd]:
    """Parse ads sent as text back into real ``classad2.ClassAd`` objects."""
    joined = "".join(texts)
    return list(classad2.parseAds(joined)) if joined.strip() else []


# --- the daemon end ------------------------------------------------------------------------------


class Server:
    """Serves one request per connection: injected faults first, then the handler for ``op``.

    It also keeps the per-method call counters and answers the ``ctl.fault``,
    ``ctl.counters`` and ``ctl.reset_counters`` control requests itself.
    """

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers: dict[str, Handler] = {
            **handlers,
            "ctl.fault": self.set_fault,
            "ctl.counters": lambda a: self.counters,
            "ctl.reset_counters": lambda a: self.reset_counters(),
        }
        self.unavailable_until = 0.0
        self.hang_until = 0.0
        self.hang_process = False
        self.call_latency = 0.0
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero the per-method call counters."""
        self.counters: dict[str, Any] = {
            "submit": 0,
            "query": 0,
            "act": 0,
            "edit": 0,
            "submit_procs": [],
            "refused": {"submit": 0, "query": 0, "act": 0, "edit": 0},
            "hung": {"submit": 0, "query": 0, "act": 0, "edit": 0},
        }

    def set_fault(self, args: dict[str, Any]) -> None:
        """Make the schedd unreachable, hang, or slow for a while (or clear all faults)."""
        kind = args["kind"]
        now = time.time()
        seconds = float(args.get("seconds", 0.0))
        if kind == "unavailable":
            self.unavailable_until = now + seconds
        elif kind == "hang":
            self.hang_until = now + seconds
            self.hang_process = bool(args.get("process_after", False))
        elif kind == "latency":
            self.call_latency = seconds
        elif kind == "clear":
            self.unavailable_until = self.hang_until = self.call_latency = 0.0
        else:
            raise RequestError("ValueError", f"unknown fault {kind!r}")
        log.info("fault %s %.2fs", kind, seconds)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one request: one JSON line in, one JSON line out, then close."""
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=60)
            if not line:
                return
            request = json.loads(line)
            op, args = request["op"], request.get("args", {})
            if not op.startswith("ctl."):
                now = time.time()
                if now < self.unavailable_until:
                    self.counters["refused"][op] = self.counters["refused"].get(op, 0) + 1
                    return  # close without answering: the client sees "cannot connect"
                if now < self.hang_until:
                    self.counters["hung"][op] = self.counters["hung"].get(op, 0) + 1
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(reader.read(1), timeout=self.hang_until - now)
                    if not self.hang_process:
                        return
                if self.call_latency > 0:
                    await asyncio.sleep(self.call_latency)
            try:
                answer: dict[str, Any] = {"ok": True, "result": self.dispatch(op, args)}
            except RequestError as exc:
                answer = {"ok": False, "kind": exc.kind, "message": str(exc)}
            except Exception as exc:  # a stand-in bug must not look like a hang
                log.exception("request %s failed", op)
                answer = {"ok": False, "kind": "HTCondorException", "message": f"standin: {exc!r}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, json.JSONDecodeError, KeyError) as exc:
            log.warning("dropped a request: %r", exc)
        finally:
            writer.close()

    def dispatch(self, op: str, args: dict[str, Any]) -> Any:
        """Route one request to its handler, counting the schedd methods."""
        if op not in self.handlers:
            raise RequestError("HTCondorException", f"unknown request {op!r}")
        if op in SCHEDD_METHODS:
            self.counters[op] += 1
        result = self.handlers[op](args)
        if op == "submit":
            self.counters["submit_procs"].append(result["num_procs"])
        return result
