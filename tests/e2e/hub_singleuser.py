"""A single-user server's process, as JupyterHub spawns it, running one notebook's code.

The hub starts this instead of ``jupyterhub-singleuser`` (``c.Spawner.cmd``) with the
environment it gives every single-user server: its own ``JUPYTERHUB_API_TOKEN`` (scopes
from ``c.Spawner.server_token_scopes``), ``JUPYTERHUB_API_URL``,
``JUPYTERHUB_PUBLIC_HUB_URL`` and ``c.Spawner.environment``. It answers HTTP on the
server's port at once (so the hub sees the server start), runs what an analyst's first
cell does with ``ElasticGateway()``, and writes what it saw to
``$ELASTIC_TEST_RESULTS/<user>.json`` (no token in it). The hub stops it with SIGTERM.
With ``$ELASTIC_TEST_KEEP_CLUSTER`` set it only creates a cluster and leaves it running
(``keep_cluster``), for the tests of clusters that stop with their server.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import traceback
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


class Alive(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def notebook() -> dict:
    """The analyst's cell: a cluster, 1 + 1 on a worker, where it counted, the dashboard."""
    from client_ext import ElasticGateway
    from client_ext.auth import hub_service_address

    seen: dict = {"hub_service_address": hub_service_address()}
    gw = ElasticGateway()
    seen["address"] = gw.address
    try:
        try:
            cluster = gw.new_cluster(shutdown_on_close=True)
        except ValueError as err:
            seen["refused"] = str(err)
            return seen
        try:
            cluster.scale(1)
            client = cluster.get_client()
            client.wait_for_workers(1, timeout=90)
            seen["answer"] = client.submit(lambda x: x + 1, 1).result(timeout=60)
            tokens = client.run(lambda: os.environ.get("JUPYTERHUB_API_TOKEN"))
            seen["worker_hub_tokens"] = list(tokens.values())
            seen["details"] = cluster.details()
            seen["quota"] = gw.quota()
            seen["dashboard_link"] = cluster.dashboard_link
            with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as page:
                seen["dashboard_status"] = page.status
                body = page.read().decode(errors="replace")
            # distributed's Bokeh page, not some other server's answer
            seen["dashboard_is_bokeh"] = "Bokeh.embed.embed_items(docs_json" in body
        finally:
            cluster.shutdown()
    finally:
        gw.close()
    return seen


KEPT: list = []  # the kept cluster's client objects, alive as long as the server


def keep_cluster() -> dict:
    """A cell that leaves its cluster running, and which server the hub says this
    server's token belongs to (the ``access:servers!server=`` scopes of ``/hub/api/user``)."""
    from client_ext import ElasticGateway

    whoami = urllib.request.Request(
        os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/user",
        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
    )
    with urllib.request.urlopen(whoami, timeout=30) as reply:
        scopes = json.loads(reply.read())["scopes"]
    gw = ElasticGateway()
    cluster = gw.new_cluster()
    KEPT.append((gw, cluster))
    # The hub stops a server with SIGINT, then SIGTERM: exit at once, as a kernel killed
    # with its pod does. A clean exit would let the client shut the cluster down itself
    # (shutdown_on_close), and the gateway would have nothing left to do.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: os._exit(0))
    return {
        "cluster": cluster.name,
        "server_scopes": [s for s in scopes if s.startswith("access:servers!server=")],
    }


def main() -> None:
    port = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"]).port
    server = ThreadingHTTPServer(("127.0.0.1", port), Alive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seen = keep_cluster() if os.environ.get("ELASTIC_TEST_KEEP_CLUSTER") else notebook()
    except Exception:
        seen = {"error": traceback.format_exc()}
    results = Path(os.environ["ELASTIC_TEST_RESULTS"])
    partial = results / f".{os.environ['JUPYTERHUB_USER']}.json"
    partial.write_text(json.dumps(seen))
    partial.rename(results / f"{os.environ['JUPYTERHUB_USER']}.json")
    threading.Event().wait()  # a server runs until the hub stops it


if __name__ == "__main__":
    main()
