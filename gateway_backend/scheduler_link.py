"""A scheduler preload: the cluster's own line to the gateway API, shared by our preloads.

The scheduler reports what it sees (unreachable workers, clients, versions, lost
workers) and may ask for its cluster to be stopped, with the cluster's API token,
like dask-gateway's heartbeat. This preload runs first and puts one ``GatewayLink``
in ``scheduler.extensions["elastic-gateway"]`` for the others (``gateway_link``).

Like every preload of ours, the gateway passes this file's text as ``--preload``:
it may import only distributed, tornado and the standard library.
"""

import json
import os

EXTENSION = "elastic-gateway"


class GatewayLink:
    """The cluster's calls to the gateway API, with its token (as the heartbeat's)."""

    def __init__(self, api_url, name, token):
        self.api_url = api_url
        self.name = name
        self.token = token

    async def _fetch(self, url, method, body=None):
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        await AsyncHTTPClient().fetch(
            HTTPRequest(url, method=method, headers=headers, body=body, request_timeout=10)
        )

    async def report(self, finding):
        """POST a finding; the gateway checks it and writes what the owner reads."""
        url = f"{self.api_url}/elastic/v1/clusters/{self.name}/events"
        await self._fetch(url, "POST", json.dumps(finding))

    async def stop(self, reason):
        """Ask for this cluster's stop; ``reason`` picks one of the gateway's own texts."""
        # The route dask-gateway's idle timeout uses.
        await self._fetch(f"{self.api_url}/v1/clusters/{self.name}?reason={reason}", "DELETE")


def link_from_env():
    """The link the scheduler's environment describes (the token may be a mounted file)."""
    token = os.environ["DASK_GATEWAY_API_TOKEN"]
    if "/" in token:  # a file (Kubernetes mounts it)
        with open(token) as f:
            token = f.read().strip()
    return GatewayLink(
        os.environ["DASK_GATEWAY_API_URL"], os.environ["DASK_GATEWAY_CLUSTER_NAME"], token
    )


def dask_setup(scheduler):
    scheduler.extensions[EXTENSION] = link_from_env()
