"""Elastic Gateway's thin notebook-side extension of ``dask_gateway``.

``ElasticGateway`` and ``ElasticCluster`` behave like ``Gateway`` and
``GatewayCluster`` (same methods, same results) and add defaults taken from the
environment plus views of where a cluster's workers run. No server dependency.
"""

from .cluster import ElasticCluster
from .gateway import ElasticGateway, GatewayIdentityError, resolve_address_and_auth

__all__ = ["ElasticCluster", "ElasticGateway", "GatewayIdentityError", "resolve_address_and_auth"]
