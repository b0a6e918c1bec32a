"""The gateway's store of schedulers' and workers' logs: bounded, private, scrubbed."""

from __future__ import annotations

import os
import stat

import pytest

from gateway_backend.log_store import LogStore, scrub

CLUSTER = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def make_store(tmp_path, per_process=1000, per_cluster=10_000, keep_for=60.0) -> LogStore:
    return LogStore(str(tmp_path / "logs"), per_process, per_cluster, keep_for)


def lines(n: int, width: int = 9) -> str:
    return "\n".join(f"{i:0{width}d}" for i in range(n))  # 10 bytes a line with its newline


def test_a_saved_log_reads_back_by_process_name(tmp_path):
    store = make_store(tmp_path)
    store.save(CLUSTER, "alice", {"scheduler": "started", "w1": "working"})
    assert store.read(CLUSTER) == {"scheduler": "started", "w1": "working"}
    assert store.read(CLUSTER, worker="w1") == {"w1": "working"}
    assert store.owner(CLUSTER) == "alice"


def test_tail_keeps_the_last_lines(tmp_path):
    store = make_store(tmp_path)
    store.save(CLUSTER, "alice", {"w1": "a\nb\nc"})
    assert store.read(CLUSTER, tail=2) == {"w1": "b\nc"}
    assert store.read(CLUSTER, tail=0) == {"w1": ""}


def test_each_process_keeps_only_its_newest_bytes_up_to_the_cap(tmp_path):
    store = make_store(tmp_path, per_process=1000)
    store.save(CLUSTER, "alice", {"w1": lines(500)})
    kept = store.read(CLUSTER)["w1"]
    assert len(kept.encode()) <= 1000
    assert kept.endswith("000000499") and kept.startswith("0000004")  # whole lines, newest


def test_a_cluster_over_its_cap_keeps_an_equal_share_of_each_process(tmp_path):
    store = make_store(tmp_path, per_process=5000, per_cluster=4000)
    store.save(CLUSTER, "alice", {f"w{i}": lines(400) for i in range(4)})
    kept = store.read(CLUSTER)
    assert sorted(kept) == ["w0", "w1", "w2", "w3"]
    assert sum(len(t.encode()) for t in kept.values()) <= 4000
    assert all(t.endswith("000000399") for t in kept.values())


def test_files_and_directories_are_private(tmp_path):
    store = make_store(tmp_path)
    store.save(CLUSTER, "alice", {"w1": "x"})
    root = tmp_path / "logs"
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / CLUSTER).st_mode) == 0o700
    for entry in os.scandir(root / CLUSTER):
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name


def test_logs_of_a_stopped_cluster_are_pruned_after_the_retention_time(tmp_path):
    store = make_store(tmp_path, keep_for=60)
    store.save(CLUSTER, "alice", {"w1": "x"})
    store.save(OTHER, "bob", {"w1": "y"})
    store.stopped(CLUSTER, now=1000.0)

    assert store.prune(now=1059.0) == 0
    assert store.prune(now=1060.0) == 1
    assert store.read(CLUSTER) == {} and store.owner(CLUSTER) is None
    assert store.read(OTHER) == {"w1": "y"}  # still running: never pruned


def test_hostile_process_and_cluster_names_are_not_paths(tmp_path):
    store = make_store(tmp_path)
    store.save(CLUSTER, "alice", {"../../etc/passwd": "x", ".meta": "y", "w1": "z"})
    assert store.read(CLUSTER) == {"w1": "z"}
    with pytest.raises(ValueError, match="not a cluster name"):
        store.save("../elsewhere", "alice", {"w1": "x"})


def test_the_cluster_token_and_key_never_reach_the_store(tmp_path):
    store = make_store(tmp_path)
    token = "s3cr3t-cluster-token-value"
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"
    store.save(CLUSTER, "alice", {"scheduler": f"env token is {token}\n{key}\nready"}, [token])
    text = store.read(CLUSTER)["scheduler"]
    assert token not in text and "MIIEvQIBADANBg" not in text
    assert text.endswith("ready")


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: token abcdefghijklmnop",
        "headers={'Authorization': 'Bearer abcdefghijklmnop'}",
        "DASK_GATEWAY_API_TOKEN=abcdefghijklmnop",
        "password: abcdefghijklmnop",
        "client_secret='abcdefghijklmnop'",
    ],
)
def test_credential_looking_assignments_are_scrubbed(line):
    assert "abcdefghijklmnop" not in scrub(line)
    assert "[redacted]" in scrub(line)


def test_ordinary_log_lines_are_left_alone():
    line = "distributed.worker - INFO - Starting Worker tokenizer at tls://127.0.0.1:40001"
    assert scrub(line) == line


def test_scrubbing_a_hostile_megabyte_line_takes_linear_time():
    import time

    start = time.monotonic()
    scrub("a" * 1_000_000 + "\n" + "-----BEGIN PRIVATE KEY-----\n" * 20_000)
    assert time.monotonic() - start < 2
