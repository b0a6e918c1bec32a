"""A SQLite database file commits without an fsync each (issue 16)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from gateway_backend.sqlite_tuning import tune_sqlite


def pragmas(engine: sa.engine.Engine) -> tuple[str, int]:
    with engine.connect() as connection:
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        level = connection.exec_driver_sql("PRAGMA synchronous").scalar()
    return mode, level


def test_a_database_file_runs_in_wal_mode_with_the_chosen_synchronous(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert tune_sqlite(engine, "normal")
    assert pragmas(engine) == ("wal", 1)  # NORMAL


def test_full_keeps_a_sync_per_commit(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    tune_sqlite(engine, "FULL")
    assert pragmas(engine) == ("wal", 2)


def test_an_in_memory_database_is_left_alone():
    engine = sa.create_engine("sqlite:///:memory:")
    assert not tune_sqlite(engine, "NORMAL")
    assert pragmas(engine)[0] == "memory"


def test_an_unknown_level_is_refused(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(ValueError, match="synchronous must be one of"):
        tune_sqlite(engine, "sometimes")
