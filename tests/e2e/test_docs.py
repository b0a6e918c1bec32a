"""The notebook snippets of the README and docs/ run as written against an embedded gateway."""

from __future__ import annotations

import pytest

from ..conftest import wait_for, workers_of
from ..docs_snippets import analyst_blocks

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("where", "code"), analyst_blocks(), ids=[w for w, _ in analyst_blocks()])
def test_every_notebook_snippet_runs_as_written(gateway, monkeypatch, where, code):
    # The snippet's ElasticGateway() finds this gateway the way it finds `elastic-gateway serve`
    # on the analyst's machine: through the state directory, with dask's default config.
    monkeypatch.setenv("ELASTIC_GATEWAY_STATE_DIR", str(gateway.state_dir))
    monkeypatch.delenv("ELASTIC_GATEWAY_ADDRESS", raising=False)
    namespace: dict = {}
    try:
        exec(compile(code, where, "exec"), namespace)
        cluster = namespace["cluster"]
        wait_for(lambda: workers_of(cluster) > 0, what="the snippet's workers")
        assert namespace["client"].submit(sum, [1, 2, 3]).result(timeout=60) == 6
        assert cluster.details()["pools"]
    finally:
        if "client" in namespace:
            namespace["client"].close()
        if "cluster" in namespace:
            namespace["cluster"].shutdown()
        if "gw" in namespace:
            namespace["gw"].close()
