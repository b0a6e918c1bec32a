"""Versions compared where they meet, and the scheduler's reports checked before use."""

from __future__ import annotations

import inspect

import distributed.versions
import pytest

from gateway_backend import scheduler_presence, scheduler_versions
from gateway_backend.commands import scheduler_preload_sources
from gateway_backend.scheduler_reports import (
    BadReport,
    Clients,
    Unreachable,
    VersionMismatch,
    parse_report,
)
from gateway_backend.scheduler_versions import (
    VersionCheck,
    answer_clients_with,
    comparable,
    mismatches,
)


def versions(**packages):
    base = {"python": "3.11.7.final.0", "dask": "2026.8.0", "distributed": "2026.8.0",
            "cloudpickle": "3.1.3", "msgpack": "1.2.4", "numpy": "2.0"}  # fmt: skip
    return {"host": {}, "packages": {**base, **packages}}


def test_python_is_compared_by_minor_version_only():
    assert comparable(versions())["python"] == "3.11"
    assert mismatches(versions(python="3.11.9.final.0"), versions()) == {}
    assert mismatches(versions(python="3.12.1.final.0"), versions()) == {"python": ["3.12", "3.11"]}


def test_only_the_packages_that_travel_in_pickles_are_compared():
    assert mismatches(versions(numpy="1.26", tornado="6.0"), versions()) == {}
    assert mismatches(versions(cloudpickle="3.0.0", distributed=None), versions()) == {
        "distributed": ["missing", "2026.8.0"],
        "cloudpickle": ["3.0.0", "3.1.3"],
    }


def check(mode):
    return VersionCheck(scheduler=None, mode=mode, report=None, own_versions=versions())


def test_a_client_with_other_versions_is_warned_with_the_versions_and_what_to_do():
    message = check("warn").client_message(versions(distributed="2025.1.0"))
    assert message == {
        "warning": "Version mismatch (distributed 2025.1.0 on the client but 2026.8.0 on the "
        "scheduler): the client was allowed, but tasks may fail to unpickle. To fix: pick the "
        "profile whose environment matches your notebook (gateway.profiles() lists them), or "
        "install the scheduler's versions in your notebook's environment.",
        "error": "",
    }


def test_a_client_with_other_versions_gets_an_error_in_refuse_mode():
    message = check("refuse").client_message(versions(msgpack="1.0.0"))
    assert message["warning"] == ""
    assert message["error"].startswith(
        "Version mismatch (msgpack 1.0.0 on the client but 1.2.4 on the scheduler): "
        "the client was refused."
    )


def test_a_client_with_the_same_versions_hears_nothing_of_ours():
    assert check("refuse").client_message(versions()) is None


def test_the_scheduler_answers_clients_with_our_message_and_workers_with_distributeds(
    monkeypatch,
):
    monkeypatch.setattr(distributed.versions, "error_message", distributed.versions.error_message)
    answer_clients_with(check("refuse"))
    odd = versions(dask="2025.1.0")
    to_client = distributed.versions.error_message(versions(), {}, odd)
    assert to_client["error"].startswith("Version mismatch (dask 2025.1.0 on the client")
    to_worker = distributed.versions.error_message(versions(), {}, odd, source_name="w1")
    assert to_worker["error"] == "" and "Mismatched versions found" in to_worker["warning"]


@pytest.mark.parametrize("module", [scheduler_presence, scheduler_versions])
def test_the_new_scheduler_preloads_are_self_contained(module):
    # They run in the cluster's environment: distributed, tornado and the standard library.
    source = inspect.getsource(module)
    imports = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.strip().startswith(("import ", "from "))
    }
    assert imports <= {"asyncio", "json", "logging", "os", "time", "distributed", "tornado"}
    assert source in scheduler_preload_sources()


def test_reports_of_each_kind_are_parsed():
    assert parse_report({"kind": "clients", "connected": 2, "detached": False}) == Clients(2, False)
    assert parse_report(
        {"kind": "unreachable", "worker": "w", "address": "tls://h:1", "error": "a\nb"}
    ) == Unreachable("w", "tls://h:1", "a\\nb")
    body = {
        "kind": "version_mismatch",
        "role": "worker",
        "worker": "w-1",
        "refused": True,
        "packages": {"distributed": ["2024.1.0", "2026.8.0"]},
    }
    assert parse_report(body) == VersionMismatch(
        "worker", {"distributed": ("2024.1.0", "2026.8.0")}, True, "w-1"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "reboot"}, "kind must be one of"),
        ([], "kind must be one of"),
        ({"kind": "clients", "connected": True, "detached": False}, "connected: int >= 0"),
        ({"kind": "clients", "connected": -1, "detached": False}, "connected: int >= 0"),
        ({"kind": "unreachable", "worker": 1}, "(strings)"),
        (
            {"kind": "version_mismatch", "role": "client", "refused": False,
             "packages": {"distributed": ["1.0\nEVIL", "2.0"]}},
            "packages['distributed'] must be two version strings",
        ),
        (
            {"kind": "version_mismatch", "role": "client", "refused": False,
             "packages": {"numpy": ["1", "2"]}},
            "packages must be some of python, dask, distributed, cloudpickle, msgpack",
        ),
        (
            {"kind": "version_mismatch", "role": "admin", "refused": False,
             "packages": {"dask": ["1", "2"]}},
            "role: 'client'|'worker'",
        ),
        (
            {"kind": "version_mismatch", "role": "worker", "refused": False,
             "packages": {"dask": ["1", "2"]}, "worker": "a b"},
            "worker (for role 'worker')",
        ),
    ],
)  # fmt: skip
def test_malformed_reports_are_refused_saying_what_the_kind_expects(body, message):
    with pytest.raises(BadReport) as refused:
        parse_report(body)
    assert message in str(refused.value)


def test_the_event_text_is_the_gateways_built_from_checked_fields():
    report = VersionMismatch("client", {"cloudpickle": ("3.0.0", "3.1.3")}, refused=True)
    assert report.text() == (
        "version mismatch: a client was refused (cloudpickle 3.0.0 on the client but 3.1.3 "
        "on the scheduler); to fix: pick the profile whose environment matches your notebook "
        "(gateway.profiles() lists them), or install the scheduler's versions in your "
        "notebook's environment"
    )
