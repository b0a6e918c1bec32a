"""Workers on execute nodes behind firewalls and NAT, as network namespaces of a test site.

The gateway, its proxy and the scheduler run in this namespace (the gateway host);
HTCondor stand-in schedds, and so their worker jobs, run in execute-node namespaces
joined by a bridge, each with a firewall that lets in only what docs/networking.md
says a site must open. See tests/netns.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid

import pytest

from gateway_backend.embedded import free_port

from ..conftest import wait_for, workers_of
from ..netns import Site, can_make_namespaces
from .test_kubernetes import SCHEDULER, kube_env, make_k8s  # noqa: F401 (fixtures)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(can_make_namespaces()), reason=str(can_make_namespaces())),
]

PORTS = "40000:40100"


@pytest.fixture
def site(tmp_path):
    from tests.fakes.schedd import start_standin

    made = Site()
    with contextlib.ExitStack() as stack:

        def schedd(ns: str) -> str:
            """A stand-in schedd whose jobs run in ``ns``; its socket path."""
            factory, _ = stack.enter_context(
                start_standin(
                    tmp_path / f"schedd-{ns}", slots=2, tick=0.5, wrapper=made.exec_prefix(ns)
                )
            )
            return str(factory().socket_path)

        made.schedd = schedd
        try:
            yield made
        finally:
            stack.close()
            problems = made.close()
    assert not problems, problems


def pool(site: Site, socket: str, port: int, max_workers: int | None = None, **settings) -> dict:
    return {
        "launcher": "htcondor",
        "max_workers": max_workers,
        "schedd_factory": f"@@{socket}@@",
        "scheduler_address": f"tls://{site.gateway_ip}:{port}",
        **settings,
    }


def start_gateway(gateways, tmp_path, pools: dict, port: int):
    bindir = os.path.dirname(sys.executable)
    text = repr(pools)
    for spec in pools.values():  # lambdas in the config file, not in repr
        socket = spec["schedd_factory"][2:-2]
        text = text.replace(repr(spec["schedd_factory"]), f"lambda: StandinSchedd({socket!r})")
    config = f"""
import sys; sys.path.insert(0, {str(os.getcwd())!r})
from tests.fakes.schedd.client import StandinSchedd
c.Proxy.address = "0.0.0.0:{port}"
c.ElasticBackend.worker_pools = {text}
c.ElasticBackend.worker_start_timeout = 120
c.HTCondorLauncher.status_period = 1
c.HTCondorLauncher.gateway_id = "net-{uuid.uuid4().hex[:8]}"
c.HTCondorLauncher.staging_directory = {str(tmp_path / "staging")!r}
c.HTCondorLauncher.environment = {{"PATH": {bindir + ":/usr/bin:/bin"!r}}}
c.HTCondorLauncher.worker_ports = {PORTS!r}
c.HTCondorLauncher.nanny_ports = {PORTS!r}
"""
    gateway = gateways.start(config, port=port)
    return gateway, gateways.client(gateway)


def shuffle_sum(client) -> None:
    """A graph whose every output chunk needs chunks from other workers (x + x.T)."""
    import dask.array as da
    import distributed
    import numpy as np

    x = da.arange(400 * 400, chunks=400 * 50).reshape(400, 400).rechunk((50, 50))
    x = client.persist(x)
    distributed.wait(x, timeout=60)
    held = {w for ws in client.who_has(x).values() for w in ws}
    assert len(held) == 2, f"chunks on both workers before the transpose: {held}"
    expected = np.arange(400 * 400).reshape(400, 400) + np.arange(400 * 400).reshape(400, 400).T
    assert client.compute((x + x.T).sum()).result(timeout=60) == expected.sum()


def worker_hosts(cluster) -> set[str]:
    return {a.split("://")[1].rsplit(":", 1)[0] for a in cluster.scheduler_info["workers"]}


def test_workers_on_two_firewalled_nodes_with_the_documented_ports_open_compute_a_shuffle(
    site, gateways, tmp_path
):
    node_a, ip_a = site.execute_node("a", PORTS)
    node_b, ip_b = site.execute_node("b", PORTS)
    port = free_port()
    pools = {
        "node-a": pool(site, site.schedd(node_a), port, max_workers=1),
        "node-b": pool(site, site.schedd(node_b), port),
    }
    _, gw = start_gateway(gateways, tmp_path, pools, port)
    with gw.new_cluster() as cluster:
        cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="a worker on each node")
        assert worker_hosts(cluster) == {ip_a, ip_b}
        client = cluster.get_client()
        shuffle_sum(client)
        ports = {int(a.rsplit(":", 1)[1]) for a in cluster.scheduler_info["workers"]}
        assert all(40000 <= p <= 40100 for p in ports)
        client.close()


def test_a_node_closed_to_inbound_connections_is_named_within_seconds_not_a_hang(
    site, gateways, tmp_path
):
    node_a, _ = site.execute_node("a", PORTS)
    node_b, ip_b = site.execute_node("b", None)  # the site forgot to open the range
    port = free_port()
    pools = {
        "node-a": pool(site, site.schedd(node_a), port, max_workers=1),
        "node-b": pool(site, site.schedd(node_b), port),
    }
    _, gw = start_gateway(gateways, tmp_path, pools, port)
    with gw.new_cluster() as cluster:
        cluster.scale(2)

        def unreachable_event():
            return [
                e["message"]
                for e in gw.cluster_details(cluster.name)["events"]
                if "cannot be reached from the scheduler" in e["message"]
            ]

        [message, *_] = wait_for(unreachable_event, timeout=60, what="the unreachable event")
        assert f"in pool node-b at tls://{ip_b}:" in message
        assert "HTCondorLauncher.worker_ports = '40000:40100'" in message
        assert "contact_host" in message
        client = cluster.get_client()
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6  # the reachable one works
        client.close()


def test_a_node_behind_nat_works_when_workers_advertise_the_public_address(
    site, gateways, tmp_path
):
    node_a, _ = site.execute_node("a", PORTS)
    node_c, public = site.node_behind_nat("c", PORTS)
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    pools = {
        "node-a": pool(site, site.schedd(node_a), port, max_workers=1),
        "nat": pool(
            site,
            site.schedd(node_c),
            port,
            contact_host="$NODE_PUBLIC_IP",
            environment={"PATH": bindir + ":/usr/bin:/bin", "NODE_PUBLIC_IP": public},
        ),
    }
    _, gw = start_gateway(gateways, tmp_path, pools, port)
    with gw.new_cluster() as cluster:
        cluster.scale(2)
        wait_for(lambda: workers_of(cluster) == 2, timeout=90, what="both workers")
        assert public in worker_hosts(cluster)
        client = cluster.get_client()
        shuffle_sum(client)
        client.close()
        assert not any(
            "cannot be reached" in e["message"] for e in gw.cluster_details(cluster.name)["events"]
        )


def test_a_hybrid_cluster_of_pods_and_jobs_on_separate_networks_computes_a_shuffle(
    site,
    make_k8s,  # noqa: F811
    kube_env,  # noqa: F811
    tmp_path,
):
    """The scheduler and a worker as pods in a pod network, a worker as a job on a
    firewalled execute node: pod<->job transfers both ways, results to the client."""
    if not kube_env.local:
        pytest.skip("needs the process kubelet, whose pods the test places in a namespace")
    pod_ns, pod_ip = site.pod_network("p")
    node_a, ip_a = site.execute_node("a", PORTS)
    socket = site.schedd(node_a)
    port = free_port()
    bindir = os.path.dirname(sys.executable)
    extra = f"""
import sys; sys.path.insert(0, {str(os.getcwd())!r})
from tests.fakes.schedd.client import StandinSchedd
c.Proxy.address = "0.0.0.0:{port}"
c.ElasticBackend.api_url = "http://{site.gateway_ip}:{port}/api"
c.ElasticBackend.worker_pools = {{
    "pods": {{"launcher": "kubernetes", "max_workers": 1}},
    "node-a": {{"launcher": "htcondor",
                "schedd_factory": lambda: StandinSchedd({socket!r}),
                "scheduler_address": "tls://{site.gateway_ip}:{port}"}},
}}
c.HTCondorLauncher.status_period = 1
c.HTCondorLauncher.staging_directory = {str(tmp_path / "staging")!r}
c.HTCondorLauncher.environment = {{"PATH": {bindir + ":/usr/bin:/bin"!r}}}
c.HTCondorLauncher.worker_ports = {PORTS!r}
c.HTCondorLauncher.nanny_ports = {PORTS!r}
"""
    k = make_k8s(extra=extra, pod_network=(pod_ns, pod_ip), port=port)
    cluster = k.gw.new_cluster()
    cluster.scale(2)
    wait_for(lambda: workers_of(cluster) == 2, timeout=120, what="a pod and a job worker")
    assert worker_hosts(cluster) == {pod_ip, ip_a}
    [scheduler] = k.pods(cluster, **SCHEDULER)
    assert scheduler["status"]["podIP"] == pod_ip
    client = cluster.get_client()
    shuffle_sum(client)
    client.close()
    cluster.shutdown()


def test_a_node_behind_nat_without_contact_host_is_named_not_a_hang(site, gateways, tmp_path):
    node_c, _ = site.node_behind_nat("c", PORTS)
    port = free_port()
    pools = {"nat": pool(site, site.schedd(node_c), port)}
    _, gw = start_gateway(gateways, tmp_path, pools, port)
    with gw.new_cluster() as cluster:
        cluster.scale(1)

        def unreachable_event():
            return [
                e["message"]
                for e in gw.cluster_details(cluster.name)["events"]
                if "cannot be reached from the scheduler" in e["message"]
            ]

        [message, *_] = wait_for(unreachable_event, timeout=60, what="the unreachable event")
        assert f"at tls://{site.private}.2:" in message  # the private address it advertised
        assert "set HTCondorLauncher.contact_host" in message
