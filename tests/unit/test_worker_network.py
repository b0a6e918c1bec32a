"""Ports and advertised addresses of remote workers, and the scheduler's reachability check."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from traitlets import TraitError

from gateway_backend import scheduler_checks
from gateway_backend.commands import scheduler_checks_source
from gateway_backend.launchers.htcondor import HTCondorLauncher
from gateway_backend.launchers.worker_network import WorkerNetworkSettings, contact_preload


@pytest.mark.parametrize("ports", ["", "40000", "40000:40100"])
def test_port_ranges_sites_open_are_accepted(ports):
    assert WorkerNetworkSettings(worker_ports=ports).worker_ports == ports


@pytest.mark.parametrize("ports", ["80", "40100:40000", "40000-40100", "70000", "1e4", " 40000"])
def test_other_port_settings_are_refused_naming_the_setting(ports):
    with pytest.raises(TraitError, match=r"WorkerNetworkSettings\.worker_ports"):
        WorkerNetworkSettings(worker_ports=ports)


@pytest.mark.parametrize("host", ["a b", "host;rm", "$(cmd)", "'q'", "$1X"])
def test_contact_hosts_that_are_not_names_addresses_or_variables_are_refused(host):
    with pytest.raises(TraitError, match="contact_host"):
        WorkerNetworkSettings(contact_host=host)


def test_the_pools_ports_and_contact_reach_the_worker_command():
    settings = WorkerNetworkSettings(worker_ports="40000:40100", nanny_ports="40200:40300")
    assert settings.network_args() == [
        "--worker-port",
        "40000:40100",
        "--nanny-port",
        "40200:40300",
    ]


@pytest.mark.parametrize(
    ("host", "env", "advertised"),
    [
        ("gw.example.org", {}, "tls://gw.example.org:40007"),
        ("$NODE_PUBLIC_IP", {"NODE_PUBLIC_IP": "192.0.2.7"}, "tls://192.0.2.7:40007"),
    ],
)
def test_a_worker_advertises_the_contact_host_with_the_port_it_listens_on(
    host, env, advertised, monkeypatch
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    flag, code = contact_preload(host)
    namespace: dict = {}
    exec(code, namespace)  # what distributed runs as the worker's preload
    worker = SimpleNamespace(listener=SimpleNamespace(prefix="tls://"), port=40007)
    namespace["dask_setup"](worker)
    assert (flag, worker.contact_address) == ("--preload", advertised)


def test_htcondor_hints_name_the_port_and_the_settings():
    launcher = HTCondorLauncher(worker_ports="40000:40100")
    hint = launcher.reachability_hint("tls://10.1.2.3:40017")
    assert "accept TCP on port 40017" in hint
    assert "HTCondorLauncher.worker_ports = '40000:40100'" in hint
    assert "HTCondorLauncher.contact_host" in hint


def test_the_scheduler_preload_is_self_contained():
    # It runs in the cluster's environment: distributed, tornado and the standard library only.
    source = scheduler_checks_source()
    imports = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports <= {"asyncio", "json", "logging", "os", "distributed"}
    assert " " in source  # distributed runs a preload with spaces as code, not a module name


class FakeScheduler:
    connection_args: dict = {}

    def __init__(self, address: str) -> None:
        self.workers = {address: SimpleNamespace(name="w-1")}
        self.removed: list[str] = []

    async def remove_worker(self, address, stimulus_id, close):
        self.removed.append(address)


async def check(address: str) -> tuple[list[dict], list[str]]:
    scheduler = FakeScheduler(address)
    reports: list[dict] = []

    async def report(finding):
        reports.append(finding)

    plugin = scheduler_checks.WorkerReachability(scheduler, 2, report)
    await plugin.check(address)
    return reports, scheduler.removed


def test_a_worker_the_scheduler_cannot_connect_to_is_reported_and_removed():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    reports, removed = asyncio.run(check(address))
    assert removed == [address]
    [finding] = reports
    assert (finding["kind"], finding["worker"], finding["address"]) == (
        "unreachable",
        "w-1",
        address,
    )
    assert finding["error"]


def test_a_reachable_worker_is_left_alone():
    from distributed.comm import listen

    async def scenario():
        listener = listen("tcp://127.0.0.1:0", lambda comm: comm.close())
        await listener.start()
        try:
            return await check(listener.contact_address)
        finally:
            listener.stop()

    assert asyncio.run(scenario()) == ([], [])
