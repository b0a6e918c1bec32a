"""Unit tests of the HTCondor submit description: what a job ad will and will not contain."""

from __future__ import annotations

from types import SimpleNamespace

import htcondor2
import pytest
from dask_gateway_server.utils import FrozenAttrDict

from gateway_backend.launchers.htcondor import HTCondorLauncher, _arguments, _environment
from gateway_backend.quotas import VO

KEY = b"-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"


def cluster():
    config = FrozenAttrDict(
        {
            "worker_cmd": ["dask", "worker"],
            "worker_cores": 4,
            "worker_threads": 4,
            "worker_memory": 8 * 2**30,
            "worker_gpus": 1,
            "environment": {"ANALYSIS": "ttbar"},
        }
    )
    return SimpleNamespace(
        name="c0ffee",
        username="alice",
        token="api-token-value",
        config=config,
        tls_cert=b"CERT",
        tls_key=KEY,
        options={"vo": "cms"},
    )


@pytest.fixture
def launcher(tmp_path):
    backend = SimpleNamespace(vo_of=lambda c: VO("cms", accounting_group="group_cms"))
    launcher = HTCondorLauncher(
        scheduler_address="tls://gateway.example.org:443",
        staging_directory=str(tmp_path),
        gateway_id="gw-test",
    )
    launcher.backend = backend
    return launcher


def description(launcher, **traits):
    for k, v in traits.items():
        setattr(launcher, k, v)
    return launcher.submit_description(cluster(), "/stage/dask.crt", "/stage/dask.pem")


def test_resources_come_from_the_cluster_options(launcher):
    desc = description(launcher)
    resources = (desc["request_cpus"], desc["request_memory"], desc["request_gpus"])
    assert resources == ("4", "8192", "1")


def test_jobs_are_tagged_and_carry_a_lease(launcher):
    desc = description(launcher)
    assert desc["+DaskGatewayInstance"] == '"gw-test"'
    assert desc["+DaskGatewayCluster"] == '"c0ffee"'
    assert desc["+DaskGatewayWorker"] == '"$(worker_name)"'
    assert "time() > DaskGatewayLeaseExpires" in desc["periodic_remove"]


def test_the_vo_accounting_group_and_the_owner_are_charged(launcher):
    desc = description(launcher)
    assert (desc["accounting_group"], desc["accounting_group_user"]) == ("group_cms", "alice")
    assert "accounting_group" not in description(launcher, use_accounting_group=False)


def test_workers_dial_the_proxy_with_the_cluster_sni_and_no_nanny(launcher):
    args = description(launcher)["arguments"]
    assert "tls://gateway.example.org:443" in args
    assert "--scheduler-sni daskgateway-c0ffee" in args
    assert "--no-nanny" in args and "--name $(worker_name)" in args


def test_credentials_travel_as_encrypted_files_never_inline(launcher):
    desc = description(launcher)
    assert desc["transfer_input_files"] == "/stage/dask.crt,/stage/dask.pem"
    assert desc["encrypt_input_files"] == "dask.crt,dask.pem"
    text = str(htcondor2.Submit(desc))
    assert "SECRETKEYBYTES" not in text and "api-token-value" not in text
    assert "DASK_GATEWAY_API_TOKEN" not in text


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("container", {"universe": "container", "container_image": "docker://coffea:1"}),
        ("apptainer", {"+SingularityImage": '"docker://coffea:1"', "universe": "vanilla"}),
    ],
)
def test_container_modes(launcher, mode, expected):
    desc = description(launcher, container_mode=mode, container_image="docker://coffea:1")
    assert {k: desc[k] for k in expected} == expected


def test_site_policy_commands_are_added_verbatim(launcher):
    desc = description(launcher, extra_submit={"requirements": "OpSysMajorVer == 9"})
    assert desc["requirements"] == "OpSysMajorVer == 9"


def test_staged_credentials_are_private(launcher, tmp_path):
    _, key = launcher._stage_credentials(cluster())
    assert (tmp_path / "c0ffee").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "c0ffee" / "dask.pem").stat().st_mode & 0o777 == 0o600
    assert open(key, "rb").read() == KEY


def test_new_style_quoting_of_arguments_and_environment():
    expected_args = '"' + "'a b' 'it''s' 'say \"\"x\"\"'" + '"'
    assert _arguments(["a b", "it's", 'say "x"']) == expected_args
    assert _environment({"A": "1", "B": "x y"}) == "\"A=1 B='x y'\""


def test_a_staging_directory_with_a_comma_is_refused_naming_the_key(tmp_path):
    # transfer_input_files is comma-separated: such a path would hold every job.
    from traitlets import TraitError

    with pytest.raises(TraitError, match=r"HTCondorLauncher\.staging_directory .* comma"):
        HTCondorLauncher(staging_directory=str(tmp_path / "a,b"))
