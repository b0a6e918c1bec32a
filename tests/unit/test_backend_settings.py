"""The admin's ElasticBackend settings: defaults from the environment, checks at load time."""

from __future__ import annotations

import pytest
from traitlets import TraitError

from gateway_backend.backend import ElasticBackend


def test_the_metrics_token_comes_from_the_environment_when_not_configured(monkeypatch):
    monkeypatch.setenv("ELASTIC_GATEWAY_METRICS_TOKEN", "from-env")
    assert ElasticBackend().metrics_api_token == "from-env"
    assert ElasticBackend(metrics_api_token="configured").metrics_api_token == "configured"


def test_the_metrics_token_is_empty_by_default(monkeypatch):
    monkeypatch.delenv("ELASTIC_GATEWAY_METRICS_TOKEN", raising=False)
    assert ElasticBackend().metrics_api_token == ""


def test_a_scheduler_launcher_dict_without_launcher_is_refused_when_set():
    with pytest.raises(TraitError, match=r"scheduler_launcher\['launcher'\] must name"):
        ElasticBackend(scheduler_launcher={"namespace": "dask"})
