"""Command lines and environments of schedulers and workers."""

from __future__ import annotations

from types import SimpleNamespace

from gateway_backend.commands import proxy_sni, worker_command, worker_env


def fake_cluster():
    config = SimpleNamespace(
        worker_cmd=["dask", "worker"],
        worker_threads=2,
        worker_memory=2**30,
        environment={"EXTRA": "1"},
    )
    return SimpleNamespace(name="abc", token="secret-token", config=config)


def test_worker_command_routes_through_the_proxy_by_sni():
    cluster = fake_cluster()
    cmd = worker_command(
        cluster, "w1", "tls://proxy:8786", host="0.0.0.0", scheduler_sni=proxy_sni(cluster)
    )
    assert cmd[:3] == ["dask", "worker", "tls://proxy:8786"]
    assert cmd[cmd.index("--scheduler-sni") + 1] == "daskgateway-abc"
    assert cmd[cmd.index("--name") + 1] == "w1"


def test_worker_environment_carries_no_api_token():
    env = worker_env(fake_cluster(), cert_path="dask.crt", key_path="dask.pem")
    assert "secret-token" not in env.values()
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"] == "dask.pem"
    assert env["EXTRA"] == "1"


def test_cluster_processes_tick_at_the_configured_interval():
    cluster = fake_cluster()
    cluster.config.tick_interval = 0.5
    env = worker_env(cluster, cert_path="dask.crt", key_path="dask.pem")
    assert env["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] == "0.5s"


def test_a_tick_interval_in_the_clusters_environment_wins():
    cluster = fake_cluster()
    cluster.config.tick_interval = 0.5
    cluster.config.environment["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] = "50ms"
    env = worker_env(cluster, cert_path="dask.crt", key_path="dask.pem")
    assert env["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] == "50ms"


def test_records_made_before_tick_interval_keep_distributeds_default():
    env = worker_env(fake_cluster(), cert_path="dask.crt", key_path="dask.pem")
    assert "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL" not in env
