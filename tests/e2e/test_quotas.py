"""Per-VO quotas end to end: real gateway and proxy, users with authenticator groups."""

from __future__ import annotations

import base64
import threading
import urllib.request
import warnings
from pathlib import Path

import pytest
from dask_gateway import GatewayWarning

from ..conftest import http, process_groups, wait_for, workers_of

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SLOW_SUBMIT = "tests.support_launchers.SlowSubmitLocalLauncher"

# Users get groups from this authenticator (defined in the gateway's config file).
GROUPS_AUTH = """
from dask_gateway_server.auth import SimpleAuthenticator
from dask_gateway_server.models import User

class GroupsAuthenticator(SimpleAuthenticator):
    user_groups = {"alice": ["cms"], "bob": ["cms"], "carol": ["dune"],
                   "dave": ["cms", "dune"], "root": []}

    async def authenticate(self, request):
        user = await super().authenticate(request)
        groups = self.user_groups.get(user.name, [])
        return User(user.name, groups=groups, admin=user.name == "root")

c.DaskGateway.authenticator_class = GroupsAuthenticator
# Many users' clusters as one OS account: fine for quota tests, accepted explicitly.
c.LocalLauncher.allow_shared_local_user = True
"""

# Schedulers and workers take 1 core and 1 GiB each by default here.
SIZES = """
c.ElasticClusterConfig.scheduler_cores = 1
c.ElasticClusterConfig.scheduler_memory = "1 G"
c.ElasticBackend.max_worker_memory = 1
"""


def start(gateways, vos: str, extra: str = ""):
    return gateways.start(GROUPS_AUTH + SIZES + f"c.ElasticBackend.vos = {vos}\n" + extra)


def test_new_cluster_beyond_max_clusters_per_user_is_refused_naming_the_limit(gateways):
    gateway = start(gateways, '{"cms": {"groups": ["cms"], "max_clusters_per_user": 1}}')
    assert http(gateway, "POST", "/api/v1/clusters/", {}, "alice")[0] == 201
    status, body = http(gateway, "POST", "/api/v1/clusters/", {}, "alice")
    assert status == 422
    assert "VO cms: max_clusters_per_user=1 and user alice already has 1 running" in body["error"]
    assert http(gateway, "POST", "/api/v1/clusters/", {}, "bob")[0] == 201  # per user


def test_users_without_vo_are_refused_with_an_explanation(gateways):
    gateway = start(gateways, '{"cms": {"groups": ["cms"]}}')
    status, body = http(gateway, "POST", "/api/v1/clusters/", {}, "carol")
    assert status == 422
    assert "user carol belongs to no VO of this gateway (groups: dune)" in body["error"]


def test_a_user_in_two_vos_picks_one_with_the_vo_option(gateways):
    gateway = start(gateways, '{"cms": {"groups": ["cms"]}, "dune": {"groups": ["dune"]}}')
    status, body = http(gateway, "POST", "/api/v1/clusters/", {}, "dave")
    assert status == 422 and "choose one with the cluster option vo" in body["error"]
    status, body = http(
        gateway, "POST", "/api/v1/clusters/", {"cluster_options": {"vo": "dune"}}, "dave"
    )
    assert status == 201
    details = http(gateway, "GET", f"/api/elastic/v1/clusters/{body['name']}", username="dave")
    assert details[1]["options"]["vo"] == "dune"  # recorded on the cluster
    status, body = http(
        gateway, "POST", "/api/v1/clusters/", {"cluster_options": {"vo": "dune"}}, "alice"
    )
    assert status == 422 and "alice is not a member of VO 'dune'" in body["error"]


def test_scale_is_clamped_to_the_vo_quota_with_a_message_and_grows_back(gateways):
    # 5 cores: alice's scheduler (1) + 2 workers, then bob's scheduler (1) + 1 worker.
    gateway = start(gateways, '{"cms": {"groups": ["cms"], "max_cores": 5}}')
    alice, bob = gateways.client(gateway, "alice"), gateways.client(gateway, "bob")
    try:
        a = alice.new_cluster()
        with pytest.warns(GatewayWarning) as warned:
            a.scale(6)
        message = str(warned[0].message)
        assert "VO cms: max_cores=5, in use 1; granted 4 of 6 workers now" in message
        wait_for(lambda: workers_of(a) == 4, what="alice's 4 granted workers")
        a.scale(2)
        wait_for(lambda: workers_of(a) == 2, what="alice down to 2")
        wait_for(
            lambda: alice.quota()["vos"]["cms"]["usage"]["cores"] == 3,
            what="the gateway to count alice's scale-down",
        )

        b = bob.new_cluster()
        with pytest.warns(GatewayWarning, match="granted 1 of 3 workers now, the other 2 start"):
            b.scale(3)
        wait_for(lambda: workers_of(b) == 1, what="bob's 1 granted worker")
        assert bob.quota()["vos"]["cms"]["usage"]["cores"] == 5

        a.shutdown()  # frees 3 cores: bob grows to his request without asking again
        wait_for(lambda: workers_of(b) == 3, what="bob to grow back to 3")
        b.shutdown()
    finally:
        alice.close()
        bob.close()


def test_concurrent_scale_requests_never_start_workers_beyond_the_vo_limit(gateways):
    # 3 users' schedulers take 3 of 7 cores: at most 4 workers may ever exist together.
    gateway = start(
        gateways,
        '{"cms": {"groups": ["cms"], "max_cores": 7}}',
        'GroupsAuthenticator.user_groups = {"u%d" % i: ["cms"] for i in range(3)}\n',
    )
    names = {}
    for i in range(3):
        status, body = http(gateway, "POST", "/api/v1/clusters/", {}, f"u{i}")
        assert status == 201
        names[f"u{i}"] = body["name"]

    def running(user, name):
        return http(gateway, "GET", f"/api/v1/clusters/{name}", username=user)[1]["status"]

    for user, name in names.items():
        wait_for(lambda u=user, n=name: running(u, n) == "RUNNING", what="clusters running")

    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(process_groups(gateway)) - 3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        barrier = threading.Barrier(9)

        def scale(user, name, count):
            barrier.wait()
            http(gateway, "POST", f"/api/v1/clusters/{name}/scale", {"count": count}, user)

        threads = [
            threading.Thread(target=scale, args=(user, name, count))
            for user, name in names.items()
            for count in (3, 5, 4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        usage = wait_for(
            lambda: (
                (u := http(gateway, "GET", "/api/elastic/v1/quota", username="u0")[1])
                and u["vos"]["cms"]["usage"]["workers"] == 4
                and u
            ),
            what="the VO to reach its limit",
        )
        assert usage["vos"]["cms"]["usage"]["cores"] == 7
        wait_for(lambda: len(process_groups(gateway)) == 3 + 4, what="4 worker processes")
    finally:
        stop.set()
        watcher.join()
    assert peak[0] <= 4


def test_usage_is_derived_from_state_and_right_after_a_restart(gateways):
    gateway = start(gateways, '{"cms": {"groups": ["cms"], "max_cores": 10}}')
    alice = gateways.client(gateway, "alice")
    cluster = alice.new_cluster(shutdown_on_close=False)
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
    before = alice.quota()["vos"]["cms"]["usage"]
    assert before == {"cores": 3, "memory": 3 * 2**30, "gpus": 0, "clusters": 1, "workers": 2}
    cluster.close()
    alice.close()

    gateway.kill()
    gateway.start()
    alice = gateways.client(gateway, "alice")
    try:
        assert alice.quota()["vos"]["cms"]["usage"] == before
        alice.connect(cluster.name).shutdown()
    finally:
        alice.close()


def test_users_see_their_vo_and_admins_every_vo_and_metrics(gateways):
    gateway = start(
        gateways,
        '{"cms": {"groups": ["cms"], "max_cores": 100, "max_memory": "1 TiB", '
        '"accounting_group": "group_cms"}, "dune": {"groups": ["dune"], "max_gpus": 2}}',
    )
    status, quota = http(gateway, "GET", "/api/elastic/v1/quota", username="alice")
    assert status == 200 and list(quota["vos"]) == ["cms"]
    assert quota["vos"]["cms"]["limits"]["max_memory"] == 2**40
    assert quota["vos"]["cms"]["accounting_group"] == "group_cms"
    assert sorted(http(gateway, "GET", "/api/elastic/v1/quota", username="root")[1]["vos"]) == [
        "cms",
        "dune",
    ]
    http(gateway, "POST", "/api/v1/clusters/", {}, "eve")  # refused: no VO
    text = metrics_as(gateway, "root")
    assert 'elastic_gateway_vo_limit{resource="cores",vo="cms"} 100.0' in text
    assert 'elastic_gateway_vo_usage{resource="gpus",vo="dune"} 0.0' in text
    assert 'elastic_gateway_quota_refusals_total{kind="membership",vo=""} 1.0' in text


def metrics_as(gateway, username: str) -> str:
    """The Prometheus text an admin reads (basic auth through the gateway's authenticator)."""
    creds = gateway.client_credentials()
    token = base64.b64encode(f"{username}:{creds['password']}".encode()).decode()
    req = urllib.request.Request(
        gateway.address + "/api/elastic/v1/metrics", headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


def test_bad_vo_config_stops_the_gateway_at_start_up_naming_the_key(gateways):
    with pytest.raises(RuntimeError, match=r"ElasticBackend.vos\['cms'\]\['max_memory'\]"):
        start(gateways, '{"cms": {"max_memory": "a lot"}}')
    with pytest.raises(RuntimeError, match="users_without_vo = 'guests' names no VO"):
        start(gateways, '{"cms": {}}', 'c.ElasticBackend.users_without_vo = "guests"\n')


def test_quota_messages_do_not_warn_when_the_request_fits(gateways):
    gateway = start(gateways, '{"cms": {"groups": ["cms"], "max_cores": 10}}')
    alice = gateways.client(gateway, "alice")
    try:
        cluster = alice.new_cluster()
        with warnings.catch_warnings():
            warnings.simplefilter("error", GatewayWarning)
            cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, what="2 workers")
        cluster.shutdown()
    finally:
        alice.close()


def test_a_worker_scaled_away_while_it_is_submitted_holds_its_cores_until_it_has_stopped(
    gateways,
):
    # 3 cores: two schedulers and one worker. u0's worker is scaled away during its 3 s
    # submission; u1 may have the core only once u0's worker has been started and stopped.
    gateway = start(
        gateways,
        '{"cms": {"groups": ["cms"], "max_cores": 3}}',
        'GroupsAuthenticator.user_groups = {"u0": ["cms"], "u1": ["cms"]}\n'
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        f'c.ElasticBackend.worker_pools = {{"local": {{"launcher": "{SLOW_SUBMIT}"}}}}\n'
        "c.SlowSubmitLocalLauncher.submit_delay = 3\n",
    )
    names = {}
    for user in ("u0", "u1"):
        status, body = http(gateway, "POST", "/api/v1/clusters/", {}, user)
        assert status == 201
        names[user] = body["name"]

    def usage():
        return http(gateway, "GET", "/api/elastic/v1/quota", username="u0")[1]["vos"]["cms"]

    def pool_of(user):
        path = f"/api/elastic/v1/clusters/{names[user]}"
        return http(gateway, "GET", path, username=user)[1]["pools"]["local"]

    for user, name in names.items():
        wait_for(
            lambda u=user, n=name: (
                http(gateway, "GET", f"/api/v1/clusters/{n}", username=u)[1]["status"] == "RUNNING"
            ),
            what="clusters running",
        )
    scale = "/api/v1/clusters/{}/scale"
    assert http(gateway, "POST", scale.format(names["u0"]), {"count": 1}, "u0")[0] == 200
    wait_for(lambda: usage()["usage"]["workers"] == 1, what="u0's worker being submitted")
    assert http(gateway, "POST", scale.format(names["u0"]), {"count": 0}, "u0")[0] == 200
    assert usage()["usage"]["workers"] == 1  # its submission has not returned yet
    status, body = http(gateway, "POST", scale.format(names["u1"]), {"count": 1}, "u1")
    assert status == 200 and "granted 0 of 1 workers now" in body["msg"], body
    wait_for(lambda: pool_of("u1")["running"] == 1, timeout=30, what="u1's worker")
    assert pool_of("u0")["running"] == 0
    assert len(process_groups(gateway)) == 2 + 1
