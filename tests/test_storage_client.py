"""StorageClient against real storage node simulators on 127.0.0.1."""

from __future__ import annotations

import gzip
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, DeferredList, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse
from zope.interface.verify import verifyObject

from jsdistributor.errors import StorageError
from jsdistributor.model import StorageEndpoint
from jsdistributor.storage.client import StorageClient, StorageResponse, make_pool, parse_content_range
from jsdistributor.testing.storage_sim import RunningSim, start_storage_sim

from .bodies import Collect, sleep

DATA = bytes((i * 13) % 256 for i in range(100_000))


async def read_all(response: StorageResponse) -> tuple[bytes, Collect]:
    body = Collect()
    response.deliverBody(body)
    await body.done
    return bytes(body.data), body


class ClientTestCase(TestCase):
    timeout_seconds = 2.0
    max_connections = 10

    async def start_sim(self, **kwargs: Any) -> RunningSim:
        running = await start_storage_sim(reactor, **kwargs)
        self.addCleanup(running.stop)
        return running

    def setUp(self) -> None:
        self.pool = make_pool(reactor, self.max_connections)
        self.addCleanup(self.pool.closeCachedConnections)
        self.client = StorageClient(reactor, self.pool, self.timeout_seconds, max_connections=self.max_connections)


class HeadTests(ClientTestCase):
    async def test_found_and_missing(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        self.assertTrue(await self.client.head_object(node.endpoint(), "1"))
        self.assertFalse(await self.client.head_object(node.endpoint(), "2"))
        self.assertEqual(self.client.active_requests, 0)

    async def test_other_status_is_storage_error(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(head_status=500)
        with self.assertRaises(StorageError) as caught:
            await self.client.head_object(node.endpoint(), "1")
        self.assertIn("500", str(caught.exception))
        self.assertEqual(self.client.active_requests, 0)

    async def test_redirect_not_followed(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(head_status=302)
        with self.assertRaises(StorageError):
            await self.client.head_object(node.endpoint(), "1")
        self.assertEqual(node.sim.counts["HEAD"], 1)

    async def test_trailing_slash_endpoint(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        self.assertTrue(await self.client.head_object(StorageEndpoint("0", node.url + "/"), "1"))
        self.assertEqual(node.sim.requests[0].object_id, "1")

    async def test_connection_refused(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        await node.stop()
        with self.assertRaises(StorageError):
            await self.client.head_object(node.endpoint(), "1")

    async def test_node_dropping_connections(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(refuse=True)
        with self.assertRaises(StorageError):
            await self.client.head_object(node.endpoint(), "1")

    def test_invalid_object_id(self) -> None:
        endpoint = StorageEndpoint("0", "http://127.0.0.1:1/api/v1")
        for bad in ("", "1a", "../1", "1/2", "١", "1" * 21):
            self.assertRaises(ValueError, self.client.head_object, endpoint, bad)
            self.assertRaises(ValueError, self.client.get_object, endpoint, bad)
        self.assertEqual(self.client.active_requests, 0)

    async def test_unusable_endpoint_url(self) -> None:
        for url in ("ftp://example/api/v1", "http://127.0.0.1:notaport/api/v1", "http://exämple/api/v1"):
            with self.assertRaises(StorageError, msg=url):
                await self.client.head_object(StorageEndpoint("0", url), "1")
        self.assertEqual(self.client.active_requests, 0)


class GetTests(ClientTestCase):
    async def test_whole_object(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        response = await self.client.get_object(node.endpoint(), "1")
        verifyObject(IResponse, response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, len(DATA))
        self.assertFalse(response.range_requested)
        self.assertEqual(self.client.active_requests, 1, "the slot is held until the body is read")
        data, body = await read_all(response)
        self.assertEqual(data, DATA)
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))
        self.assertTrue(response.released)
        self.assertEqual(self.client.active_requests, 0)
        self.assertEqual(node.sim.requests[0].range_header, None)

    async def test_ranges(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        response = await self.client.get_object(node.endpoint(), "1", offset=1000)
        self.assertEqual(response.code, 206)
        self.assertFalse(response.range_ignored)
        self.assertEqual(response.content_range, (1000, len(DATA) - 1, len(DATA)))
        data, _ = await read_all(response)
        self.assertEqual(data, DATA[1000:])
        response = await self.client.get_object(node.endpoint(), "1", offset=10, end=19)
        self.assertEqual(response.content_range, (10, 19, len(DATA)))
        data, _ = await read_all(response)
        self.assertEqual(data, DATA[10:20])
        self.assertEqual([r.range_header for r in node.sim.requests], ["bytes=1000-", "bytes=10-19"])

    async def test_range_ignored_is_visible(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(ignore_range=True)
        response = await self.client.get_object(node.endpoint(), "1", offset=10)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.range_ignored)
        self.assertIsNone(response.content_range)
        data, _ = await read_all(response)
        self.assertEqual(data, DATA)

    def test_bad_range_arguments(self) -> None:
        endpoint = StorageEndpoint("0", "http://127.0.0.1:1/api/v1")
        self.assertRaises(ValueError, self.client.get_object, endpoint, "1", offset=-1)
        self.assertRaises(ValueError, self.client.get_object, endpoint, "1", offset=10, end=9)

    async def test_raw_bytes_no_decoding(self) -> None:
        compressed = gzip.compress(b"hello " * 1000)
        node = await self.start_sim(objects={"1": compressed})
        node.sim.configure(content_encoding="gzip")
        response = await self.client.get_object(node.endpoint(), "1")
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        data, _ = await read_all(response)
        self.assertEqual(data, compressed, "the client must not decode")
        sent = node.sim.request_headers[0]
        self.assertEqual(sent.getRawHeaders(b"accept-encoding"), [b"identity"])

    async def test_error_statuses(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        with self.assertRaises(StorageError) as caught:
            await self.client.get_object(node.endpoint(), "2")
        self.assertIn("404", str(caught.exception))
        node.sim.configure(fail_status=500)
        with self.assertRaises(StorageError) as caught:
            await self.client.get_object(node.endpoint(), "1")
        self.assertIn("500", str(caught.exception))
        node.sim.configure(fail_status=301)
        with self.assertRaises(StorageError):
            await self.client.get_object(node.endpoint(), "1")
        self.assertEqual(self.client.active_requests, 0)

    async def test_short_body_is_visible(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(truncate_to=500)
        response = await self.client.get_object(node.endpoint(), "1")
        data, body = await read_all(response)
        self.assertEqual(data, DATA[:500])
        assert body.reason is not None
        self.assertFalse(body.reason.check(ResponseDone))
        self.assertEqual(self.client.active_requests, 0)

    async def test_abandon(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(stall_after=100)
        response = await self.client.get_object(node.endpoint(), "1")
        response.abandon()
        response.abandon()
        self.assertTrue(response.released)
        self.assertEqual(self.client.active_requests, 0)
        for _ in range(50):
            if node.sim.in_flight == 0:
                break
            await sleep(0.01)
        self.assertEqual(node.sim.in_flight, 0, "abandon must close the connection")
        self.assertRaises(RuntimeError, response.deliverBody, Collect())

    async def test_stop_transport_releases(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(stall_after=100)
        response = await self.client.get_object(node.endpoint(), "1")
        body = Collect()
        response.deliverBody(body)
        await sleep(0.05)
        self.assertFalse(response.released)
        body.transport.stopProducing()
        await body.done
        self.assertTrue(response.released)
        self.assertEqual(self.client.active_requests, 0)


class TimeoutTests(ClientTestCase):
    timeout_seconds = 0.2

    async def test_head_timeout(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(latency=1.0)
        started = reactor.seconds()
        with self.assertRaises(StorageError) as caught:
            await self.client.head_object(node.endpoint(), "1")
        self.assertLess(reactor.seconds() - started, 0.8)
        self.assertIn("0.2 s", str(caught.exception))
        self.assertEqual(self.client.active_requests, 0)

    async def test_get_timeout_to_headers(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(latency=1.0)
        with self.assertRaises(StorageError):
            await self.client.get_object(node.endpoint(), "1")
        self.assertEqual(self.client.active_requests, 0)

    async def test_get_timeout_does_not_cover_body(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(rate=100_000)  # 100 KB at 100 KB/s: ~1 s, > timeout
        response = await self.client.get_object(node.endpoint(), "1")
        data, _ = await read_all(response)
        self.assertEqual(data, DATA)

    async def test_probe_timeout(self) -> None:
        node = await self.start_sim()
        node.sim.configure(version_latency=1.0)
        with self.assertRaises(StorageError):
            await self.client.probe(node.endpoint())

    async def test_cancel_aborts_request(self) -> None:
        self.client = StorageClient(reactor, self.pool, 5.0)
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(latency=1.0)
        d = self.client.get_object(node.endpoint(), "1")
        await sleep(0.05)
        self.assertEqual(node.sim.in_flight, 1)
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        self.assertEqual(self.client.active_requests, 0)
        for _ in range(50):
            if node.sim.in_flight == 0:
                break
            await sleep(0.01)
        self.assertEqual(node.sim.in_flight, 0, "cancel must close the connection")


class ProbeTests(ClientTestCase):
    async def test_probe_measures_time(self) -> None:
        node = await self.start_sim()
        fast = await self.client.probe(node.endpoint())
        self.assertGreaterEqual(fast, 0.0)
        self.assertLess(fast, 0.2)
        node.sim.configure(version_latency=0.2)
        slow = await self.client.probe(node.endpoint())
        self.assertGreaterEqual(slow, 0.19)
        self.assertEqual(node.sim.counts["GET"], 2)

    async def test_probe_failure(self) -> None:
        node = await self.start_sim()
        node.sim.configure(refuse=True)
        with self.assertRaises(StorageError):
            await self.client.probe(node.endpoint())


class ConcurrencyTests(ClientTestCase):
    max_connections = 2

    async def test_head_limit(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(latency=0.1)
        results = await gatherResults([self.client.head_object(node.endpoint(), "1") for _ in range(6)])
        self.assertEqual(results, [True] * 6)
        self.assertEqual(node.sim.counts["HEAD"], 6)
        self.assertEqual(node.sim.max_in_flight, 2)

    async def test_get_holds_slot_until_body_read(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        first = await self.client.get_object(node.endpoint(), "1")
        second = await self.client.get_object(node.endpoint(), "1")
        third = self.client.get_object(node.endpoint(), "1")
        await sleep(0.1)
        self.assertFalse(third.called, "a third GET must wait for a slot")
        self.assertEqual(self.client.queued_requests, 1)
        self.assertEqual(node.sim.counts["GET"], 2)
        await read_all(first)
        response = await third
        await read_all(second)
        await read_all(response)
        self.assertEqual(node.sim.counts["GET"], 3)
        self.assertLessEqual(node.sim.max_in_flight, 2)
        self.assertEqual(self.client.active_requests, 0)

    async def test_cancel_while_queued(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(latency=0.2)
        running = [self.client.head_object(node.endpoint(), "1") for _ in range(2)]
        queued = self.client.head_object(node.endpoint(), "1")
        self.assertEqual(self.client.queued_requests, 1)
        queued.cancel()
        self.assertEqual(self.client.queued_requests, 0)
        self.failureResultOf(queued, CancelledError)
        await DeferredList(running)
        self.assertEqual(node.sim.counts["HEAD"], 2)
        self.assertEqual(self.client.active_requests, 0)


class PoolAndParsingTests(SynchronousTestCase):
    def test_make_pool(self) -> None:
        pool = make_pool(reactor, 300)
        self.assertTrue(pool.persistent)
        self.assertEqual(pool.maxPersistentPerHost, 20)
        self.assertLess(pool.cachedConnectionTimeout, 5)
        self.assertEqual(make_pool(reactor, 3).maxPersistentPerHost, 3)
        self.assertRaises(ValueError, make_pool, reactor, 0)

    def test_bad_client_parameters(self) -> None:
        pool = make_pool(reactor, 3)
        self.assertRaises(ValueError, StorageClient, reactor, pool, 0)
        self.assertRaises(ValueError, StorageClient, reactor, pool, 1.0, max_connections=0)

    def test_parse_content_range(self) -> None:
        self.assertEqual(parse_content_range(b"bytes 0-9/10"), (0, 9, 10))
        self.assertEqual(parse_content_range(b"bytes 5-9/*"), (5, 9, None))
        for bad in (None, b"", b"bytes */10", b"bytes 5-4/10", b"bytes 0-10/10", b"bits 0-1/2", b"bytes 0-1/2x"):
            self.assertIsNone(parse_content_range(bad), bad)

    @settings(deadline=None)
    @given(st.binary(max_size=40) | st.from_regex(rb"bytes [0-9]{1,3}-[0-9]{1,3}/([0-9]{1,3}|\*)", fullmatch=True))
    def test_parse_content_range_fuzz(self, value: bytes) -> None:
        result = parse_content_range(value)
        if result is not None:
            start, end, total = result
            self.assertLessEqual(start, end)
            if total is not None:
                self.assertLess(end, total)
