"""Elastic Gateway's thin notebook-side extension of ``dask_gateway``.

``ElasticGateway`` and ``ElasticCluster`` behave like ``Gateway`` and
``GatewayCluster`` (same methods, same results) and add defaults taken from the
environment plus views of where a cluster's workers run. No server dependency.

Modules, each importing only those listed before it: ``api`` (the gateway's
``/api/elastic/v1`` requests), ``closing``, ``auth`` (address and credentials),
``cluster`` (``ElasticCluster``), ``listing`` (``list_clusters``' reports and
``stop_clusters``' filters), ``gateway`` (``ElasticGateway``).
"""

from .api import GatewayRefused
from .auth import GatewayIdentityError, resolve_address_and_auth
from .cluster import ElasticCluster
from .gateway import ElasticGateway

__all__ = [
    "ElasticCluster",
    "ElasticGateway",
    "GatewayIdentityError",
    "GatewayRefused",
    "resolve_address_and_auth",
]
