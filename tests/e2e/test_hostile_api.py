"""The HTTP API played by a hostile user: real gateway, real proxy, attacker's inputs.

Each test is a finding of the security review (docs/security.md) that must stay
closed: every answer is a 4xx with a message or a success, never a 5xx; one
user's requests cannot grow another's view, a pool's cap, the metrics or the log.
"""

from __future__ import annotations

import base64
import json
import random
import urllib.error
import urllib.request

import pytest

from ..conftest import http, wait_for, workers_of
from .test_quotas import GROUPS_AUTH as QUOTA_USERS
from .test_quotas import SIZES

pytestmark = pytest.mark.e2e

# Users with groups (root is an admin), sharing one OS account, small schedulers.
GROUPS_AUTH = QUOTA_USERS + SIZES

METRICS = "/api/elastic/v1/metrics"
METRICS_TOKEN = "scrape-me-8f1c"


def raw(gateway, method: str, path: str, data: bytes | None = None, headers=None, user="alice"):
    """One request with exactly these bytes; returns (status, body text)."""
    creds = gateway.client_credentials()
    token = base64.b64encode(f"{user}:{creds['password']}".encode()).decode()
    all_headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    all_headers.update(headers or {})
    req = urllib.request.Request(gateway.address + path, method=method, data=data)
    for key, value in all_headers.items():
        if value is not None:
            req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def create(gateway, options, user="alice") -> tuple[int, dict]:
    return http(gateway, "POST", "/api/v1/clusters/", {"cluster_options": options}, user)


def test_metrics_need_an_admin_or_the_scrape_token(gateways):
    gateway = gateways.start(
        GROUPS_AUTH
        + 'c.ElasticBackend.vos = {"cms": {"groups": ["cms"], "max_cores": 10}}\n'
        + f"c.ElasticBackend.metrics_api_token = {METRICS_TOKEN!r}\n"
    )
    status, _ = raw(gateway, "GET", METRICS, headers={"Authorization": None})
    assert status == 401
    status, body = raw(gateway, "GET", METRICS, user="alice")
    assert status == 403 and "metrics_api_token" in json.loads(body)["error"]
    wrong = {"Authorization": "Bearer not-the-token"}
    assert raw(gateway, "GET", METRICS, headers=wrong)[0] == 401
    status, body = raw(gateway, "GET", METRICS, user="root")
    assert status == 200 and 'elastic_gateway_vo_limit{resource="cores",vo="cms"}' in body
    right = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    status, body = raw(gateway, "GET", METRICS, headers=right)
    assert status == 200 and "elastic_gateway_pool_workers" in body


def test_refusals_for_made_up_vos_neither_grow_the_metrics_nor_break_them(gateways):
    gateway = gateways.start(GROUPS_AUTH + 'c.ElasticBackend.vos = {"cms": {"groups": ["cms"]}}\n')
    log_before = gateway.log_path.stat().st_size
    # 40 distinct 100 kB VO names, then a lone surrogate (JSON allows "\\ud800").
    for i in range(40):
        status, body = create(gateway, {"vo": f"{i}" + "x" * 100_000})
        assert status == 422 and "does not exist" in body["error"]
        assert len(body["error"]) < 1000
    surrogate = b'{"cluster_options": {"vo": "\\ud800"}}'
    status, body = raw(gateway, "POST", "/api/v1/clusters/", surrogate)
    assert status == 422 and "\\ud800" in json.loads(body)["error"]
    status, text = raw(gateway, "GET", METRICS, user="root")
    assert status == 200
    assert 'elastic_gateway_quota_refusals_total{kind="membership",vo="(unknown)"} 41.0' in text
    assert len(text) < 20_000
    assert gateway.log_path.stat().st_size - log_before < 200_000


def test_a_pool_named_three_times_still_has_one_cap(gateways):
    gateway = gateways.start(
        'c.ElasticBackend.worker_pools = {"a": {"max_workers": 2}, "b": {"max_workers": 0}}\n'
    )
    gw = gateways.client(gateway)
    try:
        cluster = gw.new_cluster(worker_pools="a,a, a,a")
        cluster.scale(6)
        wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
        assert gw.cluster_details(cluster.name)["options"]["worker_pools"] == "a"
        wait_for(
            lambda: gw.cluster_details(cluster.name)["pools"]["a"]["running"] == 2,
            what="2 running workers recorded in pool a",
        )
        wait_for(
            lambda: any(
                "wait for room" in e["message"] for e in gw.cluster_details(cluster.name)["events"]
            ),
            what="the event saying the rest waits for room",
        )
        assert workers_of(cluster) == 2
        cluster.shutdown()
    finally:
        gw.close()


@pytest.mark.parametrize(
    "path",
    [
        "/api/elastic/v1/clusters/%0a",
        "/api/elastic/v1/clusters/%0d%0aSet-Cookie:%20x=y",
        "/api/v1/clusters/%0a",
        "/api/v1/clusters/" + "a" * 5000,
    ],
)
def test_malformed_cluster_names_answer_404_not_500(gateway, path):
    status, body = raw(gateway, "GET", path, user=gateway.client_credentials()["username"])
    assert status == 404, body
    assert json.loads(body)["error"] == "Cluster not found"


def test_an_overflowing_number_is_refused_with_a_message(gateway):
    user = gateway.client_credentials()["username"]
    body = b'{"cluster_options": {"worker_memory": 1' + b"0" * 400 + b"}}"
    status, text = raw(gateway, "POST", "/api/v1/clusters/", body, user=user)
    assert status == 422
    message = json.loads(text)["error"]
    assert "worker_memory=" in message and "is not valid: use a number from" in message
    assert len(message) < 1000


def test_a_user_without_vo_may_name_the_fallback_vo(gateways):
    gateway = gateways.start(
        GROUPS_AUTH
        + 'c.ElasticBackend.vos = {"cms": {"groups": ["cms"]}, "guests": {"groups": []}}\n'
        + 'c.ElasticBackend.users_without_vo = "guests"\n'
    )
    status, body = create(gateway, {"vo": "guests"}, user="eve")
    assert status == 201, body
    details = http(gateway, "GET", f"/api/elastic/v1/clusters/{body['name']}", username="eve")
    assert details[1]["options"]["vo"] == "guests"
    status, body = create(gateway, {"vo": "cms"}, user="eve")
    assert status == 422 and "eve is not a member of VO 'cms'" in body["error"]
    http(gateway, "DELETE", f"/api/v1/clusters/{details[1]['name']}", username="eve")


HOSTILE_STRINGS = [
    "",
    "\n",
    "a\nb = c",
    "$(DOLLAR)$ENV(HOME)",
    "'\"`;&|<>",
    "../../etc/passwd",
    "\x00",
    "\ud800",
    "é" * 3000,
    "x" * 300_000,
]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return rng.choice(HOSTILE_STRINGS)
    if kind == 1:
        return rng.choice([0, -1, 2**63, 10**400, 1.5, float("inf")])
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(20)))
    if kind in (4, 5):
        return rng.choice(["cms", "a,a,a", "local", " , ,", "local,,local"])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(HOSTILE_STRINGS[:7]): random_value(rng, depth + 1)}


def encode(value) -> bytes:
    """JSON the way an attacker writes it: surrogates and huge numbers included."""
    text = json.dumps(value, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")


def test_bounded_fuzzing_of_the_api_gets_no_5xx_and_leaves_state_consistent(gateways):
    gateway = gateways.start(
        GROUPS_AUTH
        + 'c.ElasticBackend.vos = {"cms": {"groups": ["cms"], "max_clusters_per_user": 2}}\n'
        + 'c.ElasticBackend.worker_pools = {"local": {"max_workers": 2}, "spare": {}}\n'
    )
    rng = random.Random(20261201)
    fields = ["vo", "worker_pools", "worker_cores", "worker_memory", "nonsense"]
    seen: dict[int, int] = {}
    created = []
    status, body = create(gateway, {})
    assert status == 201
    mine = body["name"]
    for _ in range(200):
        target = rng.randrange(8)
        if target < 3:
            options = {rng.choice(fields): random_value(rng) for _ in range(rng.randrange(4))}
            body = {"cluster_options": options} if target else random_value(rng)
            status, text = raw(gateway, "POST", "/api/v1/clusters/", encode(body))
            if status == 201:
                created.append(json.loads(text)["name"])
                http(gateway, "DELETE", f"/api/v1/clusters/{created[-1]}", username="alice")
        elif target == 3:
            name = rng.choice([*HOSTILE_STRINGS[1:7], "f" * 32])
            path = "/api/elastic/v1/clusters/" + urllib.request.quote(name, safe="")
            status, text = raw(gateway, "GET", path)
        elif target in (6, 7):
            op, key = ("scale", "count") if target == 6 else ("adapt", "maximum")
            body = {key: random_value(rng)} if rng.random() < 0.7 else random_value(rng)
            status, text = raw(gateway, "POST", f"/api/v1/clusters/{mine}/{op}", encode(body))
        elif target == 4:
            status, text = raw(gateway, "GET", "/api/elastic/v1/quota", b"garbage")
        else:
            status, text = raw(gateway, "GET", METRICS, user=rng.choice(["alice", "root"]))
        assert status < 500, (status, text[:500])
        seen[status] = seen.get(status, 0) + 1
    assert seen.get(422, 0) > 20  # the fuzzing reached the option checks
    # Still serving the cluster that was fuzzed, then nothing half-made is left.
    assert http(gateway, "POST", f"/api/v1/clusters/{mine}/scale", {"count": 1}, "alice")[0] == 200
    assert http(gateway, "GET", f"/api/v1/clusters/{mine}", username="alice")[0] == 200
    http(gateway, "DELETE", f"/api/v1/clusters/{mine}", username="alice")
    wait_for(
        lambda: not http(gateway, "GET", "/api/v1/clusters/", username="alice")[1],
        what="no cluster of alice left running",
    )
    assert (
        http(gateway, "GET", "/api/elastic/v1/quota", username="alice")[1]["vos"]["cms"]["usage"][
            "clusters"
        ]
        == 0
    )


@pytest.mark.parametrize(
    "name",
    ["mallory\n[I 2026-12-01 EmbeddedGateway] FORGED", "\x1b[31mred", "tab\there", "x" * 300],
)
def test_user_names_no_language_can_carry_are_refused_with_403(gateway, name):
    password = gateway.client_credentials()["password"]
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    status, body = raw(
        gateway, "POST", "/api/v1/clusters/", b"{}", {"Authorization": f"Basic {token}"}
    )
    assert status == 403
    assert "ask the administrators for another name" in json.loads(body)["error"]
    lines = gateway.log_path.read_text().splitlines()
    assert not [line for line in lines if line.startswith("[I 2026-12-01 EmbeddedGateway] FORGED")]


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode("m\u00e9:pw".encode()).decode(),
        "token",
    ],
)
def test_malformed_authorization_headers_answer_401(gateway, header):
    status, body = raw(gateway, "GET", "/api/v1/clusters/", headers={"Authorization": header})
    assert status == 401, body
    assert json.loads(body)["error"]


def secrets_of(gateway) -> dict[str, str]:
    """Every secret of the gateway, by name: what must appear nowhere a user can look."""
    stored = json.loads((gateway.state_dir / "secrets.json").read_text())
    return {key: value for key, value in stored.items() if isinstance(value, str)}


def test_no_secret_in_argv_environments_logs_or_world_readable_files(gw, gateway):
    cluster = gw.new_cluster()
    try:
        cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
        found = dict(secrets_of(gateway))
        key = cluster.security.tls_key
        found["cluster TLS key"] = key.decode() if isinstance(key, bytes) else key
        procs = gateway.leftover_processes()
        assert len(procs) >= 3  # scheduler + 2 workers (+ nannies)
        for proc in procs:
            visible = (
                " ".join(proc.cmdline())
                + " "
                + " ".join(f"{k}={v}" for k, v in proc.environ().items())
            )
            for name, secret in found.items():
                assert secret not in visible, f"{name} in argv/env of pid {proc.pid}"
        log = gateway.log_path.read_text(errors="replace")
        for name, secret in found.items():
            assert secret not in log, f"{name} in the gateway log"
        for path in gateway.state_dir.rglob("*"):
            if path.is_symlink() or path.is_socket():
                continue
            mode = path.stat().st_mode
            assert not mode & 0o004, f"{path} is world-readable ({oct(mode)})"
    finally:
        cluster.shutdown()


def test_only_a_clusters_scheduler_may_report_its_events(gateways):
    gateway = gateways.start(GROUPS_AUTH)
    status, body = create(gateway, {})
    assert status == 201
    events = f"/api/elastic/v1/clusters/{body['name']}/events"
    finding = {"kind": "unreachable", "worker": "w", "address": "tls://1.2.3.4:5", "error": "x"}
    # The owner (Basic auth), a guessed token, another cluster's name: never accepted.
    status, answer = http(gateway, "POST", events, finding, "alice")
    assert status == 403 and "Only the cluster's scheduler" in answer.get("error", str(answer))
    guessed = json.dumps(finding).encode()
    assert raw(gateway, "POST", events, guessed, {"Authorization": "token guess"})[0] == 403
    assert http(gateway, "POST", f"/api/elastic/v1/clusters/{'0' * 32}/events", finding)[0] == 404
    details = http(gateway, "GET", f"/api/elastic/v1/clusters/{body['name']}", username="alice")
    assert not any("cannot be reached" in e["message"] for e in details[1]["events"])
