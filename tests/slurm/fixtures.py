"""The Slurm the tests run against: our own daemons, or a site's when configured.

Against a site's Slurm: set ``ELASTIC_GATEWAY_TEST_SLURM`` to its ``slurm.conf``,
``ELASTIC_GATEWAY_TEST_SLURM_PARTITION`` to a partition whose jobs start,
``ELASTIC_GATEWAY_TEST_SLURM_STAGING`` to a directory the compute nodes share and
``ELASTIC_GATEWAY_TEST_SCHEDULER_ADDRESS`` to the proxy's TLS address as compute
nodes see it; for the slurmrestd variants also ``ELASTIC_GATEWAY_TEST_SLURMRESTD``
(its URL) and ``ELASTIC_GATEWAY_TEST_SLURMRESTD_TOKEN_FILE`` (a JWT), else they
skip. Tests that stop the controller or need the harness's ``small`` and ``parked``
partitions are skipped there.

Import ``slurm_fixture`` into a test module to use the ``slurm`` fixture; the daemons
start once per test session and stop at its end (also when a test fails), whichever
module asked first.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway_backend.launchers.slurm.client import JobRecord, job_records
from gateway_backend.launchers.slurm.script import parse_comment, submitter_id

from .harness import RESTD, SlurmHarness, slurm_installed

SITE_CONF = os.environ.get("ELASTIC_GATEWAY_TEST_SLURM", "")
SITE_RESTD = os.environ.get("ELASTIC_GATEWAY_TEST_SLURMRESTD", "")
SITE_RESTD_TOKEN = os.environ.get("ELASTIC_GATEWAY_TEST_SLURMRESTD_TOKEN_FILE", "")

needs_own_daemons = pytest.mark.skipif(
    bool(SITE_CONF), reason="stops the controller or uses the harness's partitions"
)


@dataclass
class Slurm:
    """What tests need of a Slurm cluster: its config, partitions and a look at its queue."""

    conf: str
    partition: str = ""
    staging: str = ""  # "" -> the test's tmp_path (same machine)
    harness: SlurmHarness | None = None
    env: dict[str, str] = field(default_factory=dict)
    rest_url: str = ""  # slurmrestd's, "" when there is none

    def transport_config(self, transport: str) -> str:
        """Gateway config lines choosing ``transport`` ("cli" or "rest"); skip if unavailable."""
        if transport == "cli":
            return ""
        if not self.rest_url and self.harness is not None:
            pytest.fail("slurmrestd is not installed: `./run test` installs it")
        if not self.rest_url:
            pytest.skip("no slurmrestd: set ELASTIC_GATEWAY_TEST_SLURMRESTD to the site's URL")
        lines = [f"c.SlurmLauncher.slurmrestd_url = {self.rest_url!r}"]
        if SITE_RESTD_TOKEN:
            lines.append(f"c.SlurmLauncher.slurmrestd_token_file = {SITE_RESTD_TOKEN!r}")
        return "\n".join(lines) + "\n"

    def run(self, *argv: str, check: bool = True) -> str:
        env = {**os.environ, "SLURM_CONF": self.conf}
        # Not in the repository: a job without --output writes slurm-<id>.out where it was
        # submitted.
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=30, cwd=tempfile.gettempdir()
        )
        if check and done.returncode:
            raise RuntimeError(f"{argv} failed: {done.stderr.strip()}")
        return done.stdout

    def records(self, gateway_id: str) -> list[JobRecord]:
        """Every array task named ``gateway_id`` (ended ones included, as squeue keeps them)."""
        return job_records(json.loads(self.run("squeue", "--json")), gateway_id)

    def tasks(
        self, gateway_id: str, staging: Path, cluster: str | None = None
    ) -> dict[str, JobRecord]:
        """Active tasks of a gateway (of one cluster), by worker name.

        Names come from the batch files in the gateway's ``staging`` directory; a
        task without one is listed as ``unknown:<job id>``.
        """
        out = {}
        for record in self.records(gateway_id):
            parsed = parse_comment(record.comment, submitter_id(gateway_id, str(staging)))
            if not (record.active and parsed and (cluster is None or parsed[0] == cluster)):
                continue
            batch = staging / parsed[0] / "batches" / parsed[1]
            names = batch.read_text().split() if batch.exists() else []
            key = names[record.task] if record.task < len(names) else f"unknown:{record.job_id}"
            out[key] = record
        return out

    def cancel_all(self, gateway_id: str) -> None:
        self.run("scancel", f"--name={gateway_id}", check=False)


_STARTED: list[Slurm] = []


@pytest.fixture(scope="session", name="slurm")
def slurm_fixture(request) -> Slurm:
    """The session's Slurm (its daemons start at the first test that asks)."""
    if _STARTED:
        return _STARTED[0]
    if SITE_CONF:
        site = Slurm(
            conf=SITE_CONF,
            partition=os.environ.get("ELASTIC_GATEWAY_TEST_SLURM_PARTITION", ""),
            staging=os.environ.get("ELASTIC_GATEWAY_TEST_SLURM_STAGING", ""),
            rest_url=SITE_RESTD,
        )
        _STARTED.append(site)
        return site
    if not slurm_installed():
        pytest.fail("Slurm is not installed: `./run test` installs slurmctld, slurmd and munge")
    harness = SlurmHarness(rest=os.path.exists(RESTD))
    request.addfinalizer(harness.stop)
    harness.start()
    own = Slurm(
        conf=str(harness.conf), partition="debug", harness=harness, rest_url=harness.rest_url
    )
    _STARTED.append(own)
    request.addfinalizer(_STARTED.clear)
    return own
