"""Elastic Gateway: the server side, loaded by dask-gateway-server.

Set ``c.DaskGateway.backend_class = "gateway_backend.ElasticBackend"``.
"""

from .backend import ElasticBackend

__all__ = ["ElasticBackend"]
