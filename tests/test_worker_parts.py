"""The hit workers' pieces (``jsdistributor.workers``) one by one, without
processes: the worker's hit table and its hits served through
``AssetServer.render_hit``, the request tally, log events crossing from a
worker to the primary, the primary's pool (lookups, reports, forgets), the
AMP conversation in memory, the relay over real loopback sockets, the access
log's ``trust_forwarded`` and ``relayed``, ``SO_REUSEPORT`` listeners, the
``publicApi.workers`` key and ``most_verbose_level``.

``tests/test_workers.py`` runs the whole thing with real worker processes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import treq
from hypothesis import example, given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from jsdistributor.assets import AssetServer
from jsdistributor.cache.eviction import CacheEntry
from jsdistributor.config import FileLog, Logs, masked_config_dict, parse_config
from jsdistributor.httputil import AccessLoggingSite
from jsdistributor.logs import logs_requests, most_verbose_level
from jsdistributor.metrics import NodeMetrics
from jsdistributor.model import is_valid_object_id
from jsdistributor.public_api import asset_id_of
from jsdistributor.workers.commands import BATCH, Forget
from jsdistributor.workers.hits import HitEntry, HitTable
from jsdistributor.workers.pool import NOT_A_HIT, RESTART_DELAYS, STABLE_AFTER, PrimaryControl, WorkerPool, WorkerProcess
from jsdistributor.workers import process as process_module
from jsdistributor.workers.process import HitWorker, RequestTally, WorkerControl, WorkerSettings, event_for_primary
from jsdistributor.workers.relay import RelayResource, relay_agent
from jsdistributor.workers.reuseport import listen_reuseport, port_is_taken

from .bodies import Collect, sleep
from .test_cache_manager import make_manager, obj
from .test_config import minimal

POOL_NAMESPACE = "jsdistributor.workers.pool"


def capture(test: Any, keep: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[dict[str, Any]]:
    """Log events published while ``test`` runs (those ``keep`` accepts)."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if keep(event):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


def asset_request(object_id: str, method: bytes = b"GET", headers: dict[bytes, bytes] | None = None) -> DummyRequest:
    request = DummyRequest([b"api", b"v1", b"assets", object_id.encode("ascii")])
    request.method = method
    request._disconnected = False  # LookupThenRelay reads it; DummyRequest lacks it
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


def serve(result: Any, request: DummyRequest) -> Any:
    """What twisted.web does with a resource's ``result``: bytes are the
    whole body (a small hit is read at once), NOT_DONE_YET means the
    resource finishes the response itself."""
    if isinstance(result, bytes):
        request.write(result)
        request.finish()
    return result


def header(request: Any, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


class PushConsumer:
    """An IConsumer for a StreamReader: collects what it writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data


# -- 1. the worker's hit table -------------------------------------------------------


class HitTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.clock = Clock()
        self.table = HitTable(self.clock, lambda object_id: str(self.dir / object_id))
        self.data = os.urandom(200_000)
        (self.dir / "7").write_bytes(self.data)

    def test_learn_and_cached(self) -> None:
        self.assertIsNone(self.table.cached("7"), "nothing is a hit before the primary says so")
        entry = HitEntry(len(self.data), "video/mp4", "QmSeven")
        self.table.learn("7", entry)
        self.assertEqual(self.table.cached("7"), entry)
        self.assertEqual(len(self.table), 1)
        self.assertIsNone(self.table.cached("8"))

    def test_open_verified_right_size(self) -> None:
        self.table.learn("7", HitEntry(len(self.data), None, None))
        f = self.table.open_verified("7")
        self.assertIsNotNone(f, "a file of the learned size is served")
        with f:
            self.assertEqual(f.read(), self.data)
        self.assertIsNotNone(self.table.cached("7"), "a good file keeps its entry")

    def test_open_verified_unknown_id(self) -> None:
        self.assertIsNone(self.table.open_verified("7"), "an id never learned is not opened, even if its file exists")

    def test_open_verified_missing_file_drops_entry(self) -> None:
        self.table.learn("9", HitEntry(10, None, None))
        self.assertIsNone(self.table.open_verified("9"))
        self.assertIsNone(self.table.cached("9"), "a missing file drops the entry (the primary decides next)")

    def test_open_verified_other_size_drops_entry_and_keeps_file(self) -> None:
        self.table.learn("7", HitEntry(len(self.data) + 1, None, None))
        warnings = capture(self, lambda e: e.get("log_level") == LogLevel.warn)
        self.assertIsNone(self.table.open_verified("7"), "a file of another size is never served")
        self.assertIsNone(self.table.cached("7"))
        self.assertTrue((self.dir / "7").exists(), "the worker never deletes files: the primary owns the cache")
        self.assertEqual(len(warnings), 1, f"one warning expected, got {warnings!r}")
        self.assertEqual((warnings[0]["actual"], warnings[0]["expected"]), (len(self.data), len(self.data) + 1))

    def test_touch_and_take_accessed(self) -> None:
        self.table.touch("7")
        self.table.touch("7")
        self.table.touch("8")
        self.assertEqual(self.table.take_accessed(), Counter({"7": 2, "8": 1}))
        self.assertEqual(self.table.take_accessed(), Counter(), "taking the accesses resets them")
        self.table.touch("8")
        self.assertEqual(self.table.take_accessed(), Counter({"8": 1}))

    def test_forget_and_forget_all(self) -> None:
        for object_id in ("1", "2", "3"):
            self.table.learn(object_id, HitEntry(1, None, None))
        self.table.forget(["1", "404"])  # an id it does not know is fine
        self.assertEqual(sorted(self.table.entries), ["2", "3"])
        self.table.forget_all()
        self.assertEqual(len(self.table), 0)

    def test_reader_streams_its_window(self) -> None:
        self.table.learn("7", HitEntry(len(self.data), None, None))
        opened = self.table.open_verified("7")
        consumer = PushConsumer()
        aborted: list[bool] = []
        reader = self.table.reader(consumer, "7", 1000, 150_000, lambda: aborted.append(True), opened=opened)
        done = reader.start()
        self.assertEqual(bytes(consumer.data), self.data[1000:150_000], "exactly bytes [start, end)")
        self.assertIsNone(self.successResultOf(done))
        self.assertIsNone(consumer.producer, "the reader unregisters once done")
        self.assertTrue(opened.closed, "the file is closed once the window is sent")
        self.assertEqual(aborted, [])


class RenderHitTests(SynchronousTestCase):
    """``AssetServer(reactor, table, ...).render_hit``: exactly what a
    worker does with a request for a hit it knows."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.clock = Clock()
        self.table = HitTable(self.clock, lambda object_id: str(self.dir / object_id))
        self.assets = AssetServer(self.clock, self.table, None, None, None, None, None)  # type: ignore[arg-type]
        self.data = os.urandom(300_000)
        (self.dir / "5").write_bytes(self.data)
        self.table.learn("5", HitEntry(len(self.data), "video/webm", "QmFive"))

    def render(self, request: DummyRequest) -> Any:
        return serve(self.assets.render_hit(request, "5"), request)

    def test_whole_object(self) -> None:
        request = asset_request("5")
        self.assertEqual(self.render(request), NOT_DONE_YET, "a large body is streamed by a reader")
        self.assertEqual(request.finished, 1, "the response was finished")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(b"".join(request.written), self.data)
        self.assertEqual(header(request, b"content-length"), str(len(self.data)).encode())
        self.assertEqual(header(request, b"content-type"), b"video/webm")
        self.assertEqual(header(request, b"x-cache"), b"hit")
        self.assertEqual(header(request, b"etag"), b'"QmFive"', "the etag is the ipfs hash")
        self.assertEqual(self.table.take_accessed(), Counter({"5": 1}), "a served hit is an access")

    def test_range(self) -> None:
        request = asset_request("5", headers={b"range": b"bytes=100-199"})
        self.render(request)
        self.assertEqual(request.finished, 1, "the response was finished")
        self.assertEqual(request.responseCode, 206)
        self.assertEqual(header(request, b"content-range"), b"bytes 100-199/%d" % len(self.data))
        self.assertEqual(header(request, b"content-length"), b"100")
        self.assertEqual(b"".join(request.written), self.data[100:200])

    def test_large_range(self) -> None:
        request = asset_request("5", headers={b"range": b"bytes=1000-"})
        self.render(request)
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 206)
        self.assertEqual(header(request, b"content-range"), b"bytes 1000-%d/%d" % (len(self.data) - 1, len(self.data)))
        self.assertEqual(b"".join(request.written), self.data[1000:])

    def test_not_modified_is_not_an_access(self) -> None:
        request = asset_request("5", headers={b"if-none-match": b'"QmFive"'})
        self.assertEqual(self.render(request), b"")
        self.assertEqual(request.responseCode, 304)
        self.assertEqual(b"".join(request.written), b"")
        self.assertEqual(self.table.take_accessed(), Counter(), "a 304 is not counted as an access")

    def test_head(self) -> None:
        request = asset_request("5", method=b"HEAD")
        self.assertEqual(self.render(request), b"")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(header(request, b"content-length"), str(len(self.data)).encode())
        self.assertEqual(b"".join(request.written), b"", "no body for a HEAD")

    def test_unknown_or_broken_is_not_a_hit(self) -> None:
        self.assertIsNone(self.assets.render_hit(asset_request("6"), "6"), "an unknown id is left to the caller")
        (self.dir / "5").write_bytes(b"short")
        request = asset_request("5")
        self.assertIsNone(self.render(request), "a file of the wrong size is left to the caller (the relay)")
        self.assertEqual(request.written, [])
        self.assertIsNone(self.table.cached("5"))

    def test_no_hash_no_etag(self) -> None:
        self.table.learn("5", HitEntry(len(self.data), None, None))
        request = asset_request("5")
        self.render(request)
        self.assertIsNone(header(request, b"etag"))
        self.assertEqual(header(request, b"content-type"), b"application/octet-stream")


# -- 2. the request tally -----------------------------------------------------------


class RequestTallyTests(SynchronousTestCase):
    def test_aggregates_by_route_status_cache_and_resets(self) -> None:
        tally = RequestTally()
        tally.observe_request("public", b"/api/v1/assets/1", 200, 100, "hit")
        tally.observe_request("public", b"/api/v1/asset/2?x=1", 200, 50, "hit")
        tally.observe_request("public", b"/api/v1/assets/3", 206, 10, "hit")
        tally.observe_request("public", "/api/v1/status", 200, 7, None)
        tally.observe_request("public", b"/nope", 404, 0, None)
        key = lambda item: (item["route"], item["status"], item["cache"])  # noqa: E731
        self.assertEqual(
            sorted(tally.take(), key=key),
            [
                {"route": "assets", "status": 200, "cache": "hit", "count": 2, "sent": 150},
                {"route": "assets", "status": 206, "cache": "hit", "count": 1, "sent": 10},
                {"route": "other", "status": 404, "cache": "", "count": 1, "sent": 0},
                {"route": "status", "status": 200, "cache": "", "count": 1, "sent": 7},
            ],
        )
        self.assertEqual(tally.take(), [], "take() resets the tally")
        tally.observe_request("public", b"/api/v1/assets/1", 200, 3, "hit")
        self.assertEqual(tally.take(), [{"route": "assets", "status": 200, "cache": "hit", "count": 1, "sent": 3}])


# -- 3. log events from a worker to the primary -----------------------------------------


class _Unjsonable:
    def __repr__(self) -> str:
        return "<unjsonable>"


class _FakePool:
    def __init__(self) -> None:
        self.ended: list[tuple[Any, Failure]] = []

    def worker_ended(self, process: Any, reason: Failure) -> None:
        self.ended.append((process, reason))


class WorkerLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture(self)
        self.pool = _FakePool()
        self.process = WorkerProcess(self.pool, 3)  # type: ignore[arg-type]

    def worker_event(self, level: LogLevel, **fields: Any) -> dict[str, Any]:
        event = {
            "log_level": level,
            "log_namespace": "jsdistributor.cache.manager",
            "log_format": "object {objectId} is {what}",
            "log_time": 12.5,
            "log_source": object(),
            "objectId": "12",
            "what": _Unjsonable(),
        }
        event.update(fields)
        return event

    def replay(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """``event`` as the worker writes it, read back by the primary."""
        line = json.dumps(event_for_primary(event), default=str).encode("utf-8")
        self.events.clear()
        self.process.outReceived(line + b"\n")
        return list(self.events)

    def test_event_for_primary_fields_and_failure(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        out = event_for_primary(self.worker_event(LogLevel.info, flag=True, nothing=None, ratio=0.5, log_failure=failure))
        self.assertEqual(out["namespace"], "jsdistributor.cache.manager")
        self.assertTrue(out["text"].startswith("object 12 is <unjsonable>\n"), out["text"])
        self.assertIn("ZeroDivisionError", out["text"], "a failure's traceback travels in the text")
        self.assertEqual(
            out["fields"],
            {"objectId": "12", "flag": True, "nothing": None, "ratio": 0.5},
            "only plain, non-log_ fields travel",
        )
        json.dumps(out)  # must not raise: it is written as one JSON line

    def test_event_for_primary_keeps_the_level(self) -> None:
        for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical):
            self.assertEqual(event_for_primary(self.worker_event(level))["level"], level.name, level)

    def test_round_trip_same_namespace_level_and_text(self) -> None:
        try:
            raise KeyError("boom")
        except KeyError:
            failure = Failure()
        events = self.replay(self.worker_event(LogLevel.error, log_failure=failure, size=3))
        self.assertEqual(len(events), 1, f"one event per line, got {events!r}")
        e = events[0]
        self.assertEqual(e["log_namespace"], "jsdistributor.cache.manager")
        self.assertEqual(e["log_level"], LogLevel.error, "the worker's level is kept")
        text = formatEvent(e)
        self.assertTrue(text.startswith("worker 3: object 12 is <unjsonable>"), text)
        self.assertIn("KeyError", text)
        self.assertEqual((e["objectId"], e["size"], e["workerIndex"]), ("12", 3, 3), "plain fields are kept")

    def test_round_trip_namespace_text_and_fields(self) -> None:
        try:
            raise KeyError("boom")
        except KeyError:
            failure = Failure()
        events = self.replay(self.worker_event(LogLevel.info, log_failure=failure, size=3, what="{not a field}"))
        self.assertEqual(len(events), 1, f"one event per line, got {events!r}")
        e = events[0]
        self.assertEqual(e["log_namespace"], "jsdistributor.cache.manager", "the worker's namespace is kept")
        self.assertEqual(e["log_level"], LogLevel.info)
        text = formatEvent(e)
        self.assertTrue(text.startswith("worker 3: object 12 is {not a field}\n"), text)
        self.assertIn("KeyError: 'boom'", text, "the worker's traceback reaches the primary's log")
        self.assertEqual((e["objectId"], e["size"], e["workerIndex"]), ("12", 3, 3), "plain fields are kept")

    def test_primary_emits_the_line_with_its_level(self) -> None:
        line = {"namespace": "jsdistributor.x", "level": "warn", "text": "a {b} c", "fields": {"objectId": "9", "format": "f", "level": "l"}}
        self.process.outReceived(json.dumps(line).encode() + b"\n")
        self.assertEqual(len(self.events), 1)
        e = self.events[0]
        self.assertEqual((e["log_namespace"], e["log_level"]), ("jsdistributor.x", LogLevel.warn))
        self.assertEqual(formatEvent(e), "worker 3: a {b} c", "the worker's text is not formatted again")
        self.assertEqual(e["objectId"], "9")

    def test_lines_split_across_reads_and_the_last_one_at_exit(self) -> None:
        line = json.dumps({"namespace": "n", "level": "info", "text": "first", "fields": {}}).encode()
        self.process.outReceived(line[:10])
        self.assertEqual(self.events, [], "half a line is not an event")
        self.process.outReceived(line[10:] + b"\n" + line.replace(b"first", b"last"))
        self.assertEqual([formatEvent(e) for e in self.events], ["worker 3: first"])
        self.process.processEnded(Failure(ProcessDone(0)))
        self.assertEqual([formatEvent(e) for e in self.events], ["worker 3: first", "worker 3: last"])
        self.assertEqual(len(self.pool.ended), 1, "the pool hears that the worker ended")
        self.assertIs(self.pool.ended[0][0], self.process)
        self.assertIsNone(self.successResultOf(self.process.ended))

    def test_stderr_lines_are_warnings(self) -> None:
        self.process.errReceived(b"Traceback (most recent call last):\n  oops\n\n")
        self.assertEqual(
            [(e["log_level"], formatEvent(e)) for e in self.events],
            [(LogLevel.warn, "worker 3: Traceback (most recent call last):"), (LogLevel.warn, "worker 3:   oops")],
        )

    GARBAGE = [
        b"not json at all",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b"42",
        b'"text"',
        b"{}",
        b'{"namespace": "n", "level": "loud", "text": "t", "fields": {}}',
        b'{"namespace": "n", "level": 5, "text": "t", "fields": {}}',
        b'{"namespace": "n", "level": ["info"], "text": "t", "fields": {}}',
        b'{"namespace": "n", "level": "info", "text": "t", "fields": "abc"}',
        b'{"namespace": "n", "level": "info", "text": "t", "fields": 3}',
        b'{"namespace": "n", "level": "info", "text": "t"}',
    ]

    def test_garbage_lines_are_warnings(self) -> None:
        for line in self.GARBAGE:
            self.events.clear()
            self.process.outReceived(line + b"\n")
            self.assertEqual(len(self.events), 1, f"{line!r}: one event expected, got {self.events!r}")
            e = self.events[0]
            self.assertEqual((e["log_namespace"], e["log_level"]), (POOL_NAMESPACE, LogLevel.warn), repr(line))
            self.assertEqual(formatEvent(e), "worker 3: " + line.decode("utf-8", "replace"))

    def test_blank_lines_are_ignored(self) -> None:
        self.process.outReceived(b"\n  \n\n")
        self.assertEqual(self.events, [])

    def test_field_named_like_an_emit_argument(self) -> None:
        line = {"namespace": "n", "level": "info", "text": "t", "fields": {"self": 1}}
        self.process.outReceived(json.dumps(line).encode() + b"\n")  # must not raise
        self.assertEqual([formatEvent(e) for e in self.events], ["worker 3: t"])

    @settings(max_examples=200, derandomize=True, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=80),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["info", "warn", "debug"]),
                lambda inner: st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["namespace", "level", "text", "fields", "format", "log_format", "x", "workerIndex"]),
                    inner,
                    max_size=5,
                ),
                max_leaves=12,
            ).map(lambda value: json.dumps(value).encode()),
        )
    )
    def test_never_raises(self, line: bytes) -> None:
        """Whatever a worker writes, the primary logs one event per line
        (its own, or a warning quoting the line) and never raises."""
        line = line.replace(b"\n", b" ")
        self.events.clear()
        self.process.outReceived(line + b"\n")
        self.assertEqual(len(self.events), 1 if line.strip() else 0, repr(line))


# -- 4. the primary's pool, without processes ---------------------------------------------


class FakeCache:
    def __init__(self, entries: dict[str, CacheEntry] | None = None) -> None:
        self.entries = entries or {}
        self.on_forget: list[Callable[[str], None]] = []
        self.touches: Counter[str] = Counter()
        self.asked: list[str] = []

    def cached(self, object_id: str) -> CacheEntry | None:
        assert is_valid_object_id(object_id), f"the cache was asked about an invalid id {object_id!r}"
        self.asked.append(object_id)
        return self.entries.get(object_id)

    def touch(self, object_id: str, times: int = 1) -> None:
        self.touches[object_id] += times

    def forget(self, object_id: str) -> None:
        del self.entries[object_id]
        for listener in self.on_forget:
            listener(object_id)


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def callRemote(self, command: Any, **arguments: Any) -> None:
        self.calls.append((command, arguments))


def entry(object_id: str, size: int, mime: str | None = None, ipfs: str | None = None) -> CacheEntry:
    return CacheEntry(object_id, size, 1, 0.0, mime, ipfs)


def make_pool(cache: Any, clock: Clock | None = None, metrics: NodeMetrics | None = None) -> WorkerPool:
    def no_settings(index: int) -> WorkerSettings:
        raise AssertionError("no worker may be started in these tests")

    return WorkerPool(clock or Clock(), 2, no_settings, cache, metrics or NodeMetrics(), lambda: None)


class WorkerPoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = NodeMetrics()
        self.cache = FakeCache({"7": entry("7", 1234, "video/mp4", "QmSeven"), "8": entry("8", 5)})
        self.pool = make_pool(self.cache, self.clock, self.metrics)
        self.controls = {1: FakeControl(), 2: FakeControl()}
        self.pool.controls.update(self.controls)  # type: ignore[arg-type]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def test_lookup(self) -> None:
        self.assertEqual(
            self.pool.lookup("7"), {"found": True, "size": 1234, "mimeType": "video/mp4", "ipfsHash": "QmSeven"}
        )
        self.assertEqual(
            self.pool.lookup("8"), {"found": True, "size": 5, "mimeType": "", "ipfsHash": ""}, "None travels as ''"
        )
        self.assertEqual(self.pool.lookup("9"), NOT_A_HIT)
        self.assertFalse(NOT_A_HIT["found"])
        for bad in ("", "abc", "1" * 21, "-1", "1.0", "٣", "../7"):
            self.assertEqual(self.pool.lookup(bad), NOT_A_HIT, f"{bad!r} is not a valid id")
        self.assertEqual(self.cache.asked, ["7", "8", "9"], "invalid ids never reach the cache")

    def test_report_touches_cached_objects(self) -> None:
        self.pool.report(1, [{"objectId": "7", "count": 3}, {"objectId": "9", "count": 5}, {"objectId": "8", "count": 1}], [])
        self.assertEqual(self.cache.touches, Counter({"7": 3, "8": 1}), "only cached objects are touched, count times")
        self.pool.report(1, [{"objectId": "8", "count": 10**9}], [])
        self.assertEqual(self.cache.touches["8"], 1 + 10_000, "a report's count is capped")

    def test_report_feeds_the_metrics(self) -> None:
        self.pool.report(
            2,
            [],
            [
                {"route": "assets", "status": 200, "cache": "hit", "count": 4, "sent": 4000},
                {"route": "assets", "status": 206, "cache": "hit", "count": 1, "sent": 10},
                {"route": "status", "status": 200, "cache": "", "count": 2, "sent": 30},
            ],
        )
        requests = "jsdistributor_http_requests_total"
        self.assertEqual(self.sample(requests, api="public", route="assets", status="200"), 4)
        self.assertEqual(self.sample(requests, api="public", route="assets", status="206"), 1)
        self.assertEqual(self.sample(requests, api="public", route="status", status="200"), 2)
        self.assertEqual(self.sample("jsdistributor_served_bytes_total", x_cache="hit"), 4010)
        self.assertEqual(self.sample("jsdistributor_cache_requests_total", result="hit"), 5)
        self.assertEqual(self.sample("jsdistributor_cache_bytes_served_total", result="hit"), 4010)
        self.assertEqual(self.sample("jsdistributor_cache_requests_total", result="miss"), 0, "'' is not a miss")
        self.assertEqual(self.sample("jsdistributor_worker_requests_total", worker="2"), 7)
        self.assertIsNone(self.sample("jsdistributor_worker_requests_total", worker="1"))
        self.pool.report(1, [{"objectId": "7", "count": 1}], [])
        self.assertIsNone(
            self.sample("jsdistributor_worker_requests_total", worker="1"), "a report without requests counts none"
        )

    def forgets(self, control: FakeControl) -> list[tuple[list[str], bool]]:
        self.assertTrue(all(command is Forget for command, _ in control.calls), control.calls)
        return [(arguments["objectIds"], arguments["everything"]) for _, arguments in control.calls]

    def test_forgotten_objects_go_in_one_batch_per_turn(self) -> None:
        self.assertEqual(len(self.cache.on_forget), 1, "the pool listens to the cache")
        self.cache.forget("7")
        self.cache.forget("8")
        for control in self.controls.values():
            self.assertEqual(control.calls, [], "nothing is sent before the reactor turns")
        self.clock.advance(0)
        for control in self.controls.values():
            self.assertEqual(self.forgets(control), [(["7", "8"], False)])
        self.clock.advance(0)
        self.assertEqual(len(self.controls[1].calls), 1, "no empty batch on a later turn")
        self.pool._object_forgotten("3")
        self.clock.advance(0)
        for control in self.controls.values():
            self.assertEqual(self.forgets(control)[1:], [(["3"], False)])

    def test_forget_batches_fit_in_an_amp_value(self) -> None:
        ids = [str(n) for n in range(2 * BATCH + 3)]
        for object_id in ids:
            self.pool._object_forgotten(object_id)
        self.clock.advance(0)
        sent = self.forgets(self.controls[1])
        self.assertEqual([len(batch) for batch, _ in sent], [BATCH, BATCH, 3])
        self.assertEqual([i for batch, _ in sent for i in batch], ids, "every id once, in order")

    def test_very_many_forgotten_means_everything(self) -> None:
        for n in range(50 * BATCH + 1):
            self.pool._object_forgotten(str(n))
        self.clock.advance(0)
        for control in self.controls.values():
            self.assertEqual(self.forgets(control), [([], True)])

    def test_forget_without_workers(self) -> None:
        self.pool.controls.clear()
        self.pool._object_forgotten("7")
        self.clock.advance(0)  # must not fail
        self.pool.controls.update(self.controls)  # type: ignore[arg-type]
        self.pool._object_forgotten("8")
        self.clock.advance(0)
        self.assertEqual(self.forgets(self.controls[1]), [(["8"], False)], "earlier ids are not sent again")


class ForgetFromCacheManagerTests(SynchronousTestCase):
    """``CacheManager.on_forget`` with a real cache: forget, remove and
    eviction all reach the pool."""

    def test_every_way_out_of_the_cache(self) -> None:
        clock = Clock()
        directory = self.mktemp()
        os.makedirs(directory)
        objects = {"1": b"a" * 4000, "2": b"b" * 3000, "3": b"c" * 2000, "4": b"d" * 6500}
        manager = make_manager(directory, objects, clock)
        heard: list[str] = []
        manager.on_forget.append(heard.append)
        pool = make_pool(manager, clock)
        control = FakeControl()
        pool.controls[1] = control  # type: ignore[assignment]
        for object_id in ("1", "2", "3"):
            clock.advance(1)
            self.assertTrue(manager.reserve(len(objects[object_id])))
            manager.start_download(obj(object_id, objects[object_id]))
        self.assertEqual(heard, [], "caching an object forgets nothing")
        manager.forget("2")
        manager.forget("2")  # not cached any more: not heard twice
        manager.remove("3")
        self.assertEqual(heard, ["2", "3"])
        # 4 needs room (4000 + 6500 > 10000): 1 is evicted.
        self.assertTrue(manager.reserve(len(objects["4"])))
        self.assertEqual(heard, ["2", "3", "1"])
        clock.advance(0)
        self.assertEqual(control.calls, [(Forget, {"objectIds": ["2", "3", "1"], "everything": False})])


class WorkerRestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = NodeMetrics()
        self.pool = make_pool(FakeCache(), self.clock, self.metrics)
        self.pool.running = 1  # as if started, without spawning
        self.spawned: list[tuple[float, int]] = []
        self.pool._spawn = lambda index: self.spawned.append((self.clock.seconds(), index))  # type: ignore[method-assign]
        self.errors = capture(self, lambda e: e.get("log_level") == LogLevel.error)

    def end(self, index: int, lived: float) -> None:
        process = WorkerProcess(self.pool, index)
        process.started_at = self.clock.seconds()
        self.pool.processes[index] = process
        self.pool.controls[index] = FakeControl()  # type: ignore[assignment]
        self.clock.advance(lived)
        self.pool.worker_ended(process, Failure(ProcessTerminated(exitCode=1)))
        self.assertNotIn(index, self.pool.processes)
        self.assertNotIn(index, self.pool.controls)

    def test_restarted_with_backoff_and_counted(self) -> None:
        self.end(1, 0.1)
        self.assertEqual(self.metrics.registry.get_sample_value("jsdistributor_worker_restarts_total"), 1)
        self.clock.advance(RESTART_DELAYS[0])
        self.assertEqual(self.spawned, [(0.1 + RESTART_DELAYS[0], 1)])
        self.end(1, 0.1)
        self.clock.advance(RESTART_DELAYS[0])
        self.assertEqual(len(self.spawned), 1, "a second quick failure waits longer")
        self.clock.advance(RESTART_DELAYS[1] - RESTART_DELAYS[0])
        self.assertEqual(len(self.spawned), 2)
        self.end(1, STABLE_AFTER)
        self.clock.advance(RESTART_DELAYS[0])
        self.assertEqual(len(self.spawned), 3, "a worker that ran long enough is restarted at the first delay")
        self.assertEqual(self.metrics.registry.get_sample_value("jsdistributor_worker_restarts_total"), 3)
        self.assertEqual(len(self.errors), 3)
        self.assertIn("exit code 1", formatEvent(self.errors[0]))

    def test_not_restarted_when_stopping(self) -> None:
        self.pool.running = 0
        self.end(2, 1)
        self.clock.advance(60)
        self.assertEqual(self.spawned, [])
        self.assertEqual(self.metrics.registry.get_sample_value("jsdistributor_worker_restarts_total"), 0)


class StopListeningTests(SynchronousTestCase):
    """stop-api waits for every worker; one that does not answer is killed."""

    def test_a_silent_worker_is_killed_and_the_stop_completes(self) -> None:
        from twisted.internet.defer import Deferred

        from jsdistributor.workers.commands import StopListening
        from jsdistributor.workers.pool import ANSWER_TIMEOUT

        clock = Clock()
        pool = make_pool(FakeCache(), clock)
        answers: dict[int, Deferred[dict[str, Any]]] = {1: Deferred(), 2: Deferred()}
        signals: dict[int, list[str]] = {1: [], 2: []}

        class Control:
            def __init__(self, index: int) -> None:
                self.index = index

            def callRemote(self, command: Any, **arguments: Any) -> Deferred[dict[str, Any]]:
                assert command is StopListening
                return answers[self.index]

        class Transport:
            def __init__(self, index: int) -> None:
                self.index = index

            def signalProcess(self, name: str) -> None:
                signals[self.index].append(name)

        for index in (1, 2):
            process = WorkerProcess(pool, index)
            process.transport = Transport(index)  # type: ignore[assignment]
            pool.processes[index] = process
            pool.controls[index] = Control(index)  # type: ignore[assignment]
        errors = capture(self, lambda e: e.get("log_level") == LogLevel.error)
        done = pool.stop_listening()
        answers[1].callback({})
        self.assertNoResult(done)
        clock.advance(ANSWER_TIMEOUT)
        self.successResultOf(done)
        self.assertEqual(signals, {1: [], 2: ["KILL"]}, "only the silent worker is killed")
        self.assertIn("hit worker 2 did not stop listening", formatEvent(errors[0]))


# -- 5. AMP between a worker and the primary, in memory -------------------------------------


class _RecordingAgent:
    def __init__(self, requests: list[tuple[bytes, bytes, Any]]) -> None:
        self.requests = requests

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Deferred[Any]:
        self.requests.append((method, uri, headers))
        return Deferred()


class AmpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir(parents=True)
        self.data = os.urandom(100_000)
        (self.dir / "7").write_bytes(self.data)
        self.worker_reactor = MemoryReactorClock()
        self.relayed: list[tuple[bytes, bytes, Any]] = []
        self.patch(process_module, "relay_agent", lambda reactor: _RecordingAgent(self.relayed))
        settings = WorkerSettings(index=1, interface="127.0.0.1", assets_dir=str(self.dir), primary_port=4321)
        self.worker = HitWorker(self.worker_reactor, settings)
        self.clock = Clock()
        self.metrics = NodeMetrics()
        self.cache = FakeCache({"7": entry("7", len(self.data), "image/png", "QmSeven"), "8": entry("8", 3)})
        self.pool = make_pool(self.cache, self.clock, self.metrics)
        primary = PrimaryControl(self.pool, 1)
        self.pool.controls[1] = primary
        self.worker.control = WorkerControl(self.worker)
        _, _, self.pump = iosim.connectedServerAndClient(lambda: primary, lambda: self.worker.control)

    def lookups(self) -> int:
        return len(self.cache.asked)

    def test_lookup_learns_a_hit(self) -> None:
        d = self.worker.lookup("7")
        self.assertNoResult(d)
        self.pump.flush()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.worker.table.cached("7"), HitEntry(len(self.data), "image/png", "QmSeven"))
        self.assertEqual(self.worker.table.cached("8"), None)

    def test_lookup_of_a_miss(self) -> None:
        d = self.worker.lookup("9")
        self.pump.flush()
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(len(self.worker.table), 0)

    def test_concurrent_lookups_share_one_call(self) -> None:
        first, second = self.worker.lookup("7"), self.worker.lookup("7")
        self.pump.flush()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (True, True))
        self.assertEqual(self.lookups(), 1, "one Lookup for two concurrent asks")
        self.worker.table.forget(["7"])
        third = self.worker.lookup("7")
        self.pump.flush()
        self.assertTrue(self.successResultOf(third))
        self.assertEqual(self.lookups(), 2, "a later ask is a new Lookup")

    def test_forget_from_the_primary(self) -> None:
        for object_id in ("7", "8"):
            self.worker.lookup(object_id)
        self.pump.flush()
        self.assertEqual(sorted(self.worker.table.entries), ["7", "8"])
        self.cache.forget("7")
        self.clock.advance(0)
        self.pump.flush()
        self.assertEqual(sorted(self.worker.table.entries), ["8"], "the Forget reached the worker")
        for n in range(50 * BATCH + 1):
            self.pool._object_forgotten(str(n + 100))
        self.clock.advance(0)
        self.pump.flush()
        self.assertEqual(len(self.worker.table), 0, "Forget everything empties the table")

    def test_report_reaches_cache_and_metrics(self) -> None:
        self.worker.lookup("7")
        self.pump.flush()
        self.worker.table.touch("7")
        self.worker.table.touch("7")
        self.worker.tally.observe_request("public", b"/api/v1/assets/7", 200, 100, "hit")
        self.worker.report()
        self.pump.flush()
        self.assertEqual(self.cache.touches, Counter({"7": 2}))
        self.assertEqual(self.metrics.registry.get_sample_value("jsdistributor_worker_requests_total", {"worker": "1"}), 1)
        self.assertEqual(self.worker.table.take_accessed(), Counter(), "reported accesses are not sent twice")

    def test_report_in_batches(self) -> None:
        control = FakeControl()
        self.worker.control = control  # type: ignore[assignment]
        self.worker.report()
        self.assertEqual(control.calls, [], "nothing to report: nothing sent")
        for n in range(2 * BATCH + 1):
            self.worker.table.touch(str(n))
        self.worker.tally.observe_request("public", b"/api/v1/status", 200, 10, None)
        self.worker.report()
        sizes = [(len(arguments["accessed"]), len(arguments["requests"])) for _, arguments in control.calls]
        self.assertEqual(sizes, [(BATCH, 1), (BATCH, 0), (1, 0)], "AMP values stay small")
        reported = {item["objectId"]: item["count"] for _, arguments in control.calls for item in arguments["accessed"]}
        self.assertEqual(reported, {str(n): 1 for n in range(2 * BATCH + 1)})

    def test_exit_stops_the_reactor_once(self) -> None:
        self.worker.exit("the node asked")
        self.worker.exit("again")
        self.assertFalse(self.worker_reactor.hasStopped, "stopped on the next turn, not inside the call")
        self.worker_reactor.advance(0)
        self.assertTrue(self.worker_reactor.hasStopped)
        self.assertEqual(self.worker_reactor.getDelayedCalls(), [], "one stop only")

    def test_losing_the_primary_ends_the_worker(self) -> None:
        self.worker.control.connectionLost(Failure(ConnectionError("primary gone")))
        self.worker_reactor.advance(0)
        self.assertTrue(self.worker_reactor.hasStopped, "a worker never outlives its primary")

    def test_access_events_only_when_a_log_output_shows_them(self) -> None:
        self.assertIs(self.worker.site.log_requests, False, "settings default to info: no access events")
        for level, expected in (("http", True), ("debug", True), ("warn", False)):
            settings = WorkerSettings(index=2, interface="127.0.0.1", assets_dir=str(self.dir), primary_port=1, log_level=level)
            self.assertIs(HitWorker(MemoryReactorClock(), settings).site.log_requests, expected, level)

    def test_settings_round_trip(self) -> None:
        settings = WorkerSettings(index=2, interface="::", assets_dir="/a", primary_port=9, log_level="debug", send_timeout=None)
        self.assertEqual(WorkerSettings.from_json(settings.to_json()), settings)

    def test_an_unseen_asset_is_looked_up_then_served(self) -> None:
        request = asset_request("7")
        self.assertEqual(self.worker.site.resource.render(request), NOT_DONE_YET)
        self.assertEqual(request.written, [], "nothing served before the primary answers")
        self.pump.flush()
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(b"".join(request.written), self.data)
        self.assertEqual(header(request, b"x-cache"), b"hit")
        again = asset_request("7")
        serve(self.worker.site.resource.render(again), again)
        self.assertEqual(b"".join(again.written), self.data, "a known hit is served at once")
        self.assertEqual(self.lookups(), 1, "a known hit costs no Lookup")
        self.assertEqual(self.relayed, [], "nothing was relayed")

    def test_a_miss_is_relayed_to_the_primary(self) -> None:
        request = asset_request("9")
        request.uri = b"/api/v1/assets/9?download=1"
        request.content = BytesIO(b"")
        request.startedWriting = False
        self.assertEqual(self.worker.site.resource.render(request), NOT_DONE_YET)
        self.assertEqual(self.relayed, [], "not relayed before the primary says it is not a hit")
        self.pump.flush()
        self.assertEqual(
            [(method, uri) for method, uri, _ in self.relayed],
            [(b"GET", b"http://127.0.0.1:4321/api/v1/assets/9?download=1")],
            "a miss goes to the primary's loopback listener",
        )
        self.assertTrue(request.relayed, "marked relayed: the worker does not log it")
        self.assertEqual(self.lookups(), 1)

    def test_a_failure_while_serving_is_a_500_not_a_hang(self) -> None:
        calls = []

        def broken(request: Any, object_id: str) -> None:
            calls.append(object_id)
            if len(calls) == 1:
                return None  # PublicRoot's try, before the lookup: not known yet
            raise RuntimeError("a bug")

        self.worker.assets.render_hit = broken  # type: ignore[method-assign]
        request = asset_request("7")
        request.startedWriting = False  # a real Request has it; DummyRequest does not
        self.assertEqual(self.worker.site.resource.render(request), NOT_DONE_YET)
        self.pump.flush()
        self.assertEqual((request.finished, request.responseCode), (1, 500))
        self.assertEqual(json.loads(b"".join(request.written))["type"], "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1, "the failure is logged")


# -- 6. the relay, on real loopback sockets ------------------------------------------------

BIG = os.urandom(1024 * 1024 + 17)


class _Primary(Resource):
    """A stand-in for the primary's loopback listener."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []
        self.held: list[Any] = []

    def render(self, request: Any) -> Any:
        request.content.seek(0)
        self.seen.append(
            {
                "method": request.method,
                "path": request.uri,
                "forwarded": request.requestHeaders.getRawHeaders(b"x-forwarded-for"),
                "host": request.getHeader(b"host"),
                "custom": request.getHeader(b"x-viewer"),
                "te": request.getHeader(b"te"),
                "body": request.content.read(),
            }
        )
        path = request.path
        if path in (b"/big", b"/chunked"):
            request.setHeader(b"content-type", b"video/mp4")
            request.setHeader(b"etag", b'"QmBig"')
            request.setHeader(b"x-cache", b"miss")
            request.setHeader(b"keep-alive", b"timeout=99")
            request.setHeader(b"proxy-connection", b"keep-alive")
            request.setHeader(b"trailer", b"x-checksum")
            request.setHeader(b"connection", b"x-hop-token")
            if request.getHeader(b"if-none-match") == b'"QmBig"':
                request.setResponseCode(304)
                return b""
            if path == b"/big":
                request.setHeader(b"content-length", b"%d" % len(BIG))
            if request.method == b"HEAD":
                return b""
            FileSender().beginFileTransfer(BytesIO(BIG), request).addCallback(lambda _: request.finish())
            return NOT_DONE_YET
        if path == b"/echo":
            request.setHeader(b"content-type", b"application/json")
            seen = self.seen[-1]
            return json.dumps({"method": seen["method"].decode(), "body": seen["body"].decode()}).encode()
        if path in (b"/short", b"/short-chunked"):
            if path == b"/short":
                request.setHeader(b"content-length", b"100000")
            request.write(b"x" * 1000)
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        if path == b"/hang":
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain")
        return b"no such thing"


class _CloseDelimited(Protocol):
    """A primary answering every request with a body ended by closing."""

    def connectionMade(self) -> None:
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe whole body")
            self.transport.loseConnection()


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class RelayTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.primary = _Primary()
        self.primary_site = AccessLoggingSite(self.primary, reactor, "public", trust_forwarded=True)
        self.primary_port = reactor.listenTCP(0, self.primary_site, interface="127.0.0.1")
        base = b"http://127.0.0.1:%d" % self.primary_port.getHost().port
        self.worker_site, self.worker_port, self.relay_pool = self.start_worker(base)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.stop)

    def start_worker(self, base: bytes) -> tuple[AccessLoggingSite, Any, Any]:
        agent = relay_agent(reactor)
        site = AccessLoggingSite(RelayResource(agent, base), reactor, "public", metrics=RequestTally())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return site, port, agent._pool

    async def _stop(self) -> None:
        await self.pool.closeCachedConnections()
        await self.relay_pool.closeCachedConnections()
        await self.worker_port.stopListening()
        await self.primary_port.stopListening()
        await self.worker_site.drain(1.0)
        await self.primary_site.drain(1.0)

    def stop(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.worker_port.getHost().port}{path}"

    def test_body_and_end_to_end_headers(self) -> Deferred[None]:
        async def run() -> None:
            for path in ("/big", "/chunked"):
                response = await treq.get(self.url(path), headers={b"x-viewer": [b"v"], b"te": [b"trailers"]}, pool=self.pool)
                body = await treq.content(response)
                self.assertEqual(response.code, 200, path)
                self.assertEqual(len(body), len(BIG), path)
                self.assertTrue(body == BIG, f"{path}: the body arrives intact")
                h = response.headers
                self.assertEqual(h.getRawHeaders(b"content-type"), [b"video/mp4"])
                self.assertEqual(h.getRawHeaders(b"etag"), [b'"QmBig"'])
                self.assertEqual(h.getRawHeaders(b"x-cache"), [b"miss"])
                for hop in (b"keep-alive", b"proxy-connection", b"trailer"):
                    self.assertFalse(h.hasHeader(hop), f"{path}: hop-by-hop {hop!r} was relayed")
                self.assertNotIn(b"x-hop-token", b",".join(h.getRawHeaders(b"connection", [])), path)
                seen = self.primary.seen[-1]
                self.assertEqual(seen["custom"], b"v", "end-to-end request headers reach the primary")
                self.assertIsNone(seen["te"], "hop-by-hop request headers are not relayed")
                self.assertEqual(seen["host"], b"127.0.0.1:%d" % self.worker_port.getHost().port, "the viewer's Host")
            self.assertEqual(
                self.primary.seen[0]["forwarded"], [b"127.0.0.1"], "the viewer's address reaches the primary"
            )

        return ensureDeferred(run())

    def test_forwarded_for_is_not_spoofed(self) -> Deferred[None]:
        async def run() -> None:
            response = await treq.get(self.url("/big"), headers={b"x-forwarded-for": [b"6.6.6.6"]}, pool=self.pool)
            await treq.content(response)
            self.assertEqual(self.primary.seen[-1]["forwarded"], [b"127.0.0.1"], "the worker sets it, never the viewer")

        return ensureDeferred(run())

    def test_head_and_not_modified(self) -> Deferred[None]:
        async def run() -> None:
            response = await treq.head(self.url("/big"), pool=self.pool)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"%d" % len(BIG)])
            self.assertEqual(await treq.content(response), b"")
            self.assertEqual(self.primary.seen[-1]["method"], b"HEAD")
            response = await treq.get(self.url("/big"), headers={b"if-none-match": [b'"QmBig"']}, pool=self.pool)
            self.assertEqual(response.code, 304)
            self.assertEqual(response.headers.getRawHeaders(b"etag"), [b'"QmBig"'])
            self.assertEqual(await treq.content(response), b"")

        return ensureDeferred(run())

    def test_error_status_and_body_relayed(self) -> Deferred[None]:
        async def run() -> None:
            response = await treq.get(self.url("/nothing?x=1"), pool=self.pool)
            self.assertEqual(response.code, 404)
            self.assertEqual(await treq.content(response), b"no such thing")
            self.assertEqual(self.primary.seen[-1]["path"], b"/nothing?x=1", "the query string is relayed")

        return ensureDeferred(run())

    def test_request_body_relayed(self) -> Deferred[None]:
        async def run() -> None:
            response = await treq.post(self.url("/echo"), data=b"hello", pool=self.pool)
            body = await treq.content(response)
            self.assertEqual(response.code, 200, f"the primary answered {body!r}")
            self.assertEqual(json.loads(body), {"method": "POST", "body": "hello"})

        return ensureDeferred(run())

    def test_primary_unreachable(self) -> Deferred[None]:
        async def run() -> None:
            closed = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
            port = closed.getHost().port
            await closed.stopListening()
            site, listening, relay_pool = self.start_worker(b"http://127.0.0.1:%d" % port)
            warnings = capture(self, lambda e: e.get("log_level") == LogLevel.warn)
            try:
                url = f"http://127.0.0.1:{listening.getHost().port}/api/v1/status"
                response = await treq.get(url, pool=self.pool)
                body = await treq.content(response)
            finally:
                await self.pool.closeCachedConnections()
                await relay_pool.closeCachedConnections()
                await listening.stopListening()
                await site.drain(1.0)
            self.assertEqual(response.code, 503)
            answer = json.loads(body)
            self.assertEqual(answer["type"], "node_unavailable", answer)
            self.assertIn("message", answer)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"])
            self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
            self.assertTrue(any("cannot relay" in formatEvent(e) for e in warnings), warnings)

        return ensureDeferred(run())

    def fetch_cut(self, url: str) -> Deferred[Collect | None]:
        """The body of ``url`` as the viewer gets it; None when the
        connection was cut before the response head arrived."""

        async def run() -> Collect | None:
            try:
                response = await Agent(reactor, pool=self.pool).request(b"GET", url.encode())
            except ResponseNeverReceived:
                return None
            self.assertEqual(response.code, 200)
            collect = Collect()
            response.deliverBody(collect)
            await collect.done
            return collect

        return ensureDeferred(run())

    def test_body_cut_short_is_not_complete(self) -> Deferred[None]:
        async def run() -> None:
            for path in ("/short", "/short-chunked"):
                collect = await self.fetch_cut(self.url(path))
                if collect is not None:
                    self.assertFalse(collect.clean, f"{path}: a cut body must not look complete ({collect.reason!r})")
                    self.assertLessEqual(len(collect.data), 1000, path)
                self.assertEqual(self.primary.seen[-1]["path"], path.encode(), "the primary was asked")

        return ensureDeferred(run())

    def test_body_ended_by_close_is_complete(self) -> Deferred[None]:
        """A response without length or chunks (ended by the primary closing
        the connection, as twisted.web's own 400) is complete when it ends."""

        async def run() -> None:
            raw = reactor.listenTCP(0, Factory.forProtocol(_CloseDelimited), interface="127.0.0.1")
            site, listening, relay_pool = self.start_worker(b"http://127.0.0.1:%d" % raw.getHost().port)
            try:
                collect = await self.fetch_cut(f"http://127.0.0.1:{listening.getHost().port}/x")
            finally:
                await self.pool.closeCachedConnections()
                await relay_pool.closeCachedConnections()
                await listening.stopListening()
                await raw.stopListening()
                await site.drain(1.0)
            self.assertIsNotNone(collect, "the viewer got no response at all")
            self.assertEqual(bytes(collect.data), b"the whole body")
            self.assertTrue(collect.clean, f"a complete body was cut: {collect.reason!r}")

        return ensureDeferred(run())

    def test_viewer_gone_cancels_the_relayed_request(self) -> Deferred[None]:
        async def run() -> None:
            d = Agent(reactor, pool=self.pool).request(b"GET", self.url("/hang").encode())
            await until(lambda: bool(self.primary.held), "the primary to get the request")
            gone: list[Failure] = []
            self.primary.held[0].notifyFinish().addErrback(gone.append)
            d.cancel()
            await until(lambda: bool(gone), "the relayed request to be cancelled")
            self.failureResultOf(d)

        return ensureDeferred(run())


# -- 7. the access log: trust_forwarded and relayed ------------------------------------------


class _Leaf(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        if request.path == b"/relayed":
            request.relayed = True
        return b"ok"


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events = capture(self, lambda e: e.get("log_namespace") == "jsdistributor.access")
        self.metrics = NodeMetrics()

    def get(self, site: AccessLoggingSite, path: bytes, forwarded: bytes | None = None) -> bytes:
        address = IPv4Address("TCP", "192.0.2.7", 5555)
        protocol = site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        extra = b"X-Forwarded-For: %s\r\n" % forwarded if forwarded is not None else b""
        protocol.dataReceived(b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, extra))
        protocol.connectionLost(Failure(ConnectionError("done")))
        return transport.value()

    def test_trusted_forwarded_for_names_the_client(self) -> None:
        site = AccessLoggingSite(_Leaf(), Clock(), "public", metrics=self.metrics, trust_forwarded=True)
        self.assertIn(b"ok", self.get(site, b"/a", b"203.0.113.9"))
        self.get(site, b"/b")
        self.assertEqual([e["client"] for e in self.events], ["203.0.113.9", "192.0.2.7"])

    def test_forwarded_for_not_trusted_by_default(self) -> None:
        site = AccessLoggingSite(_Leaf(), Clock(), "public", metrics=self.metrics)
        self.get(site, b"/a", b"203.0.113.9")
        self.assertEqual([e["client"] for e in self.events], ["192.0.2.7"], "a viewer cannot choose its logged address")

    def test_relayed_requests_are_neither_logged_nor_counted(self) -> None:
        site = AccessLoggingSite(_Leaf(), Clock(), "public", metrics=self.metrics)
        self.assertIn(b"ok", self.get(site, b"/relayed"))
        self.assertEqual(self.events, [], "the node logs a relayed request, not the worker")
        sample = self.metrics.registry.get_sample_value
        self.assertIsNone(sample("jsdistributor_http_requests_total", {"api": "public", "route": "other", "status": "200"}))
        self.get(site, b"/plain")
        self.assertEqual(len(self.events), 1, "other requests are still logged")
        self.assertEqual(sample("jsdistributor_http_requests_total", {"api": "public", "route": "other", "status": "200"}), 1)

    def test_no_access_events_but_still_counted(self) -> None:
        site = AccessLoggingSite(_Leaf(), Clock(), "public", metrics=self.metrics, log_requests=False)
        self.assertIn(b"ok", self.get(site, b"/a"))
        self.assertEqual(self.events, [], "log_requests=False: no access event")
        sample = self.metrics.registry.get_sample_value
        self.assertEqual(sample("jsdistributor_http_requests_total", {"api": "public", "route": "other", "status": "200"}), 1)


class AddRequestsTests(SynchronousTestCase):
    def test_counts_accumulate_by_kind(self) -> None:
        metrics = NodeMetrics()
        sample = metrics.registry.get_sample_value
        for _ in range(2):
            metrics.add_requests("public", "assets", 200, "hit", 3, 300)
        metrics.add_requests("public", "assets", 200, "pending", 1, 50)
        metrics.add_requests("public", "assets", 206, "miss", 2, 20)
        metrics.add_requests("public", "status", 200, None, 4, 999)
        metrics.add_requests("public", "other", 404, "weird", 1, 7)
        metrics.observe_request("public", b"/api/v1/assets/1", 200, 5, "hit")
        requests = "jsdistributor_http_requests_total"
        self.assertEqual(sample(requests, {"api": "public", "route": "assets", "status": "200"}), 8)
        self.assertEqual(sample(requests, {"api": "public", "route": "assets", "status": "206"}), 2)
        self.assertEqual(sample(requests, {"api": "public", "route": "status", "status": "200"}), 4)
        self.assertEqual(sample(requests, {"api": "public", "route": "other", "status": "404"}), 1)
        self.assertEqual(sample("jsdistributor_served_bytes_total", {"x_cache": "hit"}), 605)
        self.assertEqual(sample("jsdistributor_served_bytes_total", {"x_cache": "pending"}), 50)
        self.assertEqual(sample("jsdistributor_served_bytes_total", {"x_cache": "miss"}), 20)
        self.assertIsNone(sample("jsdistributor_served_bytes_total", {"x_cache": "weird"}), "unknown x-cache: no label")
        self.assertEqual(sample("jsdistributor_cache_requests_total", {"result": "hit"}), 7)
        self.assertEqual(sample("jsdistributor_cache_requests_total", {"result": "miss"}), 3, "pending and miss are misses")
        self.assertEqual(sample("jsdistributor_cache_bytes_served_total", {"result": "miss"}), 70)
        self.assertEqual(sample("jsdistributor_worker_restarts_total"), 0, "the restart counter exists from the start")


# -- 8. SO_REUSEPORT ----------------------------------------------------------------------


class ReusePortTests(TestCase):
    def listen(self, port: int) -> Any:
        listening = listen_reuseport(reactor, port, Factory.forProtocol(Protocol), 50, "127.0.0.1")
        self.addCleanup(listening.stopListening)
        return listening

    def test_two_listeners_on_one_port(self) -> None:
        first = self.listen(0)
        port = first.getHost().port
        second = self.listen(port)
        self.assertEqual(second.getHost().port, port, "a second SO_REUSEPORT listener shares the port")
        self.assertTrue(port_is_taken("127.0.0.1", port), "a plain bind sees the shared port taken")

    def test_not_over_a_plain_listener(self) -> None:
        plain = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(plain.stopListening)
        self.assertRaises(CannotListenError, listen_reuseport, reactor, plain.getHost().port, Factory(), 50, "127.0.0.1")

    async def _port_is_taken(self) -> None:
        self.assertFalse(port_is_taken("127.0.0.1", 0), "port 0 is never taken")
        plain = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        port = plain.getHost().port
        try:
            self.assertTrue(port_is_taken("127.0.0.1", port))
        finally:
            await plain.stopListening()
        self.assertFalse(port_is_taken("127.0.0.1", port), "a port nobody listens on is free")

    def test_port_is_taken(self) -> Deferred[None]:
        return ensureDeferred(self._port_is_taken())


# -- 9. publicApi.workers ----------------------------------------------------------------------


class WorkersConfigTests(SynchronousTestCase):
    def parse(self, document: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
        return parse_config(document, Path("/etc/jsd"), environ or {})

    def problems(self, document: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
        from jsdistributor.config import ConfigError

        return self.assertRaises(ConfigError, self.parse, document, environ).problems

    def test_default_and_value(self) -> None:
        self.assertEqual(self.parse(minimal()).public_api.workers, 0)
        config = self.parse(minimal(publicApi={"port": 3334, "workers": 4}))
        self.assertEqual(config.public_api.workers, 4)
        self.assertEqual(masked_config_dict(config)["publicApi"]["workers"], 4, "the effective config shows it")
        self.assertEqual(self.parse(minimal(publicApi={"port": 3334, "workers": 64})).public_api.workers, 64)

    def test_environment(self) -> None:
        config = self.parse(minimal(), {"JOYSTREAM_DISTRIBUTOR__PUBLIC_API__WORKERS": "3"})
        self.assertEqual(config.public_api.workers, 3)

    def test_rejected(self) -> None:
        for value, expected in [
            (-1, "publicApi.workers: -1 is less than the minimum of 0"),
            (65, "publicApi.workers: 65 is greater than the maximum of 64"),
            ("x", "publicApi.workers: must be an integer, got 'x'"),
            (True, "publicApi.workers: must be an integer, got true"),
        ]:
            problems = self.problems(minimal(publicApi={"port": 3334, "workers": value}))
            self.assertEqual(problems, [expected], f"workers={value!r}")
        problems = self.problems(minimal(), {"JOYSTREAM_DISTRIBUTOR__PUBLIC_API__WORKERS": "x"})
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("publicApi.workers: "), problems)
        self.assertIn("JOYSTREAM_DISTRIBUTOR__PUBLIC_API__WORKERS", problems[0], "the variable is named")


# -- 10. most_verbose_level, and asset_id_of ----------------------------------------------------


class MostVerboseLevelTests(SynchronousTestCase):
    def test_levels(self) -> None:
        file = lambda level: FileLog(path=Path("/l"), level=level)  # noqa: E731
        self.assertEqual(most_verbose_level(Logs(console_level="info", file=file("debug"))), "debug")
        self.assertEqual(most_verbose_level(Logs(console_level="silly", file=file("debug"))), "silly")
        self.assertEqual(most_verbose_level(Logs(console_level="VERBOSE", file=file("warn"))), "verbose")
        self.assertEqual(most_verbose_level(Logs(console_level=None, file=None)), "error", "no output: errors only")
        self.assertEqual(most_verbose_level(Logs(console_level="http", file=None)), "http")
        self.assertEqual(most_verbose_level(Logs(console_level=None, file=file("warn"))), "warn")
        self.assertEqual(most_verbose_level(parse_config(minimal(), Path("/etc/jsd"), {}).logs), "info")

    def test_logs_requests(self) -> None:
        self.assertEqual(
            {level: logs_requests(level) for level in ("error", "warn", "info", "http", "verbose", "debug", "silly", "HTTP")},
            {"error": False, "warn": False, "info": False, "http": True, "verbose": True, "debug": True, "silly": True,
             "HTTP": True},
            "the access log is the http level",
        )


class AssetIdTests(SynchronousTestCase):
    def test_examples(self) -> None:
        def of(path: bytes, method: bytes = b"GET") -> str | None:
            request = DummyRequest(path.split(b"/")[1:])
            request.method = method
            return asset_id_of(request)

        self.assertEqual(of(b"/api/v1/assets/123"), "123")
        self.assertEqual(of(b"/api/v1/asset/123"), "123")
        self.assertEqual(of(b"/api/v1/assets/123", b"HEAD"), "123")
        self.assertEqual(of(b"/api/v1/assets/" + b"9" * 20), "9" * 20)
        for path in (b"/api/v1/assets/" + b"9" * 21, b"/api/v1/assets/", b"/api/v1/assets/12/", b"/api/v2/assets/1",
                     b"/api/v1/assetz/1", b"/x/api/v1/assets/1", b"/api/v1/assets/1a", b"/api/v1/status"):
            self.assertIsNone(of(path), path)
        self.assertIsNone(of(b"/api/v1/assets/1", b"POST"))
        self.assertIsNone(of("/api/v1/assets/١٢".encode()), "non-ASCII digits are not an id")

    @settings(max_examples=300, derandomize=True, deadline=None)
    @given(
        st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS"]),
        st.sampled_from([b"assets", b"asset", b"Assets"]),
        st.one_of(st.binary(max_size=24), st.text("0123456789", max_size=22).map(str.encode)),
    )
    @example(b"GET", b"assets", "٣".encode())
    def test_agrees_with_is_valid_object_id(self, method: bytes, kind: bytes, raw: bytes) -> None:
        request = DummyRequest([b"api", b"v1", kind, raw])
        request.method = method
        text = raw.decode("latin-1")
        expected = text if method in (b"GET", b"HEAD") and kind != b"Assets" and is_valid_object_id(text) else None
        self.assertEqual(asset_id_of(request), expected)
