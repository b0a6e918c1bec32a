"""Unit tests of the HTCondor submit description: what a job ad will and will not contain.

Quoting is checked the way a schedd sees it: the description goes through the real
``htcondor2.Submit`` (text, then macro expansion) into a job ad, built by the schedd
stand-in's ``expand_submit`` without starting its daemon, and the job's arguments and
environment are read back from that ad.
"""

from __future__ import annotations

import random
import re
from types import SimpleNamespace

import classad2
import htcondor2
import pytest
from dask_gateway_server.utils import FrozenAttrDict
from traitlets import TraitError

from gateway_backend.cluster_config import ElasticClusterConfig
from gateway_backend.config import ConfigError
from gateway_backend.launchers.base import ClusterFacts, LauncherUnavailable
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.htcondor_quoting import (
    UnsafeValue,
    arguments_value,
    check_accounting_user,
    classad_string,
    constraint_string,
    environment_value,
    submit_literal,
)
from tests.fakes.schedd.client import _submit_text
from tests.fakes.schedd.jobads import SubmitContext, expand_submit
from tests.fakes.schedd.quoting import job_argv_tail, job_environment
from tests.support_launchers import known, launcher_context

KEY = b"-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"
CMS = ClusterFacts(vo="cms", accounting_group="group_cms")


def cluster(username="alice", environment=None, worker_cmd=("dask", "worker")):
    config = FrozenAttrDict(
        {
            "worker_cmd": list(worker_cmd),
            "worker_cores": 4,
            "worker_threads": 4,
            "worker_memory": 8 * 2**30,
            "worker_gpus": 1,
            "environment": {"ANALYSIS": "ttbar"} if environment is None else environment,
        }
    )
    return SimpleNamespace(
        name="c0ffee",
        username=username,
        token="api-token-value",
        config=config,
        tls_cert=b"CERT",
        tls_key=KEY,
        options={"vo": "cms"},
    )


@pytest.fixture
def launcher(tmp_path):
    return HTCondorLauncher(
        scheduler_address="tls://gateway.example.org:443",
        staging_directory=str(tmp_path),
        gateway_id="gw-test",
    )


def description(launcher, cluster_=None, facts=CMS, **traits):
    for k, v in traits.items():
        setattr(launcher, k, v)
    return launcher.submit_description(
        cluster_ or cluster(), "/stage/dask.crt", "/stage/dask.pem", facts
    )


def job_ad(desc: dict[str, str], tmp_path, worker: str = "w0") -> classad2.ClassAd:
    """The job ad a schedd makes of ``desc`` (text as ``Schedd.submit`` writes it)."""
    text = _submit_text(htcondor2.Submit(desc), iter([{"worker_name": worker}]), None, 0)
    ctx = SubmitContext(cluster_id=1, qdate=0, owner="gateway", submit_cwd=str(tmp_path))
    [ad] = expand_submit(text, ctx).ads
    return ad


def minimal(**commands: str) -> dict[str, str]:
    return {"executable": "/bin/true", **commands}


#: What hostile users put in names and options: every one must reach the job exactly.
HOSTILE = [
    "a\tLD_PRELOAD=evil.so",
    "it's",
    "''",
    "'",
    'say "hi"',
    '"',
    "$(transfer_input_files)",
    "$ENV(HOME)",
    "$RANDOM_INTEGER(1,9)",
    "$",
    "a$b$",
    "$(DOLLAR",
    "a=b",
    "x; rm -rf ~ && echo pwned",
    "back\\slash\\",
    "ünïcødé ✓ 日本",
    "",
    "  spaced  ",
    "#not a comment",
    "queue 100",
]


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


def test_the_vo_accounting_group_and_the_owner_are_charged(launcher, tmp_path):
    ad = job_ad(description(launcher), tmp_path)
    assert (ad["AcctGroup"], ad["AcctGroupUser"]) == ("group_cms", "alice")
    assert ad["AccountingGroup"] == "group_cms.alice"
    assert "accounting_group" not in description(launcher, use_accounting_group=False)
    assert "accounting_group" not in description(launcher, facts=ClusterFacts(vo="cms"))


def test_workers_dial_the_proxy_with_the_cluster_sni(launcher):
    args = description(launcher)["arguments"]
    assert "tls://gateway.example.org:443" in args
    assert "--scheduler-sni daskgateway-c0ffee" in args
    assert "--name $(worker_name)" in args


def test_the_nanny_reaches_the_scheduler_by_the_proxy_sni_too(launcher, tmp_path):
    argv = job_argv_tail(job_ad(description(launcher), tmp_path))
    code = argv[argv.index("--preload-nanny") + 1]
    assert "--no-nanny" not in argv
    namespace: dict = {}
    exec(code, namespace)  # the preload distributed runs in the Nanny
    nanny = SimpleNamespace(connection_args={"ssl_context": "ctx"})
    namespace["dask_setup"](nanny)
    assert nanny.connection_args == {"ssl_context": "ctx", "server_hostname": "daskgateway-c0ffee"}


def test_without_a_nanny_workers_say_so(launcher):
    assert "--no-nanny" in description(launcher, nanny=False)["arguments"]


def test_a_profile_image_replaces_the_pool_image(launcher):
    profiled = cluster()
    profiled.config = FrozenAttrDict(
        {**profiled.config, "image": "/cvmfs/unpacked.cern.ch/coffea:2025", "profile": "coffea"}
    )
    desc = description(launcher, cluster_=profiled, container_image="docker://pool:1")
    assert desc["+SingularityImage"] == '"/cvmfs/unpacked.cern.ch/coffea:2025"'


def test_a_pool_without_containers_refuses_a_profile_image(launcher):
    profiled = cluster()
    profiled.config = FrozenAttrDict({**profiled.config, "image": "img:1", "profile": "coffea"})
    with pytest.raises(UnsafeValue, match="container_mode = 'none'"):
        description(launcher, cluster_=profiled, container_mode="none")


def test_gpu_workers_request_gpus_and_advertise_the_dask_resource(launcher):
    desc = description(launcher)
    assert desc["request_gpus"] == "1"
    assert "--resources GPU=1" in desc["arguments"]


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


def test_new_style_quoting_doubles_quotes_and_single_quotes_words_with_spaces():
    expected_args = '"' + "'a b' 'it''s' say\"\"x\"\" ''" + '"'
    assert arguments_value(["a b", "it's", 'say"x"', ""]) == expected_args
    assert environment_value({"A": "1", "B": "x\ty"}) == "\"A=1 B='x\ty'\""


@pytest.mark.parametrize("value", HOSTILE)
def test_an_argument_reaches_the_job_ad_byte_for_byte(value, tmp_path):
    ad = job_ad(minimal(arguments=arguments_value(["first", value, "last"])), tmp_path)
    assert job_argv_tail(ad) == ["first", value, "last"]


@pytest.mark.parametrize("value", HOSTILE)
def test_an_environment_value_reaches_the_job_ad_byte_for_byte(value, tmp_path):
    env = {"FIRST": "1", "HOSTILE": value, "LAST": "2"}
    ad = job_ad(minimal(environment=environment_value(env)), tmp_path)
    assert job_environment(ad) == env


def test_dollar_escaping_agrees_with_the_real_expander_on_random_text():
    # The submit language has corner cases ($(DOLLAR) is re-expanded, $$ is left for
    # match time): whatever submit_literal accepts must expand back exactly.
    pieces = ["$", "$$", "(", ")", "DOLLAR", "dollar", "ENV", "secret", ":", " ", "x", "'"]
    rng = random.Random(11)
    accepted = 0
    for _ in range(1500):
        value = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        try:
            text = submit_literal(value, "value")
        except UnsafeValue:
            assert re.search(r"\$\$|\$\(dollar\)", value, re.IGNORECASE)
            continue
        accepted += 1
        submit = htcondor2.Submit({"secret": "SECRET", "k": f"<{text}>"})
        assert submit.expand("k") == f"<{value}>"
    assert accepted > 500


def test_the_worker_name_is_the_only_macro_left_in_the_arguments(launcher, tmp_path):
    hostile = cluster(worker_cmd=["dask", "worker", "$(worker_name)", "$(Cluster)"])
    ad = job_ad(description(launcher, hostile), tmp_path, worker="w7")
    argv = job_argv_tail(ad)
    assert argv[:4] == ["dask", "worker", "$(worker_name)", "$(Cluster)"]
    assert argv[argv.index("--name") + 1] == "w7"


def test_a_hostile_cluster_environment_reaches_workers_exactly(launcher, tmp_path):
    env = {f"V{i}": v for i, v in enumerate(HOSTILE)}
    ad = job_ad(description(launcher, cluster(environment=env)), tmp_path)
    got = job_environment(ad)
    assert {k: got[k] for k in env} == env
    assert "TransferInput" in ad and ad["TransferInput"] == "/stage/dask.crt, /stage/dask.pem"


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x0b", "\x1f", "\x7f", "\u2028"])
def test_line_breaks_and_control_characters_are_refused(char):
    with pytest.raises(UnsafeValue, match="control character"):
        arguments_value([f"a{char}transfer_input_files = /etc/passwd"])
    with pytest.raises(UnsafeValue, match=r"environment variable X .*control character"):
        environment_value({"X": f"a{char}b"})


@pytest.mark.parametrize("value", ["$$(Memory)", "a$$b", "$(DOLLAR)", "$(dollar)x"])
def test_dollar_sequences_htcondor_cannot_pass_literally_are_refused(value):
    with pytest.raises(UnsafeValue, match="cannot pass on literally"):
        arguments_value([value])


@pytest.mark.parametrize("name", ["", "1X", "A B", "A=B", "X$(Y)", "É"])
def test_environment_names_outside_letters_digits_underscore_are_refused(name):
    with pytest.raises(UnsafeValue, match="environment variable name"):
        environment_value({name: "v"})


@pytest.mark.parametrize("value", [*HOSTILE, "a\nb", 'x" || true || "'])
def test_classad_strings_survive_submit_and_constraints_exactly(value, tmp_path):
    ad = job_ad(minimal(**{"+Hostile": classad_string(value)}), tmp_path)
    assert ad["Hostile"] == value
    assert classad2.ExprTree(f"Hostile == {constraint_string(value)}").eval(ad) is True


def test_a_hostile_gateway_id_and_image_stay_inside_their_attributes(launcher, tmp_path):
    gateway_id = 'gw" || true || "$(transfer_input_files)'
    desc = description(
        launcher, gateway_id=gateway_id, container_mode="apptainer", container_image="a$b"
    )
    ad = job_ad(desc, tmp_path)
    assert (ad["DaskGatewayInstance"], ad["SingularityImage"]) == (gateway_id, "a$b")
    assert classad2.ExprTree(launcher._instance_constraint("c0ffee")).eval(ad) is True


NASTY_NAMES = [
    "mallory\ntransfer_input_files = $(transfer_input_files),/state/secrets.json\n"
    "accounting_group = group_admin",
    "$(transfer_input_files)",
    "$ENV(HOME)",
    'mal"lory',
    "mal lory",
    "sub.alice",
    "alice@example.org",
    "ünï",
    "x" * 65,
    "",
]


@pytest.mark.parametrize("name", NASTY_NAMES)
def test_user_names_outside_the_accounting_pattern_are_refused_naming_the_setting(launcher, name):
    with pytest.raises(UnsafeValue, match=r"HTCondorLauncher\.accounting_user_pattern"):
        description(launcher, cluster(username=name))


@pytest.mark.parametrize("name", ["alice", "a_l-1", "_svc", "x" * 64])
def test_plain_user_names_are_charged_as_they_are(launcher, name, tmp_path):
    ad = job_ad(description(launcher, cluster(username=name)), tmp_path)
    assert ad["AccountingGroup"] == f"group_cms.{name}"


def test_a_widened_pattern_admits_email_names_but_never_whitespace_or_dollar():
    wide = re.compile(r".+")
    assert check_accounting_user("alice@example.org", wide) == "alice@example.org"
    for name in ["a b", "a\nb", "a$b", "ünï"]:
        with pytest.raises(UnsafeValue):
            check_accounting_user(name, wide)


def test_user_names_are_not_checked_when_no_accounting_group_is_set(launcher):
    desc = description(launcher, cluster(username="mal lory"), use_accounting_group=False)
    assert "accounting_group_user" not in desc


def test_cluster_creation_is_refused_for_a_name_that_would_inject(launcher):
    name = NASTY_NAMES[0]
    config = ElasticClusterConfig()
    with pytest.raises(UnsafeValue, match=r"the user name 'mallory\\ntransfer_input_files"):
        launcher.check_cluster_request(name, {"vo": "cms"}, config, CMS)
    launcher.check_cluster_request("alice", {"vo": "cms"}, config, CMS)  # accepted
    launcher.check_cluster_request(name, {}, config, ClusterFacts())  # nobody is charged


def test_cluster_creation_is_refused_for_an_environment_option_with_a_newline(launcher):
    config = ElasticClusterConfig(environment={"X": "1\nrequirements = true"})
    with pytest.raises(UnsafeValue, match="environment variable X"):
        launcher.check_cluster_request("alice", {"vo": "cms"}, config, CMS)


@pytest.mark.parametrize(
    ("trait", "value", "key"),
    [
        ("environment", {"A": "1\n+Evil = true"}, "HTCondorLauncher.environment"),
        ("environment", {"A B": "1"}, "HTCondorLauncher.environment"),
        ("worker_extra_args", ["--x", "$$(Cpus)"], "HTCondorLauncher.worker_extra_args"),
        ("container_image", "img\nqueue 9", "HTCondorLauncher.container_image"),
        ("accounting_user_pattern", "[a-", "HTCondorLauncher.accounting_user_pattern"),
    ],
)
def test_unsafe_admin_settings_are_refused_at_startup_naming_the_key(trait, value, key):
    with pytest.raises(TraitError, match=re.escape(key)):
        HTCondorLauncher(**{trait: value})


def test_a_staging_directory_with_a_comma_is_refused_naming_the_key(tmp_path):
    # transfer_input_files is comma-separated: such a path would hold every job.
    from traitlets import TraitError

    with pytest.raises(TraitError, match=r"HTCondorLauncher\.staging_directory .* comma"):
        HTCondorLauncher(staging_directory=str(tmp_path / "a,b"))


def test_staging_replaces_the_files_whole(launcher, tmp_path):
    # A job starting meanwhile transfers the old file or the new one, never a part.
    launcher._stage_credentials(cluster())
    before = (tmp_path / "c0ffee" / "dask.pem").stat().st_ino
    launcher._stage_credentials(cluster())
    assert (tmp_path / "c0ffee" / "dask.pem").stat().st_ino != before
    names = sorted(p.name for p in (tmp_path / "c0ffee").iterdir())
    assert names == ["dask.crt", "dask.pem", "logs"]


def test_the_default_scheduler_address_is_the_proxys_tls_address(tmp_path):
    launcher = HTCondorLauncher(staging_directory=str(tmp_path))
    launcher.context = launcher_context(launcher, proxy_tls_address="127.0.0.1:8786")
    assert launcher.scheduler_address == "tls://127.0.0.1:8786"


class FakeSchedd:
    """The three schedd calls ``refresh`` makes, on a fixed queue."""

    def __init__(self, workers):
        self.ads = [
            {"ClusterId": 7, "ProcId": i, "JobStatus": 1, "DaskGatewayWorker": w}
            for i, w in enumerate(workers)
        ]
        self.removed = []

    def query(self, constraint, projection):
        return self.ads

    def edit(self, constraint, attr, value):
        pass

    def act(self, action, spec, reason):
        self.removed.append(spec)


async def test_jobs_without_a_record_are_removed_after_a_restart_and_each_period(tmp_path):
    schedd = FakeSchedd(["kept", "lost", "gone"])
    launcher = HTCondorLauncher(
        schedd_factory=lambda: schedd, staging_directory=str(tmp_path), status_period=3600
    )
    await launcher.setup(launcher_context(launcher, records=known(["c"], ["kept", "lost"])))
    try:
        # After a restart, against the records the backend read then.
        assert await launcher.remove_unknown(known(["c"], ["kept"])) == 2
        assert schedd.removed == [["7.1", "7.2"]]
        # Each period, against the gateway's records at that time.
        schedd.removed.clear()
        assert await launcher.refresh() == 1
        assert schedd.removed == [["7.2"]]
    finally:
        await launcher.cleanup()


async def test_an_empty_database_counts_the_queued_jobs_without_a_record_and_removes_none(
    tmp_path,
):
    schedd = FakeSchedd(["kept", "lost", "gone"])
    launcher = HTCondorLauncher(
        schedd_factory=lambda: schedd, staging_directory=str(tmp_path), status_period=3600
    )
    await launcher.setup(launcher_context(launcher, records=known(["c"], ["kept"])))
    try:
        assert await launcher.count_unknown(known(["c"], ["kept"])) == 2
        assert schedd.removed == []
    finally:
        await launcher.cleanup()


async def test_a_failed_status_update_backs_off_and_recovers(tmp_path):
    launcher = HTCondorLauncher(staging_directory=str(tmp_path), status_period=5)
    await launcher.setup(launcher_context(launcher))
    await launcher.cleanup()  # stops the periodic task: the steps are driven by hand here
    outcomes = [LauncherUnavailable("schedd down"), LauncherUnavailable("still down"), None]

    async def refresh():
        outcome = outcomes.pop(0)
        if outcome:
            raise outcome

    launcher.refresh = refresh
    delays = []
    for _ in range(3):
        await launcher._status_step()
        delays.append(launcher._status_delay)
    assert delays == [10, 20, 5]


async def test_pools_with_different_token_directories_are_refused(tmp_path, monkeypatch):
    # HTCondor's SEC_TOKEN_DIRECTORY is one setting per process, not per pool.
    monkeypatch.setattr(htcondor2, "param", {})
    first = HTCondorLauncher(staging_directory=str(tmp_path), idtoken_directory="/tokens/a")
    await first.setup(launcher_context(first, name="cpu"))
    try:
        same = HTCondorLauncher(staging_directory=str(tmp_path), idtoken_directory="/tokens/a")
        await same.setup(launcher_context(same, name="gpu"))
        await same.cleanup()
        other = HTCondorLauncher(staging_directory=str(tmp_path), idtoken_directory="/tokens/b")
        with pytest.raises(ConfigError, match=r"HTCondor launchers 'cpu' and 'gpu' set different"):
            await other.setup(launcher_context(other, name="gpu"))
        assert htcondor2.param["SEC_TOKEN_DIRECTORY"] == "/tokens/a"
    finally:
        await first.cleanup()
