"""A storage node ("Colossus") simulator for tests, the demo and benchmarks.

It serves the part of the storage node API a distributor uses (the API root
is ``/api/v1``)::

    GET  /api/v1/files/{id}   the object (single ranges: 206 + Content-Range)
    HEAD /api/v1/files/{id}   200 with Content-Length, or 404
    GET  /api/v1/version      {"version": "sim-1.0.0"}
    GET  /api/v1/_stats       the counters below as JSON (not a storage node
                              route: for benchmarks and the standalone CLI)
    POST /api/v1/_stats/reset ``reset_stats()``

Objects come from an in-memory dict ``{id: bytes}`` and/or a directory of
files named by object id (the dict wins). Files are streamed in chunks by a
push producer, never read whole. ``Content-Type`` is guessed from the data
(``filetype``), ``application/octet-stream`` otherwise; no
``Content-Encoding`` is sent unless the ``content_encoding`` knob says so.

Faults are injected with *knobs* (:class:`Knobs`), set globally with
:meth:`StorageNodeSimulator.configure` or per object id with
:meth:`StorageNodeSimulator.configure_object` (a per-object value overrides
the global one), changeable at any time; they apply to requests received
afterwards.

Observability: ``requests`` (log of :class:`RequestRecord`) and
``request_headers`` (their headers), ``counts``
(per method), ``in_flight`` / ``max_in_flight`` (requests being served at
once: from arrival to the end of the response or of the connection),
``bytes_sent`` (body bytes), ``reset_stats()``; with ``send_mark_every``
set, ``send_marks`` records when each multiple of that many bytes of an
object was handed to the transport (benchmarks compare it with the time a
reader received the same offset). Requests to ``/_stats`` are not counted.

:func:`start_storage_sim` listens on 127.0.0.1 and returns a
:class:`RunningSim`, which can be stopped (closing every open connection)
and started again on the same port.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections import Counter
from pathlib import Path
from typing import IO, Any, Callable, NamedTuple, Protocol

import attrs
import filetype
from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from ..model import StorageEndpoint, is_valid_object_id

__all__ = [
    "CORRUPT_EVERY",
    "Knobs",
    "RequestRecord",
    "RunningSim",
    "SendMarks",
    "StorageNodeSimulator",
    "UNSATISFIABLE",
    "parse_range",
    "start_storage_sim",
]

log = Logger()

SIM_VERSION = "sim-1.0.0"

#: Body chunk size written per step when not throttled.
CHUNK_SIZE = 64 * 1024

#: With a ``rate``, bytes are sent in steps of about this many seconds.
RATE_TICK = 0.02

#: ``corrupt`` flips (XOR 0xFF) every byte whose offset in the object is a
#: multiple of this: the object's first byte always, and at least one byte of
#: any range at least this long. The length stays the same.
CORRUPT_EVERY = 1024

#: Byte appended ``extra_bytes`` times after the body.
EXTRA_BYTE = b"X"

#: Bytes read from an object to guess its content type.
SNIFF_BYTES = 8192

#: The observability routes under ``/api/v1``.
STATS_PATH = b"_stats"


@define
class Knobs:
    """Fault injection settings (all off by default)."""

    #: Seconds before the response headers of ``/files/{id}`` (GET and HEAD).
    latency: float = 0.0
    #: Seconds before answering ``/version`` (drives response-time ranking).
    version_latency: float = 0.0
    #: GET answers this status with a JSON error body (HEAD is unaffected).
    fail_status: int | None = None
    #: HEAD answers this status (whether or not the object exists).
    head_status: int | None = None
    #: Drop connections: globally, new connections are closed as soon as
    #: they are accepted; globally or per object, a request is answered by
    #: aborting its connection.
    refuse: bool = False
    #: After this many body bytes, abort the connection (TCP RST).
    reset_after: int | None = None
    #: After this many body bytes, send nothing more; the connection stays
    #: open (until the client or ``RunningSim.stop`` closes it).
    stall_after: int | None = None
    #: Send only this many body bytes, then close the connection cleanly:
    #: the Content-Length announced the full length, so the body is short.
    truncate_to: int | None = None
    #: Append this many bytes (``EXTRA_BYTE``) to the body, with a
    #: Content-Length that counts them.
    extra_bytes: int = 0
    #: Flip bytes (see ``CORRUPT_EVERY``): same length, wrong hash.
    corrupt: bool = False
    #: Throttle the body to this many bytes per second (reactor-timed).
    rate: float | None = None
    #: Answer a Range request with 200 and the whole body.
    ignore_range: bool = False
    #: Send this Content-Encoding header (the body is sent unchanged).
    content_encoding: str | None = None
    #: Send this Content-Type instead of the guessed one.
    content_type: str | None = None


KNOB_NAMES = frozenset(attrs.fields_dict(Knobs))


class RequestRecord(NamedTuple):
    """One request received: ``object_id`` is None for ``/version`` and
    unknown paths; ``range_header`` is the raw ``Range`` value, if any."""

    method: str
    object_id: str | None
    range_header: str | None


@define
class SendMarks:
    """When one GET's body reached given object offsets: ``marks`` holds
    ``(offset, seconds)`` pairs (``clock.seconds()`` when the chunk holding
    byte ``offset`` was written to the transport); the last pair is the
    body's end offset (exclusive), when its last byte was written."""

    object_id: str
    start: int
    marks: list[tuple[int, float]] = field(factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"objectId": self.object_id, "start": self.start, "marks": [list(m) for m in self.marks]}


class _Unsatisfiable:
    def __repr__(self) -> str:
        return "UNSATISFIABLE"


#: ``parse_range`` result for a range outside the object (answer 416).
UNSATISFIABLE = _Unsatisfiable()

_RANGE_SPEC = re.compile(rb"([0-9]{0,20})-([0-9]{0,20})")


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """A single ``Range`` header -> inclusive ``(start, end)``.

    ``None`` means serve the whole object (no header, another unit, several
    ranges, or a malformed one: RFC 9110 lets a server ignore those);
    :data:`UNSATISFIABLE` means answer 416. Forms: ``bytes=a-b``,
    ``bytes=a-`` and the suffix form ``bytes=-n``; ``b`` past the end is
    clamped.
    """
    if header is None:
        return None
    unit, sep, spec = header.strip().partition(b"=")
    if not sep or unit.strip().lower() != b"bytes":
        return None
    match = _RANGE_SPEC.fullmatch(spec.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size - 1)
    start = int(first)
    if last:
        end = int(last)
        if end < start:
            return None
    else:
        end = size - 1
    if start >= size:
        return UNSATISFIABLE
    return (start, min(end, size - 1))


class _Source(Protocol):
    size: int

    def read(self, offset: int, n: int) -> bytes: ...

    def close(self) -> None: ...


class _BytesSource:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def read(self, offset: int, n: int) -> bytes:
        return self._data[offset : offset + n]

    def close(self) -> None:
        pass


class _FileSource:
    """Reads a file in pieces; opened lazily, closed by ``close``."""

    def __init__(self, path: Path, size: int) -> None:
        self._path = path
        self._file: IO[bytes] | None = None
        self.size = size

    def read(self, offset: int, n: int) -> bytes:
        if self._file is None:
            self._file = self._path.open("rb")
        self._file.seek(offset)
        data = self._file.read(n)
        if len(data) < n:  # the file shrank under us: pad, keep the length
            data += b"\0" * (n - len(data))
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _guess_type(source: _Source) -> str:
    head = source.read(0, min(SNIFF_BYTES, source.size)) if source.size else b""
    kind = filetype.guess(head) if head else None
    return kind.mime if kind is not None else "application/octet-stream"


class _Sink(Protocol):
    """Where a body streamer writes (a request, or a test double)."""

    def register(self, producer: IPushProducer) -> None: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _RequestSink:
    def __init__(self, request: Request, clock: Any) -> None:
        self._request = request
        self._clock = clock

    def register(self, producer: IPushProducer) -> None:
        self._request.registerProducer(producer, True)

    def write(self, data: bytes) -> None:
        self._request.write(data)

    def finish(self) -> None:
        self._request.unregisterProducer()
        self._request.finish()

    def close(self) -> None:
        self._request.unregisterProducer()
        self._request.loseConnection()

    def abort(self) -> None:
        """Reset the connection (TCP RST) once what was written is sent.

        ``abortConnection`` alone drops Twisted's unsent buffer, and closes
        with a FIN; ``loseConnection`` flushes but always ends with a FIN.
        So: SO_LINGER 0 (a close sends RST), wait until the transport's
        buffer is empty, then ``abortConnection``."""
        self._request.unregisterProducer()
        transport = self._request.transport
        if transport is None:
            return
        try:
            transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (AttributeError, OSError):
            transport.abortConnection()  # not a real socket
            return
        self._abort_when_flushed(transport, 1000)

    def _abort_when_flushed(self, transport: Any, tries: int) -> None:
        if getattr(transport, "disconnected", False):
            return
        pending = (
            len(getattr(transport, "dataBuffer", b""))
            - getattr(transport, "offset", 0)
            + getattr(transport, "_tempDataLen", 0)
        )
        if pending > 0 and tries > 0:
            self._clock.callLater(0, self._abort_when_flushed, transport, tries - 1)
        else:
            transport.abortConnection()


@implementer(IPushProducer)
class BodyStreamer:
    """Writes ``length`` bytes of ``source`` from ``start`` to ``sink``,
    applying the knobs (extra, corrupt, rate, reset/stall/truncate).

    A push producer: ``pauseProducing`` (possibly from inside ``write``)
    stops the writing loop until ``resumeProducing``.
    """

    def __init__(
        self,
        clock: Any,
        source: _Source,
        start: int,
        length: int,
        knobs: Knobs,
        sink: _Sink,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._clock = clock
        self._source = source
        self._start = start
        self._length = length
        self._knobs = knobs
        self._sink = sink
        self._on_bytes = on_bytes
        #: What the Content-Length header says.
        self.declared_length = length + max(0, knobs.extra_bytes)
        cuts = [
            (value, action)
            for value, action in (
                (knobs.reset_after, "reset"),
                (knobs.stall_after, "stall"),
                (knobs.truncate_to, "truncate"),
            )
            if value is not None and value < self.declared_length
        ]
        if cuts:
            self._limit, self._end_action = min(cuts, key=lambda c: c[0])
            self._limit = max(0, self._limit)
        else:
            self._limit, self._end_action = self.declared_length, "finish"
        self._sent = 0
        self._paused = False
        self._stopped = False
        self._producing = False
        self._ended = False
        self._delayed: IDelayedCall | None = None
        self._rate_origin: tuple[float, int] | None = None

    @property
    def sent(self) -> int:
        return self._sent

    def begin(self) -> None:
        self._sink.register(self)
        self._produce()

    def _chunk(self, n: int) -> bytes:
        pos = self._sent
        parts = []
        if pos < self._length:
            take = min(n, self._length - pos)
            data = self._source.read(self._start + pos, take)
            if self._knobs.corrupt:
                data = _flip(data, self._start + pos)
            parts.append(data)
            n -= take
        if n > 0:
            parts.append(EXTRA_BYTE * n)
        return b"".join(parts)

    def _produce(self) -> None:
        if self._producing or self._stopped or self._ended:
            return
        self._producing = True
        try:
            rate = self._knobs.rate
            while not self._paused and not self._stopped and self._sent < self._limit:
                n = min(CHUNK_SIZE, self._limit - self._sent)
                if rate:
                    n = min(n, max(1, int(rate * RATE_TICK)))
                data = self._chunk(n)
                self._sent += n
                self._on_bytes(n)
                self._sink.write(data)
                if rate and self._sent < self._limit:
                    # Due time from a fixed origin: timer lateness does not
                    # accumulate into a slower rate.
                    if self._rate_origin is None:
                        self._rate_origin = (self._clock.seconds(), self._sent - n)
                    origin, base = self._rate_origin
                    due = origin + (self._sent - base) / rate
                    self._delayed = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._tick)
                    return
            if self._sent >= self._limit and not self._stopped:
                self._end()
        finally:
            self._producing = False

    def _tick(self) -> None:
        self._delayed = None
        self._produce()

    def _end(self) -> None:
        self._ended = True
        self._source.close()
        action = self._end_action
        if action == "finish":
            self._sink.finish()
        elif action == "truncate":
            self._sink.close()
        elif action == "reset":
            self._sink.abort()
        # "stall": write nothing more, leave the connection open.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._rate_origin = None  # no burst to catch up the paused time
        self._paused = False
        if self._delayed is None:
            self._produce()

    def stopProducing(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None
        self._source.close()


def _flip(data: bytes, offset: int) -> bytes:
    first = -offset % CORRUPT_EVERY  # index in data of the first multiple
    if first >= len(data):
        return data
    buf = bytearray(data)
    for i in range(first, len(buf), CORRUPT_EVERY):
        buf[i] ^= 0xFF
    return bytes(buf)


class StorageNodeSimulator(Resource):
    """The root resource of a simulated storage node, with its knobs.

    ``clock`` times latency and throttling (the reactor; a ``Clock`` in
    unit tests); ``reactor`` (default: ``clock``) runs the network-side
    chores (waiting for a flush before a reset).
    """

    def __init__(
        self,
        clock: Any,
        objects: dict[str, bytes] | None = None,
        directory: str | Path | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.reactor = reactor if reactor is not None else clock
        #: In-memory objects; mutate freely.
        self.objects: dict[str, bytes] = dict(objects or {})
        self.directory: Path | None = Path(directory) if directory is not None else None
        self.knobs = Knobs()
        self._object_knobs: dict[str, dict[str, Any]] = {}
        self.requests: list[RequestRecord] = []
        #: The request headers of each entry of ``requests``.
        self.request_headers: list[Headers] = []
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.bytes_sent = 0
        #: Record ``send_marks`` every this many body bytes (0: never).
        self.send_mark_every = 0
        self.send_marks: list[SendMarks] = []
        api = Resource()
        api.putChild(b"v1", _ApiV1(self))
        self.putChild(b"api", api)

    # Knobs.
    def configure(self, **knobs: Any) -> None:
        """Set global knobs, e.g. ``configure(latency=0.5, rate=10240)``."""
        _check_knobs(knobs)
        self.knobs = attrs.evolve(self.knobs, **knobs)

    def configure_object(self, object_id: str, **knobs: Any) -> None:
        """Set knobs for one object id (override the global ones)."""
        _check_knobs(knobs)
        self._object_knobs.setdefault(object_id, {}).update(knobs)

    def clear_knobs(self, object_id: str | None = None) -> None:
        """Reset one object's knobs, or (no id) every knob."""
        if object_id is None:
            self.knobs = Knobs()
            self._object_knobs.clear()
        else:
            self._object_knobs.pop(object_id, None)

    def knobs_for(self, object_id: str | None) -> Knobs:
        overrides = self._object_knobs.get(object_id) if object_id is not None else None
        return attrs.evolve(self.knobs, **overrides) if overrides else self.knobs

    # Objects.
    def add_object(self, object_id: str, data: bytes) -> None:
        self.objects[object_id] = data

    def remove_object(self, object_id: str) -> None:
        self.objects.pop(object_id, None)

    def _source(self, object_id: str) -> _Source | None:
        data = self.objects.get(object_id)
        if data is not None:
            return _BytesSource(data)
        if self.directory is not None:
            path = self.directory / object_id
            try:
                if path.is_file():
                    return _FileSource(path, path.stat().st_size)
            except OSError:
                return None
        return None

    # Observability.
    def reset_stats(self) -> None:
        """Clear the request log, counters, max in-flight and bytes sent."""
        self.requests.clear()
        self.request_headers.clear()
        self.counts.clear()
        self.max_in_flight = self.in_flight
        self.bytes_sent = 0
        self.send_marks.clear()

    def stats(self) -> dict[str, Any]:
        """The counters as a JSON-able dict (what ``GET /api/v1/_stats`` sends)."""
        gets: Counter[str] = Counter()
        heads: Counter[str] = Counter()
        for record in self.requests:
            if record.object_id is not None:
                if record.method == "GET":
                    gets[record.object_id] += 1
                elif record.method == "HEAD":
                    heads[record.object_id] += 1
        return {
            "counts": dict(self.counts),
            "gets": dict(gets),
            "heads": dict(heads),
            "inFlight": self.in_flight,
            "maxInFlight": self.max_in_flight,
            "bytesSent": self.bytes_sent,
            "sendMarks": [m.as_json() for m in self.send_marks],
        }

    def _marker(self, object_id: str, start: int, end: int) -> Callable[[int], None]:
        """An ``on_bytes`` callback counting bytes and, if asked, recording
        ``send_marks`` for one response body ``[start, end)``: every multiple
        of ``send_mark_every`` in it, and ``end`` when the last byte went."""
        every = self.send_mark_every
        if every <= 0:
            return self._count_bytes
        record = SendMarks(object_id, start)
        self.send_marks.append(record)
        position = start

        def on_bytes(n: int) -> None:
            nonlocal position
            self.bytes_sent += n
            first = -(-position // every) * every  # the first multiple >= position
            now = self.clock.seconds()
            for offset in range(first, min(position + n, end), every):
                record.marks.append((offset, now))
            if position < end <= position + n:
                record.marks.append((end, now))
            position += n

        return on_bytes

    def requests_for(self, object_id: str, method: str | None = None) -> list[RequestRecord]:
        return [r for r in self.requests if r.object_id == object_id and (method is None or r.method == method)]

    def _count_bytes(self, n: int) -> None:
        self.bytes_sent += n

    # Serving.
    def _begin(self, request: Request, record: RequestRecord) -> None:
        self.requests.append(record)
        self.request_headers.append(request.requestHeaders.copy())
        self.counts[record.method] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def done(result: object) -> None:
            self.in_flight -= 1

        request.notifyFinish().addBoth(done)

    def _later(self, request: Request, seconds: float, func: Callable[[], None]) -> None:
        """``func()`` after ``seconds`` unless the client goes away first."""
        if seconds <= 0:
            func()
            return
        call = self.clock.callLater(seconds, func)

        def gone(reason: Failure) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(gone)

    def render_api(self, request: Request) -> Any:
        path = request.postpath
        method = request.method.decode("ascii", "replace")
        if path and path[0] == STATS_PATH:
            return self._render_stats(request, method, path[1:])
        raw_range = request.getHeader(b"range")
        range_text = raw_range.decode("latin-1") if raw_range is not None else None
        object_id: str | None = None
        if len(path) == 2 and path[0] == b"files":
            object_id = path[1].decode("utf-8", "replace")
        self._begin(request, RequestRecord(method, object_id, range_text))

        knobs = self.knobs_for(object_id)
        if knobs.refuse:
            request.transport.abortConnection()
            return NOT_DONE_YET

        if path == [b"version"]:
            if method not in ("GET", "HEAD"):
                _json(request, 405, {"type": "method", "message": "Method not allowed"})
            else:
                self._later(request, knobs.version_latency, lambda: _json(request, 200, {"version": SIM_VERSION}))
            return NOT_DONE_YET
        if object_id is None:
            _json(request, 404, {"type": "not_found", "message": "Not found"})
            return NOT_DONE_YET
        if method not in ("GET", "HEAD"):
            _json(request, 405, {"type": "method", "message": "Method not allowed"})
            return NOT_DONE_YET
        if not is_valid_object_id(object_id):
            _json(request, 400, {"type": "validation", "message": f"Invalid data object id: {object_id}"})
            return NOT_DONE_YET
        self._later(request, knobs.latency, lambda: self._serve_file(request, method, object_id, knobs))
        return NOT_DONE_YET

    def _render_stats(self, request: Request, method: str, rest: list[bytes]) -> Any:
        if rest in ([], [b""]) and method == "GET":
            _json(request, 200, self.stats())
        elif rest == [b"reset"] and method == "POST":
            self.reset_stats()
            _json(request, 200, {"reset": True})
        elif rest in ([], [b""], [b"reset"]):
            _json(request, 405, {"type": "method", "message": "Method not allowed"})
        else:
            _json(request, 404, {"type": "not_found", "message": "Not found"})
        return NOT_DONE_YET

    def _serve_file(self, request: Request, method: str, object_id: str, knobs: Knobs) -> None:
        source = self._source(object_id)
        if method == "HEAD":
            status = knobs.head_status
            if status is None:
                status = 200 if source is not None else 404
            request.setResponseCode(status)
            if status == 200:
                size = source.size if source is not None else 0
                request.setHeader(b"content-length", b"%d" % (size,))
                request.setHeader(b"accept-ranges", b"bytes")
                request.setHeader(b"content-type", _content_type(source, knobs).encode("ascii"))
                if knobs.content_encoding:
                    request.setHeader(b"content-encoding", knobs.content_encoding.encode("ascii"))
            else:
                request.setHeader(b"content-type", b"application/json; charset=utf-8")
            if source is not None:
                source.close()
            request.write(b"")
            request.finish()
            return

        if knobs.fail_status is not None:
            if source is not None:
                source.close()
            _json(request, knobs.fail_status, {"type": "simulated", "message": f"Simulated failure for {object_id}"})
            return
        if source is None:
            _json(request, 404, {"type": "not_found", "message": f"File not found: {object_id}"})
            return

        size = source.size
        wanted = None if knobs.ignore_range else parse_range(request.getHeader(b"range"), size)
        if wanted is UNSATISFIABLE:
            source.close()
            request.setHeader(b"content-range", b"bytes */%d" % (size,))
            _json(request, 416, {"type": "range", "message": "Range not satisfiable"})
            return
        if isinstance(wanted, tuple):
            start, end = wanted
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end, size))
        else:
            start, end = 0, size - 1
            request.setResponseCode(200)
        streamer = BodyStreamer(
            self.clock,
            source,
            start,
            end - start + 1,
            knobs,
            _RequestSink(request, self.reactor),
            self._marker(object_id, start, end + 1),
        )
        request.setHeader(b"content-length", b"%d" % (streamer.declared_length,))
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-type", _content_type(source, knobs).encode("ascii"))
        if knobs.content_encoding:
            request.setHeader(b"content-encoding", knobs.content_encoding.encode("ascii"))
        request.notifyFinish().addErrback(lambda reason: streamer.stopProducing())
        streamer.begin()


def _content_type(source: _Source | None, knobs: Knobs) -> str:
    if knobs.content_type:
        return knobs.content_type
    if source is None:
        return "application/octet-stream"
    return _guess_type(source)


def _check_knobs(knobs: dict[str, Any]) -> None:
    unknown = set(knobs) - KNOB_NAMES
    if unknown:
        raise TypeError(f"unknown knob(s): {', '.join(sorted(unknown))}")


def _json(request: Request, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % (len(data),))
    request.write(data)
    request.finish()


class _ApiV1(Resource):
    """Everything under ``/api/v1``: the simulator routes by hand."""

    isLeaf = True

    def __init__(self, sim: StorageNodeSimulator) -> None:
        super().__init__()
        self._sim = sim

    def render(self, request: Request) -> Any:
        return self._sim.render_api(request)


class _QuietSite(Site):
    noisy = False

    def log(self, request: Request) -> None:  # no access log in tests
        pass


class _ConnectionTracker(WrappingFactory):
    """Knows every open connection; refuses new ones when told to."""

    noisy = False

    def __init__(self, site: Site, sim: StorageNodeSimulator) -> None:
        super().__init__(site)
        self._sim = sim
        self._idle_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        if self._sim.knobs.refuse:
            return None  # the reactor closes the accepted socket at once
        return super().buildProtocol(addr)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        """Abort every open connection; fires once all are gone."""
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        for protocol in list(self.protocols):
            transport = protocol.transport
            if transport is not None:
                transport.abortConnection()
        return d


@define
class RunningSim:
    """A simulator listening on ``interface:port``."""

    reactor: Any
    sim: StorageNodeSimulator
    interface: str
    port: int
    _factory: _ConnectionTracker = field(repr=False)
    _listening: IListeningPort | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The API root, e.g. ``http://127.0.0.1:PORT/api/v1``."""
        return f"http://{self._host()}:{self.port}/api/v1"

    @property
    def node_endpoint(self) -> str:
        """The node endpoint as registered on chain: ``http://127.0.0.1:PORT/``."""
        return f"http://{self._host()}:{self.port}/"

    def _host(self) -> str:
        return f"[{self.interface}]" if ":" in self.interface else self.interface

    def endpoint(self, bucket_id: str = "0") -> StorageEndpoint:
        return StorageEndpoint(bucket_id=bucket_id, url=self.url)

    @property
    def running(self) -> bool:
        return self._listening is not None

    def start(self) -> Deferred[None]:
        """Listen again on the same port (after ``stop``)."""
        if self._listening is None:
            try:
                self._listening = self.reactor.listenTCP(self.port, self._factory, interface=self.interface)
            except Exception:
                return fail()
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Stop listening and abort every open connection; fires when the
        port is closed and every connection is gone. Idempotent."""
        listening, self._listening = self._listening, None
        stopped = listening.stopListening() if listening is not None else succeed(None)
        closed = self._factory.close_all()
        return stopped.addCallback(lambda _: closed)


def start_storage_sim(
    reactor: Any,
    objects: dict[str, bytes] | None = None,
    directory: str | Path | None = None,
    port: int = 0,
    interface: str = "127.0.0.1",
    clock: Any = None,
) -> Deferred[RunningSim]:
    """Start a simulator on ``interface:port`` (0: an ephemeral port).

    ``clock`` (default ``reactor``) times latency and throttling.
    """
    sim = StorageNodeSimulator(
        clock if clock is not None else reactor, objects=objects, directory=directory, reactor=reactor
    )
    site = _QuietSite(sim, reactor=reactor)
    factory = _ConnectionTracker(site, sim)
    try:
        listening = reactor.listenTCP(port, factory, interface=interface)
    except Exception:
        return fail()
    running = RunningSim(reactor, sim, interface, listening.getHost().port, factory, listening)
    return succeed(running)
