"""StorageNodes: probing, ranking, source selection, download slots.

Unit tests drive a fake storage client by hand with a Clock; integration
tests use real simulators and the real StorageClient.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from jsdistributor.errors import MetadataUnavailable, StorageError
from jsdistributor.interfaces import IMetadataSource, IStorageClient
from jsdistributor.model import DataObject, StorageEndpoint
from jsdistributor.storage.client import StorageClient, make_pool
from jsdistributor.storage.ranking import ResponseTimes
from jsdistributor.storage.sources import StorageNodes
from jsdistributor.testing.storage_sim import RunningSim, start_storage_sim


def _sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def ep(n: int) -> StorageEndpoint:
    return StorageEndpoint(bucket_id=str(n), url=f"http://node{n}:3333/api/v1")


@implementer(IMetadataSource)
class FakeMetadata:
    url = "memory:"

    def __init__(self, endpoints: list[StorageEndpoint]) -> None:
        self.endpoints = endpoints
        self.broken = False
        self.calls = 0

    def get_storage_endpoints(self) -> Deferred[list[StorageEndpoint]]:
        self.calls += 1
        if self.broken:
            return fail(MetadataUnavailable("down"))
        return succeed(list(self.endpoints))

    def get_object(self, object_id: str) -> Deferred[DataObject | None]:
        raise NotImplementedError

    def list_bucket_objects(self, selection: Any) -> Deferred[dict[str, Any]]:
        raise NotImplementedError

    def get_status(self) -> Deferred[Any]:
        raise NotImplementedError


@implementer(IStorageClient)
class ManualClient:
    """Every call returns a Deferred the test fires by hand."""

    def __init__(self) -> None:
        self.heads: list[tuple[str, str, Deferred[bool]]] = []
        self.probes: list[tuple[str, Deferred[float]]] = []
        self.cancelled: list[tuple[str, str]] = []  # (kind, url)

    def _deferred(self, kind: str, url: str) -> Deferred[Any]:
        return Deferred(lambda d: self.cancelled.append((kind, url)))

    def head_object(self, endpoint: StorageEndpoint, object_id: str) -> Deferred[bool]:
        d: Deferred[bool] = self._deferred("head", endpoint.url)
        self.heads.append((endpoint.url, object_id, d))
        return d

    def get_object(self, endpoint: StorageEndpoint, object_id: str, offset: int = 0, end: int | None = None) -> Any:
        raise NotImplementedError

    def probe(self, endpoint: StorageEndpoint) -> Deferred[float]:
        d: Deferred[float] = self._deferred("probe", endpoint.url)
        self.probes.append((endpoint.url, d))
        return d

    def pending_heads(self) -> list[str]:
        return [url for url, _, d in self.heads if not d.called]

    def answer(self, url: str, result: bool | Exception) -> None:
        for u, _, d in self.heads:
            if u == url and not d.called:
                if isinstance(result, Exception):
                    d.errback(result)
                else:
                    d.callback(result)
                return
        raise AssertionError(f"no pending HEAD for {url}")


def obj(*endpoints: StorageEndpoint, object_id: str = "42") -> DataObject:
    return DataObject(id=object_id, size=10, ipfs_hash="h", is_accepted=True, storage_endpoints=endpoints)


class Base(SynchronousTestCase):
    def make(self, endpoints: list[StorageEndpoint] | None = None, **kwargs: Any) -> StorageNodes:
        self.clock = Clock()
        self.client = ManualClient()
        self.metadata = FakeMetadata(endpoints or [])
        options: dict[str, Any] = dict(probe_interval=60, source_ttl=30, max_concurrent_downloads=2)
        options.update(kwargs)
        return StorageNodes(self.clock, self.client, self.metadata, **options)

    def rank_times(self, nodes: StorageNodes, **seconds: float) -> None:
        for n, value in seconds.items():
            nodes.response_times.record(ep(int(n[1:])).url, value)


class FindSourcesTests(Base):
    def test_interfaces(self) -> None:
        verifyObject(IStorageClient, StorageClient(reactor, make_pool(reactor, 1), 1.0))

    def test_checks_in_rank_order_and_returns_available(self) -> None:
        nodes = self.make(availability_concurrency=5)
        self.rank_times(nodes, n1=0.3, n2=0.1, n3=0.2)
        d = nodes.find_sources(obj(ep(1), ep(2), ep(3)))
        self.assertEqual([url for url, _, _ in self.client.heads], [ep(2).url, ep(3).url, ep(1).url])
        self.client.answer(ep(1).url, True)
        self.client.answer(ep(2).url, False)
        self.assertNoResult(d)  # ep(3), ranked before ep(1), has not answered
        self.client.answer(ep(3).url, True)
        self.assertEqual(self.successResultOf(d), [ep(3), ep(1)])

    def test_bounded_concurrency(self) -> None:
        nodes = self.make(availability_concurrency=2)
        endpoints = [ep(i) for i in range(1, 6)]
        self.rank_times(nodes, n1=0.1, n2=0.2, n3=0.3, n4=0.4, n5=0.5)
        d = nodes.find_sources(obj(*endpoints))
        self.assertEqual(self.client.pending_heads(), [ep(1).url, ep(2).url])
        self.client.answer(ep(2).url, False)
        self.assertEqual(self.client.pending_heads(), [ep(1).url, ep(3).url])
        self.client.answer(ep(1).url, StorageError("boom"))
        self.client.answer(ep(3).url, False)
        self.assertEqual(self.client.pending_heads(), [ep(4).url, ep(5).url])
        self.client.answer(ep(5).url, True)
        self.client.answer(ep(4).url, False)
        self.assertEqual(self.successResultOf(d), [ep(5)])

    def test_stops_at_max_sources_and_cancels_rest(self) -> None:
        nodes = self.make(availability_concurrency=4, max_sources=2)
        self.rank_times(nodes, n1=0.1, n2=0.2, n3=0.3, n4=0.4)
        d = nodes.find_sources(obj(ep(1), ep(2), ep(3), ep(4)))
        self.client.answer(ep(1).url, True)
        self.client.answer(ep(2).url, True)
        self.assertEqual(self.successResultOf(d), [ep(1), ep(2)])
        self.assertEqual(self.client.cancelled, [("head", ep(3).url), ("head", ep(4).url)])
        self.assertEqual(len(self.client.heads), 4)

    def test_nothing_available(self) -> None:
        nodes = self.make()
        d = nodes.find_sources(obj(ep(1), ep(2)))
        self.client.answer(ep(1).url, False)
        self.client.answer(ep(2).url, StorageError("down"))
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.successResultOf(nodes.find_sources(obj())), [])

    def test_head_error_penalises_node(self) -> None:
        nodes = self.make()
        self.rank_times(nodes, n1=0.1, n2=0.2)
        d = nodes.find_sources(obj(ep(1), ep(2)))
        self.client.answer(ep(1).url, StorageError("connection refused"))
        self.client.answer(ep(2).url, True)
        self.assertEqual(self.successResultOf(d), [ep(2)])
        self.assertTrue(nodes.response_times.is_penalised(ep(1).url))
        self.assertEqual(nodes.response_times.rank([ep(1).url, ep(2).url]), [ep(2).url, ep(1).url])

    def test_exclude_and_duplicates(self) -> None:
        nodes = self.make()
        d = nodes.find_sources(obj(ep(1), ep(2), ep(2), ep(3)), exclude=frozenset({ep(1).url}))
        self.assertEqual(sorted(self.client.pending_heads()), [ep(2).url, ep(3).url])
        self.client.answer(ep(2).url, True)
        self.client.answer(ep(3).url, True)
        self.assertEqual(self.successResultOf(d), [ep(2), ep(3)])

    def test_cancel(self) -> None:
        nodes = self.make()
        d = nodes.find_sources(obj(ep(1), ep(2)))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.client.cancelled, [("head", ep(1).url), ("head", ep(2).url)])

    def test_invalid_object_id(self) -> None:
        nodes = self.make()
        self.failureResultOf(nodes.find_sources(obj(ep(1), object_id="x1")), ValueError)
        self.assertEqual(self.client.heads, [])


class RememberedSourceTests(Base):
    def test_remembered_source_skips_head(self) -> None:
        nodes = self.make(source_ttl=30)
        nodes.remember_source("42", ep(2))
        self.assertEqual(self.successResultOf(nodes.find_sources(obj(ep(1), ep(2)))), [ep(2)])
        self.assertEqual(self.client.heads, [])

    def test_forget_source(self) -> None:
        nodes = self.make(source_ttl=30)
        nodes.remember_source("42", ep(2))
        nodes.forget_source("42", ep(1).url)  # another url: no effect
        self.assertEqual(nodes.remembered_source("42"), ep(2))
        nodes.forget_source("42", ep(2).url)
        d = nodes.find_sources(obj(ep(1), ep(2)))
        self.assertEqual(len(self.client.heads), 2)
        self.client.answer(ep(1).url, True)
        self.client.answer(ep(2).url, True)
        self.assertEqual(len(self.successResultOf(d)), 2)

    def test_ttl_expiry(self) -> None:
        nodes = self.make(source_ttl=30)
        nodes.remember_source("42", ep(2))
        self.clock.advance(29.9)
        self.assertEqual(nodes.remembered_source("42"), ep(2))
        self.clock.advance(0.1)
        self.assertIsNone(nodes.remembered_source("42"))
        nodes.find_sources(obj(ep(1), ep(2)))
        self.assertEqual(len(self.client.heads), 2)

    def test_remembered_but_excluded_or_not_listed(self) -> None:
        nodes = self.make(source_ttl=30)
        nodes.remember_source("42", ep(2))
        nodes.find_sources(obj(ep(1), ep(2)), exclude=frozenset({ep(2).url}))
        self.assertEqual(self.client.pending_heads(), [ep(1).url])
        nodes.find_sources(obj(ep(1), ep(3)))
        self.assertEqual(len(self.client.heads), 3)

    def test_ttl_zero_disables(self) -> None:
        nodes = self.make(source_ttl=0)
        nodes.remember_source("42", ep(2))
        self.assertIsNone(nodes.remembered_source("42"))


class ProbeTests(Base):
    def test_probe_all_records_times(self) -> None:
        nodes = self.make([ep(1), ep(2), ep(3)])
        d = nodes.probe_all()
        self.assertEqual(len(self.client.probes), 3)
        self.client.probes[0][1].callback(0.5)
        self.client.probes[1][1].callback(0.1)
        self.client.probes[2][1].errback(StorageError("refused"))
        self.successResultOf(d)
        self.assertEqual(nodes.response_times.rank([e.url for e in nodes.endpoints]),
                         [ep(2).url, ep(1).url, ep(3).url])
        self.assertTrue(nodes.response_times.is_penalised(ep(3).url))

    def test_at_most_ten_probes_at_once(self) -> None:
        endpoints = [ep(i) for i in range(25)]
        nodes = self.make(endpoints)
        d = nodes.probe_all()
        self.assertEqual(len(self.client.probes), 10)
        for i in range(25):
            self.assertLessEqual(sum(1 for _, p in self.client.probes if not p.called), 10)
            self.client.probes[i][1].callback(0.01 * i)
        self.successResultOf(d)
        self.assertEqual(len(self.client.probes), 25)

    def test_same_url_probed_once(self) -> None:
        nodes = self.make([ep(1), StorageEndpoint("9", ep(1).url)])
        nodes.probe_all()
        self.assertEqual(len(self.client.probes), 1)

    def test_metadata_failure_keeps_last_list(self) -> None:
        nodes = self.make([ep(1), ep(2)])
        nodes.probe_all()
        for _, p in self.client.probes:
            p.callback(0.1)
        self.metadata.broken = True
        d = nodes.probe_all()
        self.assertEqual(nodes.endpoints, [ep(1), ep(2)])
        self.assertEqual(len(self.client.probes), 4)
        for _, p in self.client.probes[2:]:
            p.callback(0.1)
        self.successResultOf(d)

    def test_endpoints_leaving_are_forgotten(self) -> None:
        nodes = self.make([ep(1), ep(2)])
        nodes.probe_all()
        for _, p in self.client.probes:
            p.callback(0.1)
        self.metadata.endpoints = [ep(2)]
        nodes.probe_all()
        self.assertIsNone(nodes.response_times.mean(ep(1).url))

    def test_loop_and_stop(self) -> None:
        nodes = self.make([ep(1), ep(2)], probe_interval=60)
        nodes.startService()
        self.assertTrue(nodes.running)
        self.assertEqual(self.metadata.calls, 1)  # first run immediately
        for _, p in self.client.probes:
            p.callback(0.1)
        self.clock.advance(60)
        self.assertEqual(self.metadata.calls, 2)
        self.assertEqual(len(self.client.probes), 4)
        # Stop while those two probes are in flight: they are cancelled,
        # and not counted as failures.
        d = nodes.stopService()
        self.successResultOf(d)
        self.assertEqual(sorted(self.client.cancelled), [("probe", ep(1).url), ("probe", ep(2).url)])
        self.assertFalse(nodes.response_times.is_penalised(ep(1).url))
        self.clock.advance(600)
        self.assertEqual(self.metadata.calls, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_drops_queued_probes(self) -> None:
        nodes = self.make([ep(i) for i in range(15)], max_concurrent_probes=10)
        nodes.start()
        self.assertEqual(len(self.client.probes), 10)
        self.successResultOf(nodes.stop())
        self.assertEqual(len(self.client.probes), 10, "queued probes must not start after stop")

    def test_penalty_from_response_times(self) -> None:
        times = ResponseTimes(failure_penalty=4.0)
        nodes = self.make([ep(1)], response_times=times)
        nodes.probe_all()
        self.client.probes[0][1].errback(StorageError("timeout"))
        self.assertEqual(times.mean(ep(1).url), 4.0)


class DownloadSlotTests(Base):
    def test_queueing(self) -> None:
        nodes = self.make(max_concurrent_downloads=2)
        first = self.successResultOf(nodes.download_slot())
        second = self.successResultOf(nodes.download_slot())
        third = nodes.download_slot()
        fourth = nodes.download_slot()
        self.assertNoResult(third)
        self.assertEqual((nodes.active_downloads, nodes.queued_downloads), (2, 2))
        fourth.cancel()
        self.failureResultOf(fourth, CancelledError)
        first()
        first()  # idempotent
        release = self.successResultOf(third)
        self.assertEqual((nodes.active_downloads, nodes.queued_downloads), (2, 0))
        second()
        release()
        self.assertEqual(nodes.active_downloads, 0)

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, self.make, max_concurrent_downloads=0)
        self.assertRaises(ValueError, self.make, probe_interval=0)


class IntegrationTests(TestCase):
    """Real simulators, the real client."""

    async def start_sim(self, **kwargs: Any) -> RunningSim:
        running = await start_storage_sim(reactor, **kwargs)
        self.addCleanup(running.stop)
        return running

    def make_nodes(self, endpoints: list[StorageEndpoint], max_connections: int = 10) -> StorageNodes:
        pool = make_pool(reactor, max_connections)
        self.addCleanup(pool.closeCachedConnections)
        client = StorageClient(reactor, pool, 1.0, max_connections=max_connections)
        self.metadata = FakeMetadata(endpoints)
        return StorageNodes(
            reactor,
            client,
            self.metadata,
            probe_interval=60,
            source_ttl=30,
            max_concurrent_downloads=2,
            response_times=ResponseTimes(failure_penalty=2.0),
        )

    async def test_faster_node_ranks_first(self) -> None:
        slow = await self.start_sim(objects={"1": b"data"})
        fast = await self.start_sim(objects={"1": b"data"})
        slow.sim.configure(version_latency=0.2)
        nodes = self.make_nodes([slow.endpoint("0"), fast.endpoint("1")])
        await nodes.probe_all()
        found = await nodes.find_sources(obj(slow.endpoint("0"), fast.endpoint("1"), object_id="1"))
        self.assertEqual(found, [fast.endpoint("1"), slow.endpoint("0")])
        # Now the other way round: two probes are enough to swap the means
        # (fast: [0, .2, .2] vs slow: [.2, 0, 0]).
        slow.sim.configure(version_latency=0.0)
        fast.sim.configure(version_latency=0.2)
        for _ in range(2):
            await nodes.probe_all()
        found = await nodes.find_sources(obj(slow.endpoint("0"), fast.endpoint("1"), object_id="1"))
        self.assertEqual(found, [slow.endpoint("0"), fast.endpoint("1")])

    async def test_dead_node_skipped_and_ranked_last(self) -> None:
        good = await self.start_sim(objects={"1": b"data"})
        dead = await self.start_sim(objects={"1": b"data"})
        nodes = self.make_nodes([dead.endpoint("0"), good.endpoint("1")])
        good.sim.configure(version_latency=0.05)
        await nodes.probe_all()
        self.assertEqual(nodes.response_times.rank([dead.url, good.url]), [dead.url, good.url])
        dead.sim.configure(refuse=True)
        await nodes.probe_all()
        self.assertEqual(nodes.response_times.rank([dead.url, good.url]), [good.url, dead.url])
        found = await nodes.find_sources(obj(dead.endpoint("0"), good.endpoint("1"), object_id="1"))
        self.assertEqual(found, [good.endpoint("1")])
        # The node comes back on the same port.
        await dead.stop()
        dead.sim.configure(refuse=False)
        await dead.start()
        for _ in range(10):
            await nodes.probe_all()
        found = await nodes.find_sources(obj(dead.endpoint("0"), good.endpoint("1"), object_id="1"))
        self.assertEqual(found, [dead.endpoint("0"), good.endpoint("1")])

    async def test_missing_on_best_moves_to_next(self) -> None:
        best = await self.start_sim(objects={})
        other = await self.start_sim(objects={"1": b"data"})
        other.sim.configure(version_latency=0.1)
        nodes = self.make_nodes([best.endpoint("0"), other.endpoint("1")])
        await nodes.probe_all()
        self.assertEqual(nodes.response_times.rank([other.url, best.url]), [best.url, other.url])
        found = await nodes.find_sources(obj(best.endpoint("0"), other.endpoint("1"), object_id="1"))
        self.assertEqual(found, [other.endpoint("1")])
        self.assertEqual(best.sim.requests_for("1", "HEAD")[0].object_id, "1")
        # After a successful download, the next lookup uses it without HEAD.
        nodes.remember_source("1", other.endpoint("1"))
        heads = other.sim.counts["HEAD"]
        self.assertEqual(await nodes.find_sources(obj(best.endpoint("0"), other.endpoint("1"), object_id="1")),
                         [other.endpoint("1")])
        self.assertEqual(other.sim.counts["HEAD"], heads)

    async def test_service_probes_periodically(self) -> None:
        node = await self.start_sim()
        nodes = self.make_nodes([node.endpoint()])
        nodes.probe_interval = 0.1
        nodes.startService()
        self.addCleanup(nodes.stopService)
        while node.sim.counts["GET"] < 3:
            await _sleep(0.05)
        await nodes.stopService()
        count = node.sim.counts["GET"]
        await _sleep(0.25)
        self.assertEqual(node.sim.counts["GET"], count)
