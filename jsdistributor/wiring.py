"""Builds the node's parts from its config: one connection pool, the
metadata source, the storage nodes, the cache, the asset server and the
periodic tasks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from .assets import AssetServer
from .cache.eviction import LruSpPolicy
from .cache.manager import CacheManager
from .cache.store import ContentStore
from .errors import MetadataUnavailable
from .metadata import make_metadata_source
from .metrics import NodeMetrics, TimedMetadataSource, counting_pair
from .storage.client import StorageClient, make_pool
from .storage.ranking import ResponseTimes
from .storage.sources import StorageNodes

if TYPE_CHECKING:
    from .node import DistributorNode

log = Logger()

STATE_FILE = "jsdistributor-cache.json"


@frozen
class Components:
    metadata: Any
    storage: Any
    cache: CacheManager
    assets: AssetServer
    services: tuple[Any, ...]
    metrics: NodeMetrics | None = None


def build_components(node: DistributorNode) -> Components:
    from .node import timer

    config = node.config
    reactor = node.reactor
    limits = config.limits
    timeout = limits.outbound_requests_timeout_ms / 1000.0
    pool = make_pool(reactor, limits.max_concurrent_outbound_connections)
    metrics = NodeMetrics()
    metadata = TimedMetadataSource(make_metadata_source(config, reactor, pool), metrics, reactor)
    client = StorageClient(reactor, pool, timeout, max_connections=limits.max_concurrent_outbound_connections)
    storage = StorageNodes(
        reactor,
        client,
        metadata,
        probe_interval=config.intervals.check_storage_node_response_times,
        source_ttl=limits.data_object_source_by_object_id_ttl,
        max_concurrent_downloads=limits.max_concurrent_storage_node_downloads,
        response_times=ResponseTimes(failure_penalty=2 * timeout),
    )
    state_dir = FilePath(str(config.directories.cache_state))
    cache_storage, cache_client = counting_pair(storage, client, metrics, "cache")
    proxy_storage, proxy_client = counting_pair(storage, client, metrics, "proxy")
    cache = CacheManager(
        reactor,
        ContentStore(FilePath(str(config.directories.assets))),
        LruSpPolicy(),
        limit=limits.storage,
        state_path=state_dir.child(STATE_FILE),
        legacy_state_dir=state_dir,
        storage=cache_storage,
        client=cache_client,
        idle_timeout=max(timeout, 1.0),
        download_timeout=limits.pending_download_timeout_sec,
        reader_idle_timeout=max(4 * timeout, 10.0),
    )
    assets = AssetServer(
        reactor, cache, metadata, node.selection, proxy_storage, proxy_client, limits.max_cached_item_size
    )

    async def cleanup() -> None:
        """Drop what the node no longer serves (runs at start-up too: the
        timer's first run is immediate, after the state was loaded)."""
        try:
            objects = await metadata.list_bucket_objects(node.selection)
        except MetadataUnavailable as e:
            log.warn("cannot list this node's objects ({error}); cleanup skipped", error=str(e))
            return
        cache.cleanup({object_id: summary.size for object_id, summary in objects.items()})

    def save() -> Any:
        return cache.save_in_thread()

    services = (
        _PoolService(pool),
        _StartupService(cache),
        storage,
        timer(config.intervals.save_cache_state, save, reactor, "save cache state"),
        timer(config.intervals.cache_cleanup, lambda: ensureDeferred(cleanup()), reactor, "cache cleanup"),
    )
    return Components(
        metadata=metadata, storage=storage, cache=cache, assets=assets, services=services, metrics=metrics
    )


class _StartupService(Service):
    """Loads and reconciles the cache state when the node starts."""

    def __init__(self, cache: CacheManager) -> None:
        self._cache = cache
        self.setName("cache state")

    def startService(self) -> None:
        super().startService()
        self._cache.load()



class _PoolService(Service):
    """Closes the outbound connection pool when the node stops."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.setName("outbound connection pool")

    def stopService(self) -> Any:
        super().stopService()
        return self._pool.closeCachedConnections()
