"""The upstream internals ElasticBackend relies on, pinned: fails loudly when they change.

``ElasticBackend`` overrides a few private methods of dask-gateway-server's
``DBBackendBase`` and creates worker rows the way ``DataManager.create_worker``
does (``gateway_backend/records.py``). A new upstream release that renames or
reshapes any of these must fail here, not in production.
"""

from __future__ import annotations

import inspect

import pytest
from dask_gateway_server.backends import db_base
from dask_gateway_server.backends.db_base import DataManager, DBBackendBase

from gateway_backend.backend import ElasticBackend

OVERRIDDEN = {
    "_check_cluster_scale": ["self", "cluster"],
    "_worker_to_stopped": ["self", "worker"],
    "_cluster_to_stopped": ["self", "cluster"],
    "forward_message_to_scheduler": ["self", "cluster", "msg"],
    "on_cluster_heartbeat": ["self", "cluster_name", "msg"],
    "process_cluster_options": ["self", "user", "request"],
    "get_cluster_options": ["self", "user"],
    "start_cluster": ["self", "user", "cluster_options"],
}


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_overridden_upstream_methods_keep_their_signature(name):
    upstream = getattr(DBBackendBase, name)
    assert inspect.iscoroutinefunction(upstream), f"upstream {name} is no longer a coroutine"
    assert list(inspect.signature(upstream).parameters) == OVERRIDDEN[name]
    assert list(inspect.signature(getattr(ElasticBackend, name)).parameters) == OVERRIDDEN[name]


def test_upstream_still_calls_the_private_methods_we_override():
    source = inspect.getsource(DBBackendBase)
    for name in ("_check_cluster_scale", "_worker_to_stopped", "_cluster_to_stopped"):
        assert f"self.{name}(" in source, f"upstream no longer calls {name}"


def test_cluster_records_still_get_their_keys_from_the_module_level_new_keypair():
    # tls_keys.install replaces db_base.new_keypair to make keys off the event loop.
    assert "new_keypair(cluster_name)" in inspect.getsource(DataManager.create_cluster)
    assert hasattr(db_base, "new_keypair")


def test_worker_rows_have_the_columns_records_py_writes():
    columns = {c.name for c in db_base.workers.columns}
    assert columns == {
        "id",
        "name",
        "cluster_id",
        "status",
        "target",
        "state",
        "start_time",
        "stop_time",
        "close_expected",
    }


def test_create_worker_still_writes_the_fields_records_py_copies():
    source = inspect.getsource(DataManager.create_worker)
    for field in ("name", "status", "target", "state", "start_time", "close_expected"):
        assert f'"{field}":' in source, f"DataManager.create_worker no longer sets {field}"
    assert list(inspect.signature(DataManager.create_worker).parameters) == ["self", "cluster"]
