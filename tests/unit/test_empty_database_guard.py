"""A database without any cluster record never removes what the gateway's launchers run."""

from __future__ import annotations

import asyncio

import pytest

from gateway_backend.launchers.base import KnownRecords, Launcher
from gateway_backend.restart import refuse_to_start_empty_over_running
from gateway_backend.state_db import StateDatabaseError

NOTHING = KnownRecords(frozenset(), frozenset())


class Running(Launcher):
    def __init__(self, kind: str, unknown: int) -> None:
        self.kind = kind
        self.unknown = unknown
        self.asked: list[KnownRecords] = []

    async def count_unknown(self, known: KnownRecords) -> int:
        self.asked.append(known)
        return self.unknown


def refuse(launchers, db_url="sqlite:////state/gateway.sqlite"):
    asyncio.run(refuse_to_start_empty_over_running(launchers, NOTHING, db_url))


def test_an_empty_database_over_running_pods_and_jobs_refuses_naming_what_runs():
    with pytest.raises(StateDatabaseError) as err:
        refuse([Running("kubernetes", 3), Running("htcondor", 0), Running("slurm", 2)])
    message = str(err.value)
    assert "/state/gateway.sqlite has no cluster record" in message
    assert "3 kubernetes, 2 slurm" in message
    assert "htcondor" not in message
    assert "Restore the database" in message and "docs/reliability.md" in message


def test_pools_of_one_launcher_kind_are_counted_together():
    with pytest.raises(StateDatabaseError, match="5 htcondor"):
        refuse([Running("htcondor", 2), Running("htcondor", 3)])


def test_an_empty_database_with_nothing_running_starts():
    launchers = [Running("local", 0), Running("kubernetes", 0)]
    refuse(launchers)
    assert all(launcher.asked == [NOTHING] for launcher in launchers)


def test_the_refusal_never_shows_the_database_password():
    with pytest.raises(StateDatabaseError) as err:
        refuse([Running("kubernetes", 1)], "postgresql://gw:s3cret-pw@db.example.org/gateway")
    assert "s3cret-pw" not in str(err.value)
    assert "db.example.org/gateway" in str(err.value)


def test_a_launcher_that_cannot_count_does_not_block_the_start():
    class Plain(Launcher):
        kind = "plain"

    assert asyncio.run(Plain().count_unknown(NOTHING)) == 0  # the base class's answer
    refuse([Plain()])


@pytest.mark.parametrize("db_url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_loses_its_records_by_design_and_is_not_refused(db_url):
    launcher = Running("local", 4)
    refuse([launcher], db_url)
    assert launcher.asked == []  # nothing counted either
