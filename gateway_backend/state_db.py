"""The state database must be readable before the gateway acts on it, and writable while it runs.

A restarted gateway stops every process it has no record of (``remove_unknown``), so a
database it cannot read properly is worse than none: opened as empty (a zero-length
file, a deleted one) it would stop every running cluster; corrupted or locked, upstream
fails with a traceback that names neither the file nor what to do. Before serving, the
file is checked read-only; while serving, a write the disk refuses (full, I/O error,
corrupted page) ends the gateway at once, as a crash would: the clusters keep running
and their records stay as last committed, for the next start to adopt. A graceful stop
would instead try to stop every cluster through the very database that just failed.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

RECOVERY = "see 'Recovering the state database' in docs/reliability.md"
# What SQLite says when the file or the disk under it fails, not when a query is wrong.
STORAGE_FAILURES = (
    "database or disk is full",
    "disk i/o error",
    "database disk image is malformed",
    "file is not a database",
    "attempt to write a readonly database",
    "unable to open database file",
)
EXIT_STORAGE_FAILURE = 75  # EX_TEMPFAIL: fix the storage, start again


class StateDatabaseError(Exception):
    """The state database cannot be used as it is; the message names the file and the fix."""


def sqlite_file(db_url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for other databases and in-memory SQLite."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def in_memory_sqlite(db_url: str) -> bool:
    """True for an in-memory SQLite URL, whose records every restart loses by design."""
    url = sa.engine.make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return False
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def check_state_database(
    path: Path, live_cluster_processes: int = 0, lock_timeout: float = 10.0
) -> None:
    """Refuse to serve from a database that is corrupted, locked, or empty under live clusters.

    ``live_cluster_processes``: processes running in the clusters' directories, which a
    gateway without their records would stop. Reads only; never changes the file.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        if live_cluster_processes:
            what = "missing" if not path.exists() else "empty"
            raise StateDatabaseError(
                f"the state database {path} is {what}, but {live_cluster_processes} cluster "
                "processes still run from this state directory: starting would stop them as "
                f"unknown. Restore the database from a copy, or stop those processes; {RECOVERY}"
            )
        return
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=lock_timeout)
    except sqlite3.Error as err:
        raise _unusable(path, "cannot be opened", err) from None
    try:
        try:
            result = conn.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.OperationalError as err:
            if "locked" in str(err):
                raise _locked(path, lock_timeout) from None
            raise _unusable(path, "is unreadable", err) from None
        except sqlite3.DatabaseError as err:
            raise StateDatabaseError(
                f"the state database {path} is corrupted ({err}); {RECOVERY}"
            ) from None
        if result != [("ok",)]:
            problems = "; ".join(r[0] for r in result[:3])
            raise StateDatabaseError(
                f"the state database {path} is corrupted ({problems}); {RECOVERY}"
            )
        if "clusters" not in tables:
            raise StateDatabaseError(
                f"the state database {path} has no 'clusters' table: it is not a gateway "
                f"database; {RECOVERY}"
            )
        try:  # the gateway writes as soon as it starts: a writer elsewhere blocks it
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                raise _locked(path, lock_timeout) from None
            raise _unusable(path, "is not writable", err) from None
    finally:
        conn.close()


def _unusable(path: Path, what: str, err: Exception) -> StateDatabaseError:
    return StateDatabaseError(f"the state database {path} {what} ({err}); {RECOVERY}")


def _locked(path: Path, waited: float) -> StateDatabaseError:
    return StateDatabaseError(
        f"the state database {path} stayed locked by another process for {waited:g}s (a "
        "backup, an open sqlite3 shell?); end that process, then start the gateway again"
    )


def is_storage_failure(exc: BaseException) -> bool:
    """True for SQLite errors that come from the file or disk, not from the statement."""
    return isinstance(exc, sqlite3.DatabaseError) and any(
        s in str(exc).lower() for s in STORAGE_FAILURES
    )


def exit_on_storage_failure(engine: sa.engine.Engine) -> None:
    """End the process, clusters left running, when the database file or disk fails a statement.

    The message goes straight to stderr: logging may be configured to write to the full disk.
    """
    path = engine.url.database

    def on_error(context: Any) -> None:
        exc = context.original_exception
        if not is_storage_failure(exc):
            return
        try:
            sys.stderr.write(
                f"elastic-gateway: CRITICAL: the state database {path} failed ({exc}). The "
                "gateway stops now and leaves every cluster running; their records stay as "
                "last written. Free space or fix the disk, then start the gateway again: it "
                f"adopts them; {RECOVERY}\n"
            )
            sys.stderr.flush()
        except OSError:
            pass
        os._exit(EXIT_STORAGE_FAILURE)

    sa.event.listen(engine, "handle_error", on_error)
