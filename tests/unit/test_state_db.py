"""The state database is checked before serving and a failing disk ends the gateway, not clusters.

Found by benchmarks/chaos.py: a zero-length or deleted database made a restarted gateway
stop every running cluster as unknown ("Removed 3 local resources with no record"); a
corrupted one ended start-up in a SQLAlchemy traceback naming neither the file nor the
fix; a locked one went unnoticed until the gateway's writes waited on it. A full disk
now ends the gateway at once with a message naming the file, leaving clusters and
records as they were for the next start to adopt.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from dask_gateway_server.backends.db_base import DataManager

from gateway_backend.state_db import (
    EXIT_STORAGE_FAILURE,
    StateDatabaseError,
    check_state_database,
    in_memory_sqlite,
    sqlite_file,
)

REPO = Path(__file__).resolve().parents[2]
KEY = "x" * 43 + "="  # a valid Fernet key: 32 bytes, urlsafe base64


def gateway_database(path: Path) -> Path:
    """A database as the gateway leaves it: upstream's tables, one cluster record."""

    async def create() -> None:  # upstream's records hold futures: made on a running loop
        manager = DataManager(url=f"sqlite:///{path}", encrypt_keys=[KEY])
        manager.create_cluster("alice", {}, {})
        manager.db.dispose()

    asyncio.run(create())
    return path


def test_a_healthy_database_passes_and_is_left_byte_for_byte_unchanged(tmp_path):
    db = gateway_database(tmp_path / "gateway.sqlite")
    before = db.read_bytes()
    check_state_database(db, live_cluster_processes=3)
    assert db.read_bytes() == before


def test_a_database_with_a_corrupted_page_is_refused_naming_the_file(tmp_path):
    db = gateway_database(tmp_path / "gateway.sqlite")
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the schema page
    db.write_bytes(bytes(data))
    with pytest.raises(StateDatabaseError, match=f"{db} is corrupted.*docs/reliability.md"):
        check_state_database(db)
    assert db.read_bytes() == bytes(data)  # kept for recovery, not replaced


def test_a_file_that_is_not_a_database_is_refused_naming_the_file(tmp_path):
    db = tmp_path / "gateway.sqlite"
    db.write_bytes(b"not sqlite" * 1000)
    with pytest.raises(StateDatabaseError, match=f"{db} is corrupted"):
        check_state_database(db)


def test_a_sqlite_file_without_the_gateways_tables_is_refused(tmp_path):
    db = tmp_path / "gateway.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(StateDatabaseError, match="no 'clusters' table"):
        check_state_database(db)


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_database_is_refused_while_cluster_processes_run(tmp_path, state):
    db = tmp_path / "gateway.sqlite"
    if state == "empty":
        db.write_bytes(b"")
    with pytest.raises(StateDatabaseError, match=f"{db} is {state}, but 2 cluster processes"):
        check_state_database(db, live_cluster_processes=2)


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_a_missing_or_empty_database_is_a_fresh_start_when_nothing_runs(tmp_path, state):
    db = tmp_path / "gateway.sqlite"
    if state == "empty":
        db.write_bytes(b"")
    check_state_database(db, live_cluster_processes=0)


@pytest.mark.parametrize("journal", ["delete", "wal"])  # WAL: the gateway's own mode
def test_a_database_locked_by_another_writer_is_refused_after_the_wait(tmp_path, journal):
    db = gateway_database(tmp_path / "gateway.sqlite")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute(f"PRAGMA journal_mode={journal}")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateDatabaseError, match=f"{db} stayed locked .* for 0.2s"):
            check_state_database(db, lock_timeout=0.2)
    finally:
        holder.rollback()
        holder.close()


def test_a_lock_released_within_the_wait_is_waited_for(tmp_path):
    db = gateway_database(tmp_path / "gateway.sqlite")
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.3, holder.rollback)
    release.start()
    try:
        check_state_database(db, lock_timeout=10)
    finally:
        release.join()
        holder.close()


def test_only_sqlite_files_are_checked():
    assert sqlite_file("sqlite:////var/lib/gw/gateway.sqlite") == Path("/var/lib/gw/gateway.sqlite")
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://gw@db/gateway") is None


@pytest.mark.parametrize(
    "url, in_memory",
    [
        ("sqlite:///:memory:", True),
        ("sqlite://", True),
        ("sqlite:///file:records?mode=memory&uri=true", True),
        ("sqlite:////var/lib/gw/memory.sqlite", False),  # a file that only has it in its name
        ("sqlite:////tmp/:memory:/gateway.sqlite", False),
        ("postgresql://gw@db/gateway", False),
    ],
)
def test_only_in_memory_sqlite_loses_its_records_by_design(url, in_memory):
    assert in_memory_sqlite(url) is in_memory


def test_a_full_disk_during_a_write_ends_the_process_naming_the_file_and_keeps_the_records(
    tmp_path,
):
    db = gateway_database(tmp_path / "gateway.sqlite")
    # SQLite reports a database at its max_page_count as "database or disk is full",
    # exactly as it reports a full file system.
    script = textwrap.dedent(
        f"""
        import sqlalchemy as sa
        from gateway_backend.sqlite_tuning import tune_sqlite
        engine = sa.create_engine("sqlite:///{db}")
        tune_sqlite(engine, "NORMAL")
        with engine.begin() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        big = "x" * 100_000
        for _ in range(100):
            with engine.begin() as conn:
                conn.exec_driver_sql(f"PRAGMA max_page_count = {{pages + 5}}")
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS filler (x)")
                conn.exec_driver_sql("INSERT INTO filler VALUES (?)", (big,))
        print("never full")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == EXIT_STORAGE_FAILURE, proc.stdout + proc.stderr
    assert f"the state database {db} failed (database or disk is full)" in proc.stderr
    assert "leaves every cluster running" in proc.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT username FROM clusters").fetchall() == [("alice",)]
