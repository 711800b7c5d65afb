"""The storage node simulator: routes, ranges, every knob, restart.

Most tests talk to a real simulator on 127.0.0.1 with a plain Agent (not our
storage client: the simulator is checked independently of what it tests);
the body streamer and the range parser are also unit-tested with a Clock.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from treq.testing import StubTreq

from jsdistributor.testing.storage_sim import (
    CORRUPT_EVERY,
    EXTRA_BYTE,
    UNSATISFIABLE,
    BodyStreamer,
    Knobs,
    RequestRecord,
    RunningSim,
    StorageNodeSimulator,
    parse_range,
    start_storage_sim,
)

from .bodies import Collect, sleep

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10248 bytes, sniffed as image/png
DATA = bytes((i * 7) % 251 for i in range(50_000))


class SimTestCase(TestCase):
    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)

    async def start_sim(self, **kwargs: Any) -> RunningSim:
        running = await start_storage_sim(reactor, **kwargs)
        self.addCleanup(running.stop)
        return running

    async def request(
        self, url: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None
    ) -> tuple[IResponse, Collect]:
        raw = Headers({k: [v] for k, v in (headers or {}).items()})
        response = await self.agent.request(method, url.encode("ascii"), raw)
        body = Collect()
        response.deliverBody(body)
        return response, body

    async def fetch(
        self, url: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None
    ) -> tuple[IResponse, Collect]:
        response, body = await self.request(url, method, headers)
        await body.done
        return response, body


class _Raw(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(bytes(self.received))


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, return everything received until the server closes
    (HTTP/1.0: one request per connection)."""
    protocol = _Raw(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return await protocol.done


def header(response: IResponse, name: bytes) -> bytes | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class RoutesTests(SimTestCase):
    async def test_get_whole_object(self) -> None:
        node = await self.start_sim(objects={"1": PNG})
        self.assertEqual(node.url, f"http://127.0.0.1:{node.port}/api/v1")
        self.assertEqual(node.node_endpoint, f"http://127.0.0.1:{node.port}/")
        response, body = await self.fetch(node.url + "/files/1")
        self.assertEqual(response.code, 200)
        self.assertTrue(body.clean)
        self.assertEqual(bytes(body.data), PNG)
        self.assertEqual(response.length, len(PNG))
        self.assertEqual(header(response, b"content-type"), b"image/png")
        self.assertEqual(header(response, b"accept-ranges"), b"bytes")
        self.assertIsNone(header(response, b"content-encoding"))

    async def test_unknown_type_is_octet_stream(self) -> None:
        node = await self.start_sim(objects={"2": b"just some bytes"})
        response, _ = await self.fetch(node.url + "/files/2")
        self.assertEqual(header(response, b"content-type"), b"application/octet-stream")

    async def test_head(self) -> None:
        node = await self.start_sim(objects={"1": PNG})
        raw = await raw_exchange(node.port, b"HEAD /api/v1/files/1 HTTP/1.0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        self.assertEqual(lines[0], b"http/1.0 200 ok")
        self.assertIn(b"content-length: %d" % len(PNG), lines)
        self.assertIn(b"content-type: image/png", lines)
        self.assertEqual(body, b"")
        response, _ = await self.fetch(node.url + "/files/99", b"HEAD")
        self.assertEqual(response.code, 404)

    async def test_get_sends_exact_headers(self) -> None:
        node = await self.start_sim(objects={"1": b"abc"})
        raw = await raw_exchange(node.port, b"GET /api/v1/files/1 HTTP/1.0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        self.assertIn(b"content-length: 3", lines)
        self.assertFalse([line for line in lines if line.startswith(b"content-encoding")])
        self.assertEqual(body, b"abc")

    async def test_unknown_object_404_json(self) -> None:
        node = await self.start_sim(objects={})
        response, body = await self.fetch(node.url + "/files/99")
        self.assertEqual(response.code, 404)
        self.assertEqual(header(response, b"content-type"), b"application/json; charset=utf-8")
        self.assertIn("message", json.loads(bytes(body.data)))

    async def test_invalid_id_400(self) -> None:
        node = await self.start_sim(objects={})
        response, _ = await self.fetch(node.url + "/files/12a")
        self.assertEqual(response.code, 400)

    async def test_version(self) -> None:
        node = await self.start_sim()
        response, body = await self.fetch(node.url + "/version")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(bytes(body.data)), {"version": "sim-1.0.0"})

    async def test_other_path_404(self) -> None:
        node = await self.start_sim()
        response, _ = await self.fetch(node.url + "/state/data")
        self.assertEqual(response.code, 404)
        response, _ = await self.fetch(node.node_endpoint + "nothing")
        self.assertEqual(response.code, 404)

    async def test_directory_source_streams_large_file(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        big = os.urandom(3 * 1024 * 1024 + 17)
        with open(os.path.join(directory, "7"), "wb") as f:
            f.write(big)
        node = await self.start_sim(directory=directory, objects={"8": b"memory"})
        response, body = await self.fetch(node.url + "/files/7")
        self.assertEqual(response.code, 200)
        self.assertTrue(body.clean)
        self.assertEqual(hashlib.sha256(body.data).digest(), hashlib.sha256(big).digest())
        response, body = await self.fetch(node.url + "/files/7", headers={b"range": b"bytes=1048576-1048675"})
        self.assertEqual(response.code, 206)
        self.assertEqual(bytes(body.data), big[1048576:1048676])
        response, body = await self.fetch(node.url + "/files/8")
        self.assertEqual(bytes(body.data), b"memory")
        response, _ = await self.fetch(node.url + "/files/9")
        self.assertEqual(response.code, 404)


class RangeTests(SimTestCase):
    async def test_ranges(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        size = len(DATA)
        for spec, (start, end) in [
            (b"bytes=10-19", (10, 19)),
            (b"bytes=49990-", (49990, size - 1)),
            (b"bytes=-5", (size - 5, size - 1)),
            (b"bytes=100-999999", (100, size - 1)),
        ]:
            response, body = await self.fetch(node.url + "/files/1", headers={b"range": spec})
            self.assertEqual(response.code, 206, spec)
            self.assertEqual(header(response, b"content-range"), b"bytes %d-%d/%d" % (start, end, size), spec)
            self.assertEqual(bytes(body.data), DATA[start : end + 1], spec)
            self.assertEqual(response.length, end - start + 1, spec)

    async def test_unsatisfiable(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        response, _ = await self.fetch(node.url + "/files/1", headers={b"range": b"bytes=50000-"})
        self.assertEqual(response.code, 416)
        self.assertEqual(header(response, b"content-range"), b"bytes */50000")

    async def test_multiple_ranges_ignored(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        response, body = await self.fetch(node.url + "/files/1", headers={b"range": b"bytes=0-1,5-6"})
        self.assertEqual(response.code, 200)
        self.assertEqual(bytes(body.data), DATA)


class KnobTests(SimTestCase):
    async def test_latency(self) -> None:
        node = await self.start_sim(objects={"1": b"a", "2": b"b"})
        node.sim.configure_object("1", latency=0.3)
        started = reactor.seconds()
        await self.fetch(node.url + "/files/2")
        self.assertLess(reactor.seconds() - started, 0.25)
        started = reactor.seconds()
        response, body = await self.fetch(node.url + "/files/1")
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)
        self.assertEqual(bytes(body.data), b"a")

    async def test_version_latency(self) -> None:
        node = await self.start_sim()
        node.sim.configure(version_latency=0.3)
        started = reactor.seconds()
        response, _ = await self.fetch(node.url + "/version")
        self.assertEqual(response.code, 200)
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)

    async def test_fail_status_get_only(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure_object("1", fail_status=500)
        response, _ = await self.fetch(node.url + "/files/1")
        self.assertEqual(response.code, 500)
        response, _ = await self.fetch(node.url + "/files/1", b"HEAD")
        self.assertEqual(response.code, 200)

    async def test_head_status(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(head_status=404)
        response, _ = await self.fetch(node.url + "/files/1", b"HEAD")
        self.assertEqual(response.code, 404)
        response, _ = await self.fetch(node.url + "/files/1")
        self.assertEqual(response.code, 200)
        node.sim.clear_knobs()
        response, _ = await self.fetch(node.url + "/files/1", b"HEAD")
        self.assertEqual(response.code, 200)

    async def test_refuse_globally(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(refuse=True)
        with self.assertRaises(ResponseNeverReceived):
            await self.fetch(node.url + "/version")
        node.sim.configure(refuse=False)
        response, _ = await self.fetch(node.url + "/version")
        self.assertEqual(response.code, 200)

    async def test_refuse_one_object(self) -> None:
        node = await self.start_sim(objects={"1": DATA, "2": b"x"})
        node.sim.configure_object("1", refuse=True)
        with self.assertRaises(ResponseNeverReceived):
            await self.fetch(node.url + "/files/1")
        response, _ = await self.fetch(node.url + "/files/2")
        self.assertEqual(response.code, 200)
        self.assertEqual(node.sim.requests_for("1"), [RequestRecord("GET", "1", None)])

    async def test_reset_after(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure_object("1", reset_after=1000)
        response, body = await self.fetch(node.url + "/files/1")
        self.assertEqual(response.code, 200)
        self.assertFalse(body.clean)
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        reasons = body.reason.value.reasons  # type: ignore[union-attr]
        self.assertTrue(any(r.check(ConnectionLost) for r in reasons), f"not a reset: {reasons}")
        self.assertLessEqual(len(body.data), 1000)
        self.assertEqual(bytes(body.data), DATA[: len(body.data)])

    async def test_stall_after(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure_object("1", stall_after=2000)
        response, body = await self.request(node.url + "/files/1")
        await sleep(0.3)
        self.assertEqual(len(body.data), 2000)
        self.assertFalse(body.done.called, "a stalled body must keep its connection open")
        self.assertEqual(node.sim.in_flight, 1)
        await node.stop()  # stop closes it
        await body.done
        self.assertFalse(body.clean)
        self.assertEqual(node.sim.in_flight, 0)

    async def test_truncate_to(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure_object("1", truncate_to=3000)
        response, body = await self.fetch(node.url + "/files/1")
        self.assertEqual(response.length, len(DATA))
        self.assertEqual(bytes(body.data), DATA[:3000])
        self.assertFalse(body.clean, "a short body must not look complete")

    async def test_extra_bytes(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure_object("1", extra_bytes=10)
        response, body = await self.fetch(node.url + "/files/1")
        self.assertTrue(body.clean)
        self.assertEqual(response.length, len(DATA) + 10)
        self.assertEqual(bytes(body.data), DATA + EXTRA_BYTE * 10)

    async def test_corrupt(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure_object("1", corrupt=True)
        response, body = await self.fetch(node.url + "/files/1")
        self.assertTrue(body.clean)
        self.assertEqual(len(body.data), len(DATA))
        self.assertNotEqual(hashlib.sha256(body.data).digest(), hashlib.sha256(DATA).digest())
        self.assertEqual(body.data[0], DATA[0] ^ 0xFF)
        self.assertEqual(body.data[1:CORRUPT_EVERY], DATA[1:CORRUPT_EVERY])
        # A range is corrupted at the same object offsets.
        response, body = await self.fetch(node.url + "/files/1", headers={b"range": b"bytes=1000-2047"})
        self.assertEqual(body.data[24], DATA[1024] ^ 0xFF)
        self.assertEqual(body.data[:24], DATA[1000:1024])

    async def test_rate(self) -> None:
        node = await self.start_sim(objects={"1": DATA[:20_000]})
        node.sim.configure(rate=100_000)
        started = reactor.seconds()
        response, body = await self.fetch(node.url + "/files/1")
        elapsed = reactor.seconds() - started
        self.assertTrue(body.clean)
        self.assertEqual(bytes(body.data), DATA[:20_000])
        self.assertGreaterEqual(elapsed, 0.15)
        self.assertLess(elapsed, 2.0)

    async def test_ignore_range(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(ignore_range=True)
        response, body = await self.fetch(node.url + "/files/1", headers={b"range": b"bytes=10-19"})
        self.assertEqual(response.code, 200)
        self.assertIsNone(header(response, b"content-range"))
        self.assertEqual(bytes(body.data), DATA)

    async def test_content_encoding(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(content_encoding="gzip", content_type="video/mp4")
        response, body = await self.fetch(node.url + "/files/1")
        self.assertEqual(header(response, b"content-encoding"), b"gzip")
        self.assertEqual(header(response, b"content-type"), b"video/mp4")
        self.assertEqual(bytes(body.data), DATA)

    def test_unknown_knob(self) -> None:
        sim = StorageNodeSimulator(Clock())
        self.assertRaises(TypeError, sim.configure, lantency=1)
        self.assertRaises(TypeError, sim.configure_object, "1", lantency=1)

    def test_per_object_overrides_global(self) -> None:
        sim = StorageNodeSimulator(Clock())
        sim.configure(latency=1.0, corrupt=True)
        sim.configure_object("5", latency=2.0)
        self.assertEqual(sim.knobs_for("5"), Knobs(latency=2.0, corrupt=True))
        self.assertEqual(sim.knobs_for("6"), Knobs(latency=1.0, corrupt=True))
        sim.clear_knobs("5")
        self.assertEqual(sim.knobs_for("5").latency, 1.0)


class ObservabilityAndLifecycleTests(SimTestCase):
    async def test_log_counts_in_flight_bytes(self) -> None:
        node = await self.start_sim(objects={"1": DATA})
        node.sim.configure(latency=0.2)
        await self.fetch(node.url + "/files/1", b"HEAD")
        results = [
            Deferred.fromCoroutine(self.fetch(node.url + "/files/1", headers={b"range": b"bytes=0-99"}))
            for _ in range(3)
        ]
        for d in results:
            await d
        self.assertEqual(node.sim.max_in_flight, 3)
        self.assertEqual(node.sim.in_flight, 0)
        self.assertEqual(node.sim.counts["GET"], 3)
        self.assertEqual(node.sim.counts["HEAD"], 1)
        self.assertEqual(node.sim.bytes_sent, 300)
        self.assertEqual(node.sim.requests[0], RequestRecord("HEAD", "1", None))
        self.assertEqual(node.sim.requests[1], RequestRecord("GET", "1", "bytes=0-99"))
        node.sim.reset_stats()
        self.assertEqual((node.sim.requests, node.sim.max_in_flight, node.sim.bytes_sent), ([], 0, 0))

    async def test_restart_on_same_port(self) -> None:
        node = await self.start_sim(objects={"1": b"hello"})
        url = node.url
        await node.stop()
        self.assertFalse(node.running)
        with self.assertRaises(ConnectionRefusedError):
            await self.fetch(url + "/files/1")
        await node.start()
        self.assertEqual(node.url, url)
        response, body = await self.fetch(url + "/files/1")
        self.assertEqual(bytes(body.data), b"hello")
        await node.stop()
        await node.stop()  # idempotent

    async def test_start_on_given_port(self) -> None:
        first = await self.start_sim()
        port = first.port
        await first.stop()
        second = await self.start_sim(port=port, objects={"3": b"x"})
        self.assertEqual(second.url, first.url)
        response, _ = await self.fetch(second.url + "/files/3")
        self.assertEqual(response.code, 200)


class FakeSink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.writes: list[int] = []
        self.producer: Any = None
        self.ended: str | None = None
        self.pause_after: int | None = None

    def register(self, producer: IPushProducer) -> None:
        self.producer = producer

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append(len(data))
        if self.pause_after is not None and len(self.data) >= self.pause_after:
            self.producer.pauseProducing()

    def finish(self) -> None:
        self.ended = "finish"

    def close(self) -> None:
        self.ended = "close"

    def abort(self) -> None:
        self.ended = "abort"


class CountingSource:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)
        self.largest_read = 0
        self.closed = False

    def read(self, offset: int, n: int) -> bytes:
        self.largest_read = max(self.largest_read, n)
        return self._data[offset : offset + n]

    def close(self) -> None:
        self.closed = True


class BodyStreamerTests(SynchronousTestCase):
    def stream(self, data: bytes, clock: Clock | None = None, start: int = 0, length: int | None = None,
               **knobs: Any) -> tuple[BodyStreamer, FakeSink, CountingSource]:
        sink = FakeSink()
        source = CountingSource(data)
        streamer = BodyStreamer(clock or Clock(), source, start, len(data) - start if length is None else length,
                                Knobs(**knobs), sink)
        return streamer, sink, source

    def test_reads_in_chunks(self) -> None:
        data = bytes(300_000)
        streamer, sink, source = self.stream(data)
        streamer.begin()
        self.assertEqual(sink.ended, "finish")
        self.assertEqual(len(sink.data), len(data))
        self.assertLessEqual(source.largest_read, 64 * 1024)
        self.assertTrue(source.closed)

    def test_pause_inside_write_and_resume(self) -> None:
        data = DATA * 4
        streamer, sink, _ = self.stream(data)
        sink.pause_after = 1
        streamer.begin()
        self.assertEqual(len(sink.writes), 1)
        self.assertIsNone(sink.ended)
        streamer.resumeProducing()
        self.assertEqual(len(sink.writes), 2)
        sink.pause_after = None
        streamer.resumeProducing()
        self.assertEqual(bytes(sink.data), data)
        self.assertEqual(sink.ended, "finish")

    def test_rate_follows_clock(self) -> None:
        clock = Clock()
        streamer, sink, _ = self.stream(bytes(10_000), clock, rate=1000)
        streamer.begin()
        self.assertEqual(len(sink.data), 20)  # one tick's worth
        clock.pump([0.01] * 500)  # 5 s
        self.assertGreaterEqual(len(sink.data), 4980)
        self.assertLessEqual(len(sink.data), 5020)
        self.assertIsNone(sink.ended)
        clock.pump([0.01] * 510)
        self.assertEqual(len(sink.data), 10_000)
        self.assertEqual(sink.ended, "finish")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_paused_rate_waits_for_resume(self) -> None:
        clock = Clock()
        streamer, sink, _ = self.stream(bytes(1000), clock, rate=1000)
        streamer.begin()
        streamer.pauseProducing()
        clock.advance(10)
        self.assertEqual(len(sink.data), 20)
        streamer.resumeProducing()
        clock.pump([0.01] * 200)
        self.assertEqual(len(sink.data), 1000)

    def test_stop_cancels_timer(self) -> None:
        clock = Clock()
        streamer, sink, source = self.stream(bytes(1000), clock, rate=100)
        streamer.begin()
        streamer.stopProducing()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(source.closed)

    def test_cuts(self) -> None:
        for knob, ending in (("reset_after", "abort"), ("stall_after", None), ("truncate_to", "close")):
            streamer, sink, _ = self.stream(DATA, **{knob: 100})
            streamer.begin()
            self.assertEqual(bytes(sink.data), DATA[:100], knob)
            self.assertEqual(sink.ended, ending, knob)
        streamer, sink, _ = self.stream(DATA, reset_after=300, truncate_to=200)
        streamer.begin()
        self.assertEqual((len(sink.data), sink.ended), (200, "close"))

    def test_cut_beyond_body_is_no_cut(self) -> None:
        streamer, sink, _ = self.stream(b"abc", truncate_to=3)
        streamer.begin()
        self.assertEqual((bytes(sink.data), sink.ended), (b"abc", "finish"))

    def test_range_extra_corrupt(self) -> None:
        streamer, sink, _ = self.stream(DATA, start=1020, length=10, extra_bytes=2, corrupt=True)
        self.assertEqual(streamer.declared_length, 12)
        streamer.begin()
        expected = bytearray(DATA[1020:1030]) + EXTRA_BYTE * 2
        expected[4] ^= 0xFF
        self.assertEqual(bytes(sink.data), bytes(expected))


class ParseRangeTests(SynchronousTestCase):
    def test_examples(self) -> None:
        self.assertIsNone(parse_range(None, 10))
        self.assertEqual(parse_range(b"bytes=0-4", 10), (0, 4))
        self.assertEqual(parse_range(b"bytes=5-", 10), (5, 9))
        self.assertEqual(parse_range(b"bytes=-3", 10), (7, 9))
        self.assertEqual(parse_range(b"bytes=-30", 10), (0, 9))
        self.assertEqual(parse_range(b"bytes=3-300", 10), (3, 9))
        self.assertIs(parse_range(b"bytes=10-", 10), UNSATISFIABLE)
        self.assertIs(parse_range(b"bytes=-0", 10), UNSATISFIABLE)
        self.assertIs(parse_range(b"bytes=0-", 0), UNSATISFIABLE)
        self.assertIsNone(parse_range(b"bytes=5-4", 10))
        self.assertIsNone(parse_range(b"bytes=0-1,3-4", 10))
        self.assertIsNone(parse_range(b"items=0-1", 10))
        self.assertIsNone(parse_range(b"bytes=-", 10))
        self.assertIsNone(parse_range(b"bytes=\xd9\xa1-2", 10))

    @settings(deadline=None)
    @given(st.binary(max_size=40) | st.from_regex(rb"bytes=[0-9]{0,4}-[0-9]{0,4}", fullmatch=True),
           st.integers(min_value=0, max_value=5000))
    def test_results_are_in_bounds(self, header_value: bytes, size: int) -> None:
        result = parse_range(header_value, size)
        if isinstance(result, tuple):
            start, end = result
            self.assertTrue(0 <= start <= end < size, (header_value, size, result))
        else:
            self.assertIn(result, (None, UNSATISFIABLE))


class InMemoryTests(SynchronousTestCase):
    """The simulator as a plain resource (``treq.testing.StubTreq``) with a
    Clock: latency and throttling without real time or sockets."""

    def test_latency_follows_clock(self) -> None:
        clock = Clock()
        sim = StorageNodeSimulator(clock, objects={"1": b"abc"})
        sim.configure(latency=2.0, version_latency=5.0)
        stub = StubTreq(sim)
        head = stub.head("http://sim/api/v1/files/1")
        version = stub.get("http://sim/api/v1/version")
        stub.flush()
        self.assertNoResult(head)
        self.assertEqual(sim.in_flight, 2)
        clock.advance(1.9)
        stub.flush()
        self.assertNoResult(head)
        clock.advance(0.1)
        stub.flush()
        self.assertEqual(self.successResultOf(head).code, 200)
        self.assertNoResult(version)
        clock.advance(3.0)
        stub.flush()
        self.assertEqual(self.successResultOf(version).code, 200)
        self.assertEqual(sim.in_flight, 0)
        self.assertEqual(sim.max_in_flight, 2)

    def test_rate_follows_clock(self) -> None:
        clock = Clock()
        sim = StorageNodeSimulator(clock, objects={"1": DATA[:2000]})
        sim.configure(rate=1000)
        stub = StubTreq(sim)
        response = self.successResultOf(stub.get("http://sim/api/v1/files/1"))
        body = treq.content(response)
        stub.flush()
        self.assertNoResult(body)
        for _ in range(100):  # 1 s
            clock.advance(0.01)
            stub.flush()
        self.assertNoResult(body)
        self.assertLessEqual(sim.bytes_sent, 1100)
        for _ in range(110):
            clock.advance(0.01)
            stub.flush()
        self.assertEqual(self.successResultOf(body), DATA[:2000])
