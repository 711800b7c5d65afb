"""HTTP client of storage nodes ("Colossus" API: ``/files/{id}``, ``/version``).

Byte-exact by construction: a raw ``twisted.web.client.Agent`` on one shared
``HTTPConnectionPool`` -- no content decoding (``Accept-Encoding: identity``
is sent, and nothing would decode a gzip answer anyway) and no redirect
following (a 3xx is an error) -- so the lengths and hashes the cache checks
are the storage node's own bytes.

Concurrency: at most ``max_connections`` requests are in flight at once
across the client (a ``DeferredSemaphore``; the pool's
``maxPersistentPerHost`` only caps *idle* connections). A request waits for a
slot before its timeout starts. ``head_object`` and ``probe`` give the slot
back when they fire. ``get_object`` hands the slot over to the returned
:class:`StorageResponse`, which gives it back when its body has been fully
delivered or the connection is lost -- so a caller **must** either call
``response.deliverBody(protocol)`` and let the body run to its end (or stop
the transport it was given), or call ``response.abandon()``. Dropping the
response on the floor leaks the slot.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, maybeDeferred
from twisted.internet.error import TimeoutError as ConnectingTimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ..errors import StorageError
from ..interfaces import IStorageClient
from ..model import StorageEndpoint, is_valid_object_id

__all__ = [
    "StorageClient",
    "StorageResponse",
    "make_pool",
    "parse_content_range",
]

#: Error/probe bodies are read up to this many bytes, then the connection is
#: dropped (a misbehaving node cannot make us buffer a large body).
MAX_DISCARD_BYTES = 64 * 1024

#: Idle pooled connections are closed after this many seconds: below the 5 s
#: keep-alive timeout of the Node.js servers storage nodes run, so we do not
#: race the server closing an idle connection while we reuse it (Twisted
#: retries idempotent requests on such a connection anyway).
DEFAULT_IDLE_TIMEOUT = 4.0

#: Idle connections kept per storage node at most.
MAX_IDLE_PER_HOST = 20

_USER_AGENT = b"jsdistributor"


def make_pool(reactor: Any, max_connections: int, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> HTTPConnectionPool:
    """A persistent connection pool for the storage client.

    ``max_connections`` is ``limits.max_concurrent_outbound_connections``;
    idle connections per host are capped at ``min(max_connections, 20)``.
    """
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, not {max_connections!r}")
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(1, min(max_connections, MAX_IDLE_PER_HOST))
    pool.cachedConnectionTimeout = idle_timeout
    pool.retryAutomatically = True
    return pool


_CONTENT_RANGE = re.compile(rb"bytes ([0-9]{1,20})-([0-9]{1,20})/([0-9]{1,20}|\*)")


def parse_content_range(value: bytes | None) -> tuple[int, int, int | None] | None:
    """``b"bytes 10-19/100"`` -> ``(10, 19, 100)``; total ``*`` -> None.

    None for anything else (absent, malformed, ``end < start``,
    ``end >= total``, an unsatisfied-range form ``bytes */100``).
    """
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == b"*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return (start, end, total)


class _Once:
    """Calls ``func`` the first time it is called, never again."""

    def __init__(self, func: Callable[[], None]) -> None:
        self._func: Callable[[], None] | None = func

    @property
    def done(self) -> bool:
        return self._func is None

    def __call__(self) -> None:
        func, self._func = self._func, None
        if func is not None:
            func()


class _BodyPrefix(Protocol):
    """Collects up to ``limit`` bytes of a body, then drops the connection."""

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self._limit = limit
        self._finished = finished
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        room = self._limit - self._size
        self._chunks.append(data[:room])
        self._size += min(len(data), room)
        if len(data) > room:
            # Too much: fire now, and close the connection.
            self._finished.callback(b"".join(self._chunks))
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._finished.called:
            self._finished.callback(b"".join(self._chunks))


def _read_prefix(response: IResponse, limit: int = MAX_DISCARD_BYTES) -> Deferred[bytes]:
    """The first ``limit`` bytes of the body (the rest is not read: the
    connection is dropped). A clean end, a truncated body and a lost
    connection all just fire with what arrived. Cancelling drops the
    connection."""
    protocol: _BodyPrefix

    def cancel(d: Deferred[bytes]) -> None:
        transport = protocol.transport
        if transport is not None:
            transport.stopProducing()

    finished: Deferred[bytes] = Deferred(cancel)
    protocol = _BodyPrefix(limit, finished)
    response.deliverBody(protocol)
    return finished


class _ReleasingProtocol(Protocol):
    """Forwards a body to ``wrapped``; calls ``release`` once it has ended."""

    def __init__(self, wrapped: Protocol, release: Callable[[], None]) -> None:
        self._wrapped = wrapped
        self._release = release

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.connected = 1
        self._wrapped.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self._wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # Release first: the wrapped protocol may start the next request
        # (or check the client's state) from its connectionLost.
        self.connected = 0
        self._release()
        self._wrapped.connectionLost(reason)


class _Abandon(Protocol):
    """Drops the connection of a body nobody wants."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        transport.stopProducing()


@implementer(IResponse)
class StorageResponse:
    """The ``IResponse`` of a ``GET /files/{id}`` that holds a client slot.

    Everything ``IResponse`` has is forwarded to the wrapped response. The
    slot is given back when the body protocol passed to :meth:`deliverBody`
    receives ``connectionLost`` (body complete, transport stopped,
    connection lost), or on :meth:`abandon`.

    Callers must check :attr:`code`: when a range was asked, ``206`` means
    it was honoured (see :attr:`content_range`), while ``200`` means the
    node ignored the ``Range`` header and sends the whole object from byte 0
    (:attr:`range_ignored`).
    """

    def __init__(self, response: IResponse, release: Callable[[], None], offset: int, end: int | None) -> None:
        self._response = response
        self._release = _Once(release)
        self._delivered = False
        self._transport: IPushProducer | None = None
        #: What was asked: ``offset`` and inclusive ``end`` (None: to the end).
        self.requested_offset = offset
        self.requested_end = end

    # IResponse, forwarded.
    @property
    def version(self) -> tuple[bytes, int, int]:
        return self._response.version  # type: ignore[no-any-return]

    @property
    def code(self) -> int:
        return self._response.code  # type: ignore[no-any-return]

    @property
    def phrase(self) -> bytes:
        return self._response.phrase  # type: ignore[no-any-return]

    @property
    def headers(self) -> Headers:
        return self._response.headers  # type: ignore[no-any-return]

    @property
    def length(self) -> Any:
        """Body length in bytes, or ``twisted.web.iweb.UNKNOWN_LENGTH``."""
        return self._response.length

    @property
    def request(self) -> Any:
        return self._response.request

    @property
    def previousResponse(self) -> IResponse | None:
        return self._response.previousResponse  # type: ignore[no-any-return]

    def setPreviousResponse(self, response: IResponse) -> None:
        self._response.setPreviousResponse(response)

    def deliverBody(self, protocol: Protocol) -> None:
        """Stream the body into ``protocol`` (once); its transport can be
        paused, resumed and stopped. The slot is released after
        ``protocol.connectionLost``."""
        if self._delivered:
            raise RuntimeError("the body of this response was already delivered")
        self._delivered = True
        wrapper = _ReleasingProtocol(protocol, self._release)
        self._response.deliverBody(wrapper)
        self._transport = wrapper.transport

    # Ours.
    @property
    def released(self) -> bool:
        """True once the slot has been given back."""
        return self._release.done

    @property
    def range_requested(self) -> bool:
        return self.requested_offset > 0 or self.requested_end is not None

    @property
    def range_ignored(self) -> bool:
        """A range was asked but the node answered 200 with the whole body."""
        return self.range_requested and self.code == 200

    @property
    def content_range(self) -> tuple[int, int, int | None] | None:
        """The parsed ``Content-Range`` of a 206, else None."""
        values = self.headers.getRawHeaders(b"content-range")
        if self.code != 206 or not values or len(values) != 1:
            return None
        return parse_content_range(values[0])

    def abandon(self) -> None:
        """Drop the connection (if the body is still coming) and release
        the slot. Idempotent; safe after ``deliverBody``."""
        if not self._delivered:
            self.deliverBody(_Abandon())
        elif self._transport is not None:
            self._transport.stopProducing()
        # If the body already ended, connectionLost has released; the
        # transport proxy's stopProducing is a no-op then.
        self._release()


def _range_header(offset: int, end: int | None) -> bytes | None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset!r}")
    if end is not None and end < offset:
        raise ValueError(f"end ({end!r}) must be >= offset ({offset!r})")
    if offset == 0 and end is None:
        return None
    if end is None:
        return b"bytes=%d-" % (offset,)
    return b"bytes=%d-%d" % (offset, end)


def _api_url(endpoint: StorageEndpoint, *segments: str) -> str:
    return "/".join([endpoint.url.rstrip("/"), *segments])


def _file_url(endpoint: StorageEndpoint, object_id: str) -> str:
    if not isinstance(object_id, str) or not is_valid_object_id(object_id):
        raise ValueError(f"invalid data object id {object_id!r} (1-20 decimal digits)")
    return _api_url(endpoint, "files", object_id)


@implementer(IStorageClient)
class StorageClient:
    """``IStorageClient`` over a raw ``Agent`` (no decoding, no redirects).

    ``timeout`` (seconds, ``limits.outbound_requests_timeout_ms / 1000``):
    the whole request for ``head_object`` and ``probe``; the time to the
    response headers for ``get_object`` (the body is the caller's: add an
    idle timer). ``max_connections``: requests in flight at once
    (``limits.max_concurrent_outbound_connections``).

    Invalid object ids raise ``ValueError`` synchronously (before any URL is
    built); every other problem fails the Deferred with ``StorageError``,
    except a caller's ``cancel()`` which fails it with ``CancelledError``.
    """

    def __init__(self, reactor: Any, pool: HTTPConnectionPool, timeout: float, max_connections: int = 300) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, not {timeout!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {max_connections!r}")
        self._reactor = reactor
        self._timeout = float(timeout)
        self._agent = Agent(reactor, connectTimeout=self._timeout, pool=pool)
        self._slots = DeferredSemaphore(max_connections)
        self._max_connections = max_connections

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def active_requests(self) -> int:
        """Slots in use (requests in flight, bodies not yet delivered)."""
        return self._max_connections - self._slots.tokens

    @property
    def queued_requests(self) -> int:
        """Requests waiting for a slot."""
        return len(self._slots.waiting)

    def _headers(self, range_header: bytes | None = None) -> Headers:
        headers = Headers({b"user-agent": [_USER_AGENT], b"accept-encoding": [b"identity"]})
        if range_header is not None:
            headers.setRawHeaders(b"range", [range_header])
        return headers

    def _with_slot(self, work: Callable[[Callable[[], None]], Deferred[Any]]) -> Deferred[Any]:
        """Run ``work(release)`` once a slot is free. ``work`` must call
        ``release`` (or arrange for it) however it ends; cancelling the
        result while queued leaves the queue."""

        def acquired(_: object) -> Deferred[Any]:
            release = _Once(self._slots.release)
            try:
                d = work(release)
            except BaseException:
                release()
                raise
            return d

        return self._slots.acquire().addCallback(acquired)

    def _request(self, method: bytes, url: str, headers: Headers) -> Deferred[IResponse]:
        """``Agent.request``; a URL it cannot use fails the Deferred."""
        return maybeDeferred(lambda: self._agent.request(method, url.encode("ascii"), headers))

    def _time_limit(self, d: Deferred[Any], what: str, url: str) -> Deferred[Any]:
        """Cancel ``d`` after ``timeout`` seconds and fail it with
        StorageError then. (``Deferred.addTimeout`` cannot be used: the
        Agent reports a cancelled request as ``ResponseNeverReceived``
        wrapping the ``CancelledError``, which ``addTimeout`` does not
        recognise.)"""
        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            d.cancel()

        call = self._reactor.callLater(self._timeout, expire)

        def done(result: Any) -> Any:
            if call.active():
                call.cancel()
            if timed_out and isinstance(result, Failure) and _is_cancellation(result):
                error = StorageError(f"{what} {url}: no answer within {self._timeout:g} s")
                return Failure(error)
            return result

        return d.addBoth(done)

    def _fail(self, failure: Failure, what: str, url: str) -> Failure:
        """Translate a request failure into StorageError; a cancellation
        by the caller becomes a plain CancelledError."""
        if failure.check(StorageError):
            return failure
        if _is_cancellation(failure):
            return failure if failure.check(CancelledError) else Failure(CancelledError())
        if failure.check(ConnectingTimeoutError):
            message = f"{what} {url}: no answer within {self._timeout:g} s"
        else:
            name = failure.type.__name__ if failure.type is not None else "error"
            message = f"{what} {url}: {name}: {failure.getErrorMessage()}"
        error = StorageError(message)
        error.__cause__ = failure.value
        return Failure(error)

    def _status_error(self, response: IResponse, what: str, url: str) -> Deferred[None]:
        """Read (bounded) and discard the body; fail with StorageError."""

        def raise_error(body: bytes | Failure) -> Failure | None:
            if isinstance(body, Failure) and (body.check(StorageError) or _is_cancellation(body)):
                return body  # timed out reading it, or cancelled by the caller
            detail = ""
            if isinstance(body, bytes) and body:
                detail = ": " + body[:200].decode("utf-8", "replace").strip()
            raise StorageError(f"{what} {url}: status {response.code}{detail}")

        d = self._time_limit(_read_prefix(response), what, url)
        d.addBoth(raise_error)
        return d

    def head_object(self, endpoint: StorageEndpoint, object_id: str) -> Deferred[bool]:
        """True on 200, False on 404; StorageError otherwise."""
        url = _file_url(endpoint, object_id)

        def work(release: Callable[[], None]) -> Deferred[bool]:
            d = self._request(b"HEAD", url, self._headers())

            def got(response: IResponse) -> Deferred[bool]:
                if response.code in (200, 404):
                    found = response.code == 200
                    return _read_prefix(response).addCallback(lambda _: found)
                return self._status_error(response, "HEAD", url)  # type: ignore[return-value]

            d.addCallback(got)
            self._time_limit(d, "HEAD", url)
            d.addErrback(self._fail, "HEAD", url)
            d.addBoth(_passthrough(release))
            return d

        return self._with_slot(work)

    def get_object(
        self, endpoint: StorageEndpoint, object_id: str, offset: int = 0, end: int | None = None
    ) -> Deferred[StorageResponse]:
        """``GET /files/{id}``; ``end`` is inclusive (HTTP byte ranges).

        Fires with a :class:`StorageResponse` (status 200 or 206, body not
        read) once the headers arrived within ``timeout``; see the class for
        the slot and range rules. Other statuses fail with StorageError.
        Cancelling the Deferred aborts the request.
        """
        url = _file_url(endpoint, object_id)
        range_header = _range_header(offset, end)

        def work(release: Callable[[], None]) -> Deferred[StorageResponse]:
            d = self._time_limit(self._request(b"GET", url, self._headers(range_header)), "GET", url)

            def got(response: IResponse) -> StorageResponse | Deferred[None]:
                if response.code in (200, 206):
                    return StorageResponse(response, release, offset, end)
                return self._status_error(response, "GET", url)

            def failed(failure: Failure) -> Failure:
                release()
                return failure

            d.addCallback(got)
            d.addErrback(self._fail, "GET", url)
            d.addErrback(failed)
            return d

        return self._with_slot(work)

    def probe(self, endpoint: StorageEndpoint) -> Deferred[float]:
        """Seconds ``GET /version`` took (headers and body), measured with
        the reactor's clock from the moment the request got a slot."""
        url = _api_url(endpoint, "version")

        def work(release: Callable[[], None]) -> Deferred[float]:
            started = self._reactor.seconds()
            d = self._request(b"GET", url, self._headers())

            def got(response: IResponse) -> Deferred[float]:
                if response.code != 200:
                    return self._status_error(response, "probe", url)  # type: ignore[return-value]
                return _read_prefix(response).addCallback(lambda _: self._reactor.seconds() - started)

            d.addCallback(got)
            self._time_limit(d, "probe", url)
            d.addErrback(self._fail, "probe", url)
            d.addBoth(_passthrough(release))
            return d

        return self._with_slot(work)


def _is_cancellation(failure: Failure) -> bool:
    """A CancelledError, bare or wrapped by the HTTP client."""
    if failure.check(CancelledError):
        return True
    if failure.check(ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed):
        return any(isinstance(r, Failure) and r.check(CancelledError) for r in failure.value.reasons)
    return False


def _passthrough(func: Callable[[], None]) -> Callable[[Any], Any]:
    def call(result: Any) -> Any:
        func()
        return result

    return call
