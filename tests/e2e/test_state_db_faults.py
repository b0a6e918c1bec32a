"""A damaged state database or a full disk never costs a running cluster (found by chaos.py).

Each test: a real gateway with a cluster and a worker, then the fault, then the gateway
must refuse or stop with a message naming the database file, the cluster's processes
must run on untouched, and after the documented recovery the restarted gateway adopts
the cluster with its worker.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess

import pytest

from ..conftest import process_groups, wait_for, workers_of

pytestmark = pytest.mark.e2e


def cluster_with_a_worker(gateways, gateway):
    gw = gateways.client(gateway)
    cluster = gw.new_cluster(shutdown_on_close=False)
    cluster.scale(1)
    wait_for(lambda: workers_of(cluster) == 1, what="1 worker")
    name = cluster.name
    cluster.close()
    gw.close()
    return name


def start_refused(gateway) -> str:
    with pytest.raises(RuntimeError, match="gateway exited with code 3") as refused:
        gateway.start(timeout=60)
    return str(refused.value)


def adopted(gateways, gateway, name: str) -> None:
    """The restarted gateway has the cluster, its worker, and can stop it cleanly."""
    gw = gateways.client(gateway)
    try:
        cluster = gw.connect(name)
        wait_for(lambda: workers_of(cluster) == 1, what="the adopted worker")
        cluster.shutdown()
        wait_for(lambda: not gateway.leftover_processes(), what="the cluster to stop")
    finally:
        gw.close()


def test_an_emptied_database_is_refused_and_the_running_cluster_is_left_alone(gateways):
    gateway = gateways.start()
    name = cluster_with_a_worker(gateways, gateway)
    db = gateway.state_dir / "gateway.sqlite"
    gateway.kill()
    groups = process_groups(gateway)
    saved = {p.name: p.read_bytes() for p in gateway.state_dir.glob("gateway.sqlite*")}
    db.write_bytes(b"")  # a stray `> gateway.sqlite`, a restore gone wrong
    for extra in gateway.state_dir.glob("gateway.sqlite-*"):
        extra.unlink()

    message = start_refused(gateway)
    assert re.search(f"the state database {db} is empty, but [0-9]+ cluster processes", message)
    assert process_groups(gateway) == groups  # before the fix: all stopped as unknown

    for file_name, data in saved.items():  # the recovery: put the copy back
        (gateway.state_dir / file_name).write_bytes(data)
    gateway.start()
    adopted(gateways, gateway, name)


def test_a_corrupted_database_is_refused_naming_the_file_and_restored_from_a_copy(gateways):
    gateway = gateways.start()
    name = cluster_with_a_worker(gateways, gateway)
    db = gateway.state_dir / "gateway.sqlite"
    gateway.kill()
    with sqlite3.connect(db) as conn:  # the log holds no second copy of the damaged page
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = db.with_name("gateway.sqlite.copy")
    shutil.copy2(db, copy)
    with open(db, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 3996)  # the schema page
    groups = process_groups(gateway)

    message = start_refused(gateway)
    assert f"the state database {db} is corrupted" in message
    assert "docs/reliability.md" in message
    assert process_groups(gateway) == groups

    os.replace(copy, db)
    gateway.start()
    adopted(gateways, gateway, name)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a 64 MB tmpfs as the state directory")
def test_a_full_disk_stops_the_gateway_naming_the_file_and_leaves_the_cluster_running(
    gateways, tmp_path
):
    state = tmp_path / "gw0"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(state)], check=True)
    try:
        gateway = gateways.start(log_path=tmp_path / "gw0.log")
        name = cluster_with_a_worker(gateways, gateway)
        groups = process_groups(gateway)
        filler = state / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
        gw = gateways.client(gateway)
        try:
            gw.connect(name).scale(3)  # a write; the gateway may end before it answers
        except Exception:  # what matters is how the gateway ends
            pass
        finally:
            gw.close()
        assert gateway.proc.wait(30) == 75
        log = gateway.log_tail(20)
        db = state / "gateway.sqlite"
        assert f"the state database {db} failed (database or disk is full)" in log
        assert "leaves every cluster running" in log
        assert process_groups(gateway) == groups

        filler.unlink()  # the recovery: free space, start again
        gateway.start()
        adopted(gateways, gateway, name)
    finally:
        gateways.teardown()
        subprocess.run(["umount", "-l", str(state)], check=False)
