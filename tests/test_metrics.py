"""Prometheus metrics: the pieces with fakes and a Clock, then an
in-process node on real sockets scraped at /metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import treq
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from jsdistributor import __version__
from jsdistributor.errors import MetadataUnavailable
from jsdistributor.interfaces import IMetadataSource, IStorageClient
from jsdistributor.metrics import ROUTES, NodeMetrics, TimedMetadataSource, counting_pair, route_of
from jsdistributor.model import MetadataStatus, StorageEndpoint

from .nodeharness import NodeHarness, header, sleep

SMALL = os.urandom(100_000)
OTHER = os.urandom(100_000)


def value(text: str, sample_name: str, **labels: str) -> float:
    """The value of the one sample named ``sample_name`` with ``labels``
    (a subset of its labels); 0 when there is none; fails if ambiguous."""
    found = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if len(found) > 1:
        raise AssertionError(f"{sample_name} {labels}: {len(found)} samples, expected at most one")
    return found[0] if found else 0.0


def total(text: str, sample_name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def render(metrics: NodeMetrics) -> str:
    return metrics.render()[0].decode("utf-8")


class RouteTests(SynchronousTestCase):
    def test_known_routes(self) -> None:
        self.assertEqual(route_of("public", b"/api/v1/assets/12"), "assets")
        self.assertEqual(route_of("public", "/api/v1/asset/12?x=1"), "assets")
        self.assertEqual(route_of("public", b"/api/v1/status"), "status")
        self.assertEqual(route_of("public", b"/api/v1/buckets"), "buckets")
        self.assertEqual(route_of("operator", b"/api/v1/set-worker"), "operator")
        self.assertEqual(route_of("operator", b"/metrics"), "metrics")
        self.assertEqual(route_of("metrics", b"/metrics"), "metrics")
        self.assertEqual(route_of("metrics", b"/api/v1/status"), "other")
        self.assertEqual(route_of("public", b"/metrics"), "other")
        self.assertEqual(route_of("public", b"/favicon.ico"), "other")
        self.assertEqual(route_of("public", b"/api/v1/status/extra"), "other")

    @settings(deadline=None, max_examples=300)
    @given(st.sampled_from(["public", "operator", "metrics"]), st.binary(max_size=300))
    def test_always_a_fixed_label(self, api: str, path: bytes) -> None:
        """Any request path gives one of a few labels (bounded cardinality)."""
        self.assertIn(route_of(api, path), ROUTES)


class ObserveRequestTests(SynchronousTestCase):
    def test_hits_and_misses(self) -> None:
        m = NodeMetrics()
        m.observe_request("public", b"/api/v1/assets/1", 200, 100, "miss")
        m.observe_request("public", b"/api/v1/assets/1", 206, 10, "pending")
        m.observe_request("public", b"/api/v1/assets/1", 200, 100, "hit")
        m.observe_request("public", b"/api/v1/assets/9", 404, 50, None)
        m.observe_request("public", b"/nonsense/" + b"x" * 100, 404, 9, None)
        text = render(m)
        self.assertEqual(value(text, "jsdistributor_http_requests_total", route="assets", status="200"), 2)
        self.assertEqual(value(text, "jsdistributor_http_requests_total", route="assets", status="206"), 1)
        self.assertEqual(value(text, "jsdistributor_http_requests_total", route="assets", status="404"), 1)
        self.assertEqual(value(text, "jsdistributor_http_requests_total", route="other", status="404"), 1)
        self.assertEqual(value(text, "jsdistributor_served_bytes_total", x_cache="miss"), 100)
        self.assertEqual(value(text, "jsdistributor_served_bytes_total", x_cache="pending"), 10)
        self.assertEqual(value(text, "jsdistributor_served_bytes_total", x_cache="hit"), 100)
        self.assertEqual(value(text, "jsdistributor_cache_requests_total", result="hit"), 1)
        self.assertEqual(value(text, "jsdistributor_cache_requests_total", result="miss"), 2)
        self.assertEqual(value(text, "jsdistributor_cache_bytes_served_total", result="miss"), 110)
        self.assertNotIn("nonsense", text, "raw paths never become labels")

    def test_openmetrics_on_request(self) -> None:
        m = NodeMetrics()
        body, content_type = m.render(b"application/openmetrics-text; version=1.0.0")
        self.assertTrue(content_type.startswith("application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))
        _, plain = m.render(None)
        self.assertTrue(plain.startswith("text/plain"), plain)


class _Source:
    url = "catalog:test"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.waiting: Deferred[Any] | None = None
        self.fail = False

    def get_object(self, object_id: str) -> Deferred[Any]:
        self.waiting = Deferred()
        return self.waiting

    def list_bucket_objects(self, selection: Any) -> Deferred[Any]:
        return fail(MetadataUnavailable("down")) if self.fail else succeed({})

    def get_storage_endpoints(self) -> Deferred[Any]:
        return succeed([])

    def get_status(self) -> Deferred[Any]:
        return succeed(MetadataStatus(url=self.url, reachable=not self.fail, error="down" if self.fail else None))

    def reload(self) -> str:
        return "reloaded"


class TimedMetadataSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = NodeMetrics()
        self.inner = _Source(self.clock)
        self.source = TimedMetadataSource(self.inner, self.metrics, self.clock)

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(IMetadataSource, self.source))
        self.assertEqual(self.source.url, "catalog:test")
        self.assertEqual(self.source.reload(), "reloaded", "other attributes reach the source")

    def test_latency_from_the_clock(self) -> None:
        d = self.source.get_object("1")
        self.clock.advance(0.3)
        self.assertNoResult(d)
        assert self.inner.waiting is not None
        self.inner.waiting.callback(None)
        self.assertIsNone(self.successResultOf(d))
        text = render(self.metrics)
        self.assertEqual(value(text, "jsdistributor_metadata_request_seconds_count", method="get_object"), 1)
        self.assertAlmostEqual(value(text, "jsdistributor_metadata_request_seconds_sum", method="get_object"), 0.3)
        self.assertEqual(value(text, "jsdistributor_metadata_request_seconds_bucket", method="get_object", le="0.25"), 0)
        self.assertEqual(value(text, "jsdistributor_metadata_request_seconds_bucket", method="get_object", le="0.5"), 1)
        self.assertEqual(value(text, "jsdistributor_metadata_errors_total", method="get_object"), 0)

    def test_errors_pass_through_and_are_counted(self) -> None:
        self.inner.fail = True
        self.failureResultOf(self.source.list_bucket_objects(None), MetadataUnavailable)
        status = self.successResultOf(self.source.get_status())
        self.assertFalse(status.reachable)
        text = render(self.metrics)
        self.assertEqual(value(text, "jsdistributor_metadata_errors_total", method="list_bucket_objects"), 1)
        self.assertEqual(value(text, "jsdistributor_metadata_errors_total", method="get_status"), 1, "unreachable")


class _Client:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def head_object(self, endpoint: Any, object_id: str) -> Deferred[bool]:
        return succeed(True)

    def get_object(self, endpoint: Any, object_id: str, offset: int = 0, end: int | None = None) -> Deferred[str]:
        self.calls.append((endpoint.url, object_id, offset, end))
        return succeed("response")

    def probe(self, endpoint: Any) -> Deferred[float]:
        return succeed(0.1)


class _Nodes:
    def __init__(self) -> None:
        self.forgotten: list[tuple[str, str]] = []
        self.remembered: list[str] = []
        self.endpoints: list[StorageEndpoint] = []

    def forget_source(self, object_id: str, url: str) -> None:
        self.forgotten.append((object_id, url))

    def remember_source(self, object_id: str, endpoint: Any) -> None:
        self.remembered.append(object_id)


class CountingTests(SynchronousTestCase):
    def test_started_failed_retried_by_endpoint(self) -> None:
        metrics = NodeMetrics()
        nodes, client = _Nodes(), _Client()
        sources, counting = counting_pair(nodes, client, metrics, "cache")
        self.assertTrue(verifyObject(IStorageClient, counting))
        a, b = StorageEndpoint("0", "http://a/api/v1"), StorageEndpoint("0", "http://b/api/v1")
        self.assertEqual(self.successResultOf(counting.get_object(a, "7", 0)), "response")
        sources.forget_source("7", a.url)  # a failed mid-way
        counting.get_object(b, "7", 500)  # resumed elsewhere: a retry
        sources.remember_source("7", b)
        counting.get_object(b, "8")  # another object: not a retry
        counting.get_object(b, "7", 0, 10)  # after success: not a retry either
        self.assertEqual(client.calls[-1], ("http://b/api/v1", "7", 0, 10))
        self.assertEqual(nodes.forgotten, [("7", a.url)])
        self.assertEqual(nodes.remembered, ["7"])
        self.assertEqual(sources.endpoints, [], "other attributes reach StorageNodes")
        text = render(metrics)
        started = "jsdistributor_upstream_downloads_started_total"
        self.assertEqual(value(text, started, endpoint=a.url, purpose="cache"), 1)
        self.assertEqual(value(text, started, endpoint=b.url, purpose="cache"), 3)
        self.assertEqual(value(text, "jsdistributor_upstream_downloads_failed_total", endpoint=a.url), 1)
        self.assertEqual(value(text, "jsdistributor_upstream_downloads_retried_total", endpoint=b.url), 1)
        self.assertEqual(value(text, "jsdistributor_upstream_downloads_retried_total", endpoint=a.url), 0)


class _NodeCase(TestCase):
    """An in-process node on real sockets, scraped at /metrics."""

    timeout = 60

    def setUp(self) -> Any:
        self.h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self.h.start({"1": SMALL, "2": OTHER}, sims=2, **self.config()))

    def config(self) -> dict[str, Any]:
        return {"metrics.port": 0}

    async def scrape(self, url: str | None = None) -> tuple[Any, str]:
        assert self.h.node is not None
        if url is None:
            port = self.h.node.operator_service.listening_port.getHost().port
            url = f"http://127.0.0.1:{port}/metrics"
        response = await self.h.http.get(url)
        return response, (await treq.content(response)).decode("utf-8")


class NodeMetricsTests(_NodeCase):
    """A miss, a hit, a 404, then a scrape."""

    async def _miss_hit_404(self) -> None:
        r, body = await self.h.get("/assets/1")
        self.assertEqual((r.code, header(r, "x-cache"), body), (200, "miss", SMALL))
        await sleep(0.05)
        r, body = await self.h.get("/assets/1")
        self.assertEqual((r.code, header(r, "x-cache")), (200, "hit"))
        r, _ = await self.h.get("/assets/404")
        self.assertEqual(r.code, 404)
        r, _ = await self.h.get("/status")
        self.assertEqual(r.code, 200)

        response, text = await self.scrape()
        self.assertEqual(response.code, 200)
        self.assertTrue(header(response, "content-type").startswith("text/plain"))
        requests = "jsdistributor_http_requests_total"
        self.assertEqual(value(text, requests, api="public", route="assets", status="200"), 2)
        self.assertEqual(value(text, requests, api="public", route="assets", status="404"), 1)
        self.assertEqual(value(text, requests, api="public", route="status", status="200"), 1)
        self.assertEqual(value(text, "jsdistributor_served_bytes_total", x_cache="miss"), len(SMALL))
        self.assertEqual(value(text, "jsdistributor_served_bytes_total", x_cache="hit"), len(SMALL))
        self.assertEqual(value(text, "jsdistributor_cache_requests_total", result="hit"), 1)
        self.assertEqual(value(text, "jsdistributor_cache_requests_total", result="miss"), 1)
        self.assertEqual(value(text, "jsdistributor_cache_bytes_served_total", result="hit"), len(SMALL))
        self.assertEqual(value(text, "jsdistributor_cache_objects"), 1)
        self.assertEqual(value(text, "jsdistributor_cache_used_bytes"), len(SMALL))
        self.assertEqual(value(text, "jsdistributor_cache_limit_bytes"), 1024**3)
        self.assertEqual(value(text, "jsdistributor_pending_downloads", state="downloading"), 0)
        self.assertEqual(value(text, "jsdistributor_downloads_total", outcome="completed"), 1)
        self.assertEqual(value(text, "jsdistributor_build_info", version=__version__), 1)

        # Exactly one download, from one of the two storage nodes.
        started = [
            s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "jsdistributor_upstream_downloads_started_total" and s.value
        ]
        self.assertEqual(len(started), 1, started)
        self.assertEqual(started[0].value, 1)
        self.assertEqual(started[0].labels["purpose"], "cache")
        urls = {e.url for e in self.h.node.components.storage.endpoints}
        self.assertIn(started[0].labels["endpoint"], urls)
        self.assertEqual(total(text, "jsdistributor_upstream_downloads_failed_total"), 0)
        self.assertEqual(sum(len(s.sim.requests_for("1", "GET")) for s in self.h.sims), 1)

        # Storage nodes were probed at start: a response time for each.
        for url in urls:
            self.assertGreater(value(text, "jsdistributor_upstream_response_time_seconds", endpoint=url), 0)
        # The catalog answered get_object for /assets/1 (twice) and /assets/404.
        self.assertGreaterEqual(
            value(text, "jsdistributor_metadata_request_seconds_count", method="get_object"), 2
        )
        # This scrape's own connection is open.
        self.assertGreaterEqual(value(text, "jsdistributor_http_connections", api="operator"), 1)

        # The scrape itself is counted (at the next scrape).
        _, again = await self.scrape()
        self.assertEqual(value(again, requests, api="operator", route="metrics", status="200"), 1)

        # The metrics port serves the same registry, and only /metrics.
        assert self.h.node is not None and self.h.node.metrics_service is not None
        port = self.h.node.metrics_service.listening_port.getHost().port
        response, separate = await self.scrape(f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(value(separate, "jsdistributor_served_bytes_total", x_cache="hit"), len(SMALL))
        response, _ = await self.scrape(f"http://127.0.0.1:{port}/api/v1/status")
        self.assertEqual(response.code, 404)

    def test_miss_hit_404_then_scrape(self) -> Any:
        return ensureDeferred(self._miss_hit_404())


class EvictionMetricsTests(_NodeCase):
    def config(self) -> dict[str, Any]:
        return {"storage": "150K"}

    async def _eviction(self) -> None:
        await self.h.get("/assets/1")
        await sleep(0.05)
        await self.h.get("/assets/2")  # no room for both: 1 is evicted
        await sleep(0.05)
        _, text = await self.scrape()
        self.assertEqual(value(text, "jsdistributor_cache_evictions_total"), 1)
        self.assertEqual(value(text, "jsdistributor_cache_objects"), 1)
        self.assertEqual(value(text, "jsdistributor_cache_used_bytes"), len(OTHER))

    def test_eviction_counted(self) -> Any:
        return ensureDeferred(self._eviction())
