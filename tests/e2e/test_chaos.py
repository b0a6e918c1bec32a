"""The chaos benchmark, short and with a fixed seed: every fault kind, no invariant broken.

``benchmarks/chaos.py`` runs a real gateway, a schedd stand-in and three users' clusters,
injects faults and checks after each that nothing is orphaned, no record is a ghost,
VO usage equals what runs, no limit is exceeded, results are right and every request got
an answer or a clear refusal. The full run (100 faults) and its table are in
docs/reliability.md; this one keeps the property in the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.chaos import KINDS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SEED = 3
FAULTS = len(KINDS)  # each kind once


@pytest.mark.timeout(420)
@pytest.mark.skipif(
    os.geteuid() != 0, reason="disk-full mounts a small tmpfs, network-stall uses iptables"
)
def test_a_fixed_seed_chaos_run_breaks_no_invariant(tmp_path):
    out = tmp_path / "chaos.json"
    args = ["--faults", str(FAULTS), "--seed", str(SEED), "--max-minutes", "6", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    summary = json.loads(out.read_text())
    results = summary["results"]
    assert len(results) == FAULTS, report
    assert {r["kind"] for r in results} == set(KINDS)
    for key in ("orphans", "ghosts", "quota_mismatch", "overshoot", "wrong_results"):
        assert [r[key] for r in results if r[key]] == [], report
    assert summary["violations"] == [], report
    # The workload really ran: clusters started, scaled and computed on, not just refused.
    assert summary["requests"]["ok"] >= 10, report
    assert summary["computed"] >= 1, report
