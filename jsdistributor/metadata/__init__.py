"""Where the node learns about objects and buckets: ``IMetadataSource``
implementations for the storage squid, the Hydra query node and our static
catalog, and ``make_metadata_source`` choosing one from the configuration.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import ConfigError, NodeConfig
from ..interfaces import IMetadataSource
from .catalog import CatalogMetadataSource
from .graphql import GraphQLClient
from .hydra import HydraMetadataSource
from .squid import SquidMetadataSource

__all__ = [
    "CatalogMetadataSource",
    "GraphQLClient",
    "HydraMetadataSource",
    "SquidMetadataSource",
    "make_metadata_source",
]

log = Logger()


def _http_client(reactor: Any, pool: Any) -> Any:
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    return HTTPClient(Agent(reactor, pool=pool))


def make_metadata_source(
    config: NodeConfig, reactor: Any, pool: Any, clock: IReactorTime | None = None
) -> IMetadataSource:
    """The source ``config.endpoints`` names: ``storage_squid`` first, then
    ``query_node``, then ``catalog``.

    ``pool`` is the node's ``HTTPConnectionPool``; ``clock`` (default: the
    reactor) times the answers' cache.
    """
    endpoints = config.endpoints
    timeout = config.limits.outbound_requests_timeout_ms / 1000.0
    ttl = float(config.limits.query_node_cache_ttl)
    clock = clock if clock is not None else reactor
    if endpoints.storage_squid:
        client = GraphQLClient(endpoints.storage_squid, reactor, _http_client(reactor, pool), timeout)
        log.info("metadata: storage squid at {url}", url=endpoints.storage_squid)
        return SquidMetadataSource(client, clock, cache_ttl=ttl)
    if endpoints.query_node:
        client = GraphQLClient(endpoints.query_node, reactor, _http_client(reactor, pool), timeout)
        log.info("metadata: query node at {url}", url=endpoints.query_node)
        return HydraMetadataSource(client, clock, cache_ttl=ttl)
    if endpoints.catalog is not None:
        log.info("metadata: static catalog {path}", path=str(endpoints.catalog))
        return CatalogMetadataSource.from_file(endpoints.catalog)
    raise ConfigError(["endpoints: one of storageSquid, queryNode or catalog is required"])
