"""Commits to a SQLite database file without an fsync each.

Upstream's database layer commits every state change on the event loop; on a
SQLite file in its default rollback-journal mode each commit waits for the
disk (10-20 ms on a busy machine, longer on network storage), and with dozens
of clusters starting, scaling and heartbeating those waits add up to event-loop
stalls. In write-ahead-log mode with ``synchronous = NORMAL`` a commit is a
write to the log, synced at checkpoints: a crash of the gateway loses nothing,
a power loss may lose the last transactions but never corrupts the database,
and the gateway reconciles its records with what runs when it starts again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .state_db import exit_on_storage_failure

SYNCHRONOUS = ("FULL", "NORMAL", "OFF")


def tune_sqlite(engine: sa.engine.Engine, synchronous: str) -> bool:
    """Put a SQLite *file* database in WAL mode with ``synchronous``; True if it is one.

    Other databases (PostgreSQL, in-memory SQLite) are left as they are. A statement the
    file or disk refuses (full, corrupted) ends the process: see ``state_db``.
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return False
    if synchronous.upper() not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
    level = synchronous.upper()

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={level}")
        cursor.close()

    sa.event.listen(engine, "connect", on_connect)
    exit_on_storage_failure(engine)  # a full disk ends the gateway, not the clusters
    engine.dispose()  # pooled connections reconnect with the pragmas
    return True
