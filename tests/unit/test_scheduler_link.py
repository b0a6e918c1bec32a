"""The scheduler preloads share one line to the gateway, set up by the first of them."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from gateway_backend import scheduler_link, scheduler_versions, worker_loss_preload
from gateway_backend.commands import scheduler_preload_sources


def test_the_link_preload_runs_first_and_is_self_contained():
    source = inspect.getsource(scheduler_link)
    assert scheduler_preload_sources()[0] == source
    imports = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.strip().startswith(("import ", "from "))
    }
    assert imports <= {"json", "os", "tornado"}


def test_the_link_reads_the_token_from_the_file_kubernetes_mounts(tmp_path, monkeypatch):
    token = tmp_path / "api-token"
    token.write_text("s3cret\n")
    monkeypatch.setenv("DASK_GATEWAY_API_TOKEN", str(token))
    monkeypatch.setenv("DASK_GATEWAY_API_URL", "http://gw:8000/api")
    monkeypatch.setenv("DASK_GATEWAY_CLUSTER_NAME", "c0ffee")
    scheduler = SimpleNamespace(extensions={})
    scheduler_link.dask_setup(scheduler)
    link = scheduler.extensions[scheduler_link.EXTENSION]
    assert (link.api_url, link.name, link.token) == ("http://gw:8000/api", "c0ffee", "s3cret")


@pytest.mark.parametrize("module", [scheduler_versions, worker_loss_preload])
def test_the_other_preloads_report_through_the_shared_link(module, monkeypatch):
    link = SimpleNamespace(report=object())
    plugins = []
    scheduler = SimpleNamespace(
        extensions={scheduler_link.EXTENSION: link}, add_plugin=plugins.append, handlers={}
    )
    monkeypatch.setattr(scheduler_versions, "answer_clients_with", lambda check: None)
    module.dask_setup(scheduler)
    [plugin] = plugins
    assert plugin.report is link.report
