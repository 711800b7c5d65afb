"""Prometheus metrics of one node.

Each node has its own ``CollectorRegistry`` (:class:`NodeMetrics`), never
the global one: tests run several nodes in one process. It is rendered at
``GET /metrics`` on the operator port (and on ``metrics.port`` when set).

Three kinds of figures:

- **counted as things happen**: requests by route and status and the bytes
  served by ``x-cache`` state (fed by ``AccessLoggingSite.log``, one call per
  request), upstream downloads by storage endpoint (:class:`CountingStorageClient`
  and :class:`CountingSources`, decorators the cache's downloads go through),
  metadata latency and errors (:class:`TimedMetadataSource`);
- **read at scrape time** from the node by :class:`NodeCollector`: objects and
  bytes in cache, evictions, pending downloads, storage nodes' response
  times, open connections. Nothing is kept twice, and a scrape costs a few
  attribute reads;
- labels are bounded: routes are a fixed set (:func:`route_of`), endpoints
  are the storage nodes the metadata lists, never a raw request path.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

from . import __version__
from .interfaces import IMetadataSource, IStorageClient

__all__ = [
    "CountingSources",
    "CountingStorageClient",
    "NodeCollector",
    "NodeMetrics",
    "ROUTES",
    "TimedMetadataSource",
    "route_of",
]

#: Every value of the ``route`` label.
ROUTES = ("assets", "status", "buckets", "operator", "metrics", "other")

#: Metadata request durations (seconds): a cached answer is ~0, a slow
#: query node is seconds.
METADATA_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: x-cache values counted as cache hits; ``pending`` and ``miss`` are misses.
HIT = "hit"


def route_of(api: str, path: bytes | str) -> str:
    """The ``route`` label of a request: one of :data:`ROUTES`.

    ``api`` is the site's name (``public``/``operator``/``metrics``); ``path``
    the request's path, with or without a query string. ``/metrics`` is the
    ``metrics`` route on the operator and metrics listeners only.
    """
    if isinstance(path, bytes):
        path = path.decode("ascii", "replace")
    path = path.split("?", 1)[0]
    if api != "public":
        return "metrics" if path == "/metrics" else "operator" if api == "operator" else "other"
    if path.startswith(("/api/v1/assets/", "/api/v1/asset/")):
        return "assets"
    if path == "/api/v1/status":
        return "status"
    if path == "/api/v1/buckets":
        return "buckets"
    return "other"


class NodeMetrics:
    """The metrics of one node, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "jsdistributor_http_requests",
            "HTTP requests answered (or aborted), by API, route and status code.",
            ["api", "route", "status"],
            registry=r,
        )
        self.served_bytes = Counter(
            "jsdistributor_served_bytes",
            "Asset body bytes sent, by x-cache state (hit, pending, miss).",
            ["x_cache"],
            registry=r,
        )
        self.cache_requests = Counter(
            "jsdistributor_cache_requests",
            "Asset requests by cache result: hit (x-cache: hit) or miss (pending or miss).",
            ["result"],
            registry=r,
        )
        self.cache_bytes = Counter(
            "jsdistributor_cache_bytes_served",
            "Asset body bytes sent by cache result: hit or miss (pending or miss).",
            ["result"],
            registry=r,
        )
        self.upstream_started = Counter(
            "jsdistributor_upstream_downloads_started",
            "Object downloads (GET /files/{id}) sent to a storage node, by endpoint and purpose "
            "(cache: to be cached; proxy: streamed without caching).",
            ["endpoint", "purpose"],
            registry=r,
        )
        self.upstream_failed = Counter(
            "jsdistributor_upstream_downloads_failed",
            "Object downloads from a storage node that failed (error status, broken or short body, "
            "timeout), by endpoint and purpose.",
            ["endpoint", "purpose"],
            registry=r,
        )
        self.upstream_retried = Counter(
            "jsdistributor_upstream_downloads_retried",
            "Object downloads sent to a storage node after another source failed for the same object, "
            "by endpoint and purpose.",
            ["endpoint", "purpose"],
            registry=r,
        )
        self.metadata_seconds = Histogram(
            "jsdistributor_metadata_request_seconds",
            "Time the metadata source took to answer, by method.",
            ["method"],
            buckets=METADATA_BUCKETS,
            registry=r,
        )
        self.metadata_errors = Counter(
            "jsdistributor_metadata_errors",
            "Metadata source calls that failed (or reported the source unreachable), by method.",
            ["method"],
            registry=r,
        )
        self._children: dict[tuple[str, str, int, str | None], list[tuple[Any, bool]]] = {}
        self.worker_requests = Counter(
            "jsdistributor_worker_requests",
            "Requests a hit worker process answered itself (publicApi.workers; requests it relayed to "
            "the node are counted by the node), by worker.",
            ["worker"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "jsdistributor_worker_restarts",
            "Hit worker processes that ended unexpectedly and were started again.",
            registry=r,
        )
        for result in ("hit", "miss"):  # so that the hit ratio has both terms from the start
            self.cache_requests.labels(result)
            self.cache_bytes.labels(result)

    def watch(self, node: Any) -> None:
        """Report ``node``'s cache, downloads, storage nodes and connections
        at every scrape."""
        self.registry.register(NodeCollector(node))

    # -- fed by the access log --------------------------------------------

    def observe_request(self, api: str, path: bytes | str, status: int, sent: int, x_cache: str | None) -> None:
        """One answered (or aborted) request: ``sent`` body bytes; ``x_cache``
        its x-cache header (None when it has none)."""
        self.add_requests(api, route_of(api, path), status, x_cache, 1, sent)

    def add_requests(self, api: str, route: str, status: int, x_cache: str | None, count: int, sent: int) -> None:
        """``count`` requests of one kind that sent ``sent`` body bytes in
        all (a hit worker reports its requests this way)."""
        key = (api, route, status, x_cache)
        children = self._children.get(key)
        if children is None:
            # labels() takes a lock and builds a key: once per kind of
            # request. Each child counts requests, or bytes (True).
            children = [(self.requests.labels(api, route, str(status)), False)]
            if x_cache in ("hit", "pending", "miss"):
                result = "hit" if x_cache == HIT else "miss"
                children += [
                    (self.served_bytes.labels(x_cache), True),
                    (self.cache_requests.labels(result), False),
                    (self.cache_bytes.labels(result), True),
                ]
            if len(self._children) < 10_000:
                self._children[key] = children
        for child, counts_bytes in children:
            child.inc(sent if counts_bytes else count)

    # -- exposition ----------------------------------------------------------

    def resource(self) -> Resource:
        """A twisted.web resource serving ``GET /metrics`` only."""
        return _MetricsResource(self)

    def render(self, accept: bytes | str | None = None) -> tuple[bytes, str]:
        """The exposition text and its content type (OpenMetrics when the
        scraper's ``Accept`` header asks for it)."""
        if isinstance(accept, bytes):
            accept = accept.decode("latin-1")
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _MetricsResource(Resource):
    """``GET /metrics`` and nothing else (the ``metrics.port`` listener)."""

    isLeaf = True

    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: the metrics are at /metrics\n"
        body, content_type = self._metrics.render(request.getHeader(b"accept"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class NodeCollector:
    """Figures read from a running node at scrape time (cheap: a few
    attribute reads and one pass over the storage endpoints)."""

    def __init__(self, node: Any) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        info = GaugeMetricFamily("jsdistributor_build_info", "The running version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "jsdistributor_uptime_seconds", "Seconds since the node started.",
            value=max(0.0, node.reactor.seconds() - node.started_at),
        )
        cache = node.cache
        yield GaugeMetricFamily("jsdistributor_cache_objects", "Complete objects in the cache.", value=cache.objects_in_cache)
        yield GaugeMetricFamily(
            "jsdistributor_cache_used_bytes",
            "Bytes used by cached objects plus the space reserved for downloads in progress.",
            value=cache.storage_used,
        )
        yield GaugeMetricFamily("jsdistributor_cache_limit_bytes", "limits.storage.", value=cache.limit)
        counts = cache.counts
        yield CounterMetricFamily(
            "jsdistributor_cache_evictions", "Objects evicted to make room.", value=counts["evicted"]
        )
        downloads = CounterMetricFamily(
            "jsdistributor_downloads", "Cache downloads that ended, by outcome.", labels=["outcome"]
        )
        downloads.add_metric(["completed"], counts["completed"])
        downloads.add_metric(["failed"], counts["failed"])
        yield downloads
        pending = GaugeMetricFamily(
            "jsdistributor_pending_downloads",
            "Cache downloads in progress, by state (waiting_for_slot, finding_source, downloading).",
            labels=["state"],
        )
        by_state = cache.download_counts()
        for key, label in (
            ("waitingForSlot", "waiting_for_slot"),
            ("findingSource", "finding_source"),
            ("downloading", "downloading"),
        ):
            pending.add_metric([label], by_state.get(key, 0))
        yield pending
        storage = getattr(node.components, "storage", None)
        if storage is not None:
            times = GaugeMetricFamily(
                "jsdistributor_upstream_response_time_seconds",
                "Mean of the recent GET /version probe times of a storage node (failures count as a penalty).",
                labels=["endpoint"],
            )
            for url in sorted({e.url for e in storage.endpoints}):
                mean = storage.response_times.mean(url)
                if mean is not None:
                    times.add_metric([url], mean)
            yield times
        connections = GaugeMetricFamily(
            "jsdistributor_http_connections", "Open HTTP connections, by API.", labels=["api"]
        )
        for service in node.listening_services():
            # The hit workers' loopback listener would repeat api="public"
            # (an invalid exposition); its connections are the workers', not viewers'.
            if service is not getattr(node, "internal_service", None):
                connections.add_metric([service.site.api_name], service.site.connections)
        yield connections


@implementer(IMetadataSource)
class TimedMetadataSource:
    """An ``IMetadataSource`` that times the calls to ``inner``."""

    def __init__(self, inner: Any, metrics: NodeMetrics, clock: IReactorTime) -> None:
        self.inner = inner
        self._metrics = metrics
        self._clock = clock

    @property
    def url(self) -> str:
        return str(self.inner.url)

    def __getattr__(self, name: str) -> Any:
        # Anything else a source offers (not part of the interface).
        return getattr(self.inner, name)

    def _timed(self, method: str, call: Callable[..., Any], *args: Any) -> Deferred[Any]:
        started = self._clock.seconds()
        d = maybeDeferred(call, *args)

        def done(result: object) -> object:
            self._metrics.metadata_seconds.labels(method).observe(max(0.0, self._clock.seconds() - started))
            if isinstance(result, Failure) or getattr(result, "reachable", True) is False:
                self._metrics.metadata_errors.labels(method).inc()
            return result

        return d.addBoth(done)

    def get_object(self, object_id: str) -> Deferred[Any]:
        return self._timed("get_object", self.inner.get_object, object_id)

    def list_bucket_objects(self, selection: Any) -> Deferred[Any]:
        return self._timed("list_bucket_objects", self.inner.list_bucket_objects, selection)

    def get_storage_endpoints(self) -> Deferred[Any]:
        return self._timed("get_storage_endpoints", self.inner.get_storage_endpoints)

    def get_status(self) -> Deferred[Any]:
        return self._timed("get_status", self.inner.get_status)


class _FailedObjects:
    """Objects whose download failed on some source (so the next attempt is
    a retry); bounded, the oldest forgotten first."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, object_id: str) -> None:
        self._ids[object_id] = None
        self._ids.move_to_end(object_id)
        while len(self._ids) > self.LIMIT:
            self._ids.popitem(last=False)

    def discard(self, object_id: str) -> None:
        self._ids.pop(object_id, None)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._ids


class _Counting:
    """Wraps ``inner`` (everything not overridden passes through) to count
    upstream downloads for ``purpose`` into ``metrics``."""

    def __init__(self, inner: Any, metrics: NodeMetrics, purpose: str, failed: _FailedObjects) -> None:
        self.inner = inner
        self._metrics = metrics
        self._purpose = purpose
        self._failed = failed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@implementer(IStorageClient)
class CountingStorageClient(_Counting):
    """An ``IStorageClient`` counting the object downloads sent through it
    (``get_object``) by endpoint; HEADs and probes pass through uncounted.

    Paired with a :class:`CountingSources` sharing ``failed`` (which says
    whether an attempt is a retry)."""

    def head_object(self, endpoint: Any, object_id: str) -> Any:
        return self.inner.head_object(endpoint, object_id)

    def probe(self, endpoint: Any) -> Any:
        return self.inner.probe(endpoint)

    def get_object(self, endpoint: Any, object_id: str, offset: int = 0, end: int | None = None) -> Any:
        self._metrics.upstream_started.labels(endpoint.url, self._purpose).inc()
        if object_id in self._failed:
            self._metrics.upstream_retried.labels(endpoint.url, self._purpose).inc()
        if end is None:
            return self.inner.get_object(endpoint, object_id, offset)
        return self.inner.get_object(endpoint, object_id, offset, end)


class CountingSources(_Counting):
    """``StorageNodes`` as the cache and the asset server see it: a source
    forgotten after a failure (``forget_source``) counts a failed download,
    one remembered after a success ends the object's retry streak.
    Everything else goes to ``inner``."""

    def forget_source(self, object_id: str, url: str) -> None:
        self._metrics.upstream_failed.labels(url, self._purpose).inc()
        self._failed.add(object_id)
        self.inner.forget_source(object_id, url)

    def remember_source(self, object_id: str, endpoint: Any) -> None:
        self._failed.discard(object_id)
        self.inner.remember_source(object_id, endpoint)


def counting_pair(storage: Any, client: Any, metrics: NodeMetrics, purpose: str) -> tuple[CountingSources, CountingStorageClient]:
    """``storage`` and ``client`` wrapped to count downloads for ``purpose``."""
    failed = _FailedObjects()
    return (
        CountingSources(storage, metrics, purpose, failed),
        CountingStorageClient(client, metrics, purpose, failed),
    )
