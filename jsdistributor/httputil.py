"""Small twisted.web helpers shared by both APIs: JSON responses, the
per-request access log, and a Site that records it."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from .errors import ApiError, json_error, set_json

access_log = Logger(namespace="jsdistributor.access")

#: Request bodies above this are refused with 413 (operator routes take a
#: small JSON object; public routes take none).
MAX_BODY = 64 * 1024

#: Seconds a client has to send a whole request (head and body) from its
#: first byte: nginx's ``client_header_timeout`` is 60 s; our requests are
#: a few hundred bytes.
HEAD_TIMEOUT = 20.0


def json_response(request: Any, value: object, status: int = 200) -> bytes:
    set_json(request, status)
    return json.dumps(value).encode("utf-8")


#: Headers an asset response may have set before failing; an error body
#: must not inherit them (a stale content-length would hang the client).
_ENTITY_HEADERS = (b"content-length", b"content-range", b"etag", b"content-disposition", b"cache-control")


def error_response(request: Any, error: ApiError) -> bytes:
    for name in _ENTITY_HEADERS:
        request.responseHeaders.removeHeader(name)
    set_json(request, error.status)
    return error.body()


#: Query-string parameters whose values never reach the logs.
SECRET_PARAMS = frozenset({"token", "access_token", "secret", "key", "auth", "authorization", "password", "signature", "jwt"})


def loggable_path(uri: bytes) -> str:
    """The request path for the logs: at most 512 characters, the values
    of secret-looking query parameters (``?token=...``) replaced by ``***``."""
    text = uri.decode("ascii", "replace")
    path, sep, query = text.partition("?")
    if sep:
        parts = []
        for item in query.split("&"):
            name, eq, _ = item.partition("=")
            parts.append(f"{name}=***" if eq and name.lower() in SECRET_PARAMS else item)
        text = path + "?" + "&".join(parts)
    return text[:512]


class TimedRequest(Request):
    """A request that knows when it started and how many body bytes it sent
    (for the access log); a request whose connection is lost before it
    finished is logged too (``aborted``)."""

    started_at: float = 0.0
    bytes_sent: int = 0
    _access_logged: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        site = getattr(self.channel, "site", None)
        clock = getattr(site, "clock", None)
        self.started_at = clock.seconds() if clock is not None else 0.0

    _body_received: int = 0

    def write(self, data: bytes) -> None:
        if not self.finished and self.method != b"HEAD":
            self.bytes_sent += len(data)
        super().write(data)

    def process(self) -> None:
        if not _is_utf8_path(self.path):
            # Klein answers 400 too, but logs a traceback for each such
            # request ("Invalid encoding in PATH_INFO"): a client could
            # fill the logs. Answer here, quietly.
            body = json_error("invalid_path", "the request path is not UTF-8 once percent-decoded")
            set_json(self, 400)
            self.setHeader(b"content-length", b"%d" % (len(body),))
            self.write(body)
            self.finish()
            return
        super().process()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_received += len(data)
        channel = self.channel
        if isinstance(channel, _Channel) and not channel.body_received(self._body_received):
            return  # refused: the rest is not kept (chunked bodies have no declared length)
        super().handleContentChunk(data)

    def connectionLost(self, reason: Any) -> None:
        site = getattr(self.channel, "site", None)
        super().connectionLost(reason)  # forgets the channel
        if not self.finished and isinstance(site, AccessLoggingSite):
            site.log(self, aborted=True)


def _is_utf8_path(uri: bytes) -> bool:
    path = uri.split(b"?", 1)[0]
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Channel(HTTPChannel):
    """HTTP/1.1 with bounded request heads and bodies (twisted's defaults
    are generous), counting the site's open connections.

    Limits, each answered with its status and the connection closed:

    - a request line plus headers above ``totalHeadersSize`` bytes, or more
      than ``maxHeaders`` headers: 400 (twisted's own answer);
    - a body above ``site.max_body`` bytes (declared, or counted as chunks
      arrive): 413 -- twisted.web would otherwise spool any body, however
      large, to a temporary file before the route sees it;
    - a request (head and body) not complete ``site.head_timeout`` seconds
      after its first byte: 408. The site's idle ``timeout`` is reset by
      every byte, so alone it lets a client trickling one byte a second
      ("slow loris") hold a connection for ever. (A connection that sends
      nothing at all is closed by that idle ``timeout``.)

    A plain ``HTTPChannel``: the node speaks cleartext HTTP (TLS, and so
    HTTP/2 negotiation, is a reverse proxy's job)."""

    totalHeadersSize = 16 * 1024
    maxHeaders = 100
    _head_timer: Any = None
    _abort_call: Any = None
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connections += 1
        self.site.channels.add(self)

    def connectionLost(self, reason: Any) -> None:
        self._disarm_head_timer()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        try:
            super().connectionLost(reason)
        finally:
            self.site.connections -= 1
            self.site._channel_gone(self)

    # -- limits ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._handlingRequest:
            self._arm_head_timer()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if not self._handlingRequest:
            self._arm_head_timer()  # pipelined requests replayed from the buffer
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One line longer than the whole head may be: as twisted answers a
        # head above totalHeadersSize (LineReceiver would just hang up).
        self.refuse(400, b"Bad Request")

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.site.max_body:
            self.refuse(413, b"Content Too Large")
            return
        super().allHeadersReceived()

    def body_received(self, total: int) -> bool:
        """The request has sent ``total`` body bytes so far: False (and the
        connection refused) when that is too many."""
        if total > self.site.max_body:
            self.refuse(413, b"Content Too Large")
            return False
        return not self._refused

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._disarm_head_timer()
        super().allContentReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self.site.draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def refuse(self, code: int, phrase: bytes) -> None:
        """Answer ``code`` to the request being received and close."""
        if self._refused:
            return
        self._refused = True
        self._disarm_head_timer()
        self.length = 0
        if self.transport is None or self.transport.disconnecting:
            return
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % (code, phrase)
        )
        self.loseConnection()
        # A client that does not even read our answer is cut off.
        self._abort_call = self.callLater(self.abortTimeout, self.transport.abortConnection)

    def _arm_head_timer(self) -> None:
        timeout = self.site.head_timeout
        if self._head_timer is None and timeout is not None and not self._refused:
            self._head_timer = self.callLater(timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._handlingRequest or self._refused:
            return
        self.refuse(408, b"Request Timeout")

    # -- shutdown ----------------------------------------------------------

    def close_when_idle(self) -> None:
        """No new request on this connection: close it now if it has none
        in progress, else once its responses are done."""
        self.persistent = False
        if not self.requests and self.transport is not None:
            self.loseConnection()


class AccessLoggingSite(Site):
    """A Site whose access log is one structured event per request
    (namespace ``jsdistributor.access``), also fed to ``metrics`` (a
    ``NodeMetrics``) when set. ``connections``: open connections now."""

    requestFactory = TimedRequest
    protocol = _Channel

    def __init__(
        self,
        resource: Any,
        clock: IReactorTime,
        name: str,
        timeout: float = 60.0,
        metrics: Any = None,
        head_timeout: float | None = HEAD_TIMEOUT,
        max_body: int = MAX_BODY,
        trust_forwarded: bool = False,
        log_requests: bool = True,
    ) -> None:
        # The clock also drives the channels' idle timeouts.
        super().__init__(resource, timeout=timeout, reactor=clock)
        self.clock = clock
        self.api_name = name
        self.metrics = metrics
        self.connections = 0
        #: Seconds from a request's first byte to its complete head and body.
        self.head_timeout = head_timeout
        #: Request bodies above this many bytes are refused (413).
        self.max_body = max_body
        #: The access log names the client from ``x-forwarded-for`` (the
        #: loopback listener where hit workers relay their viewers' requests).
        self.trust_forwarded = trust_forwarded
        #: Emit the access event (False when no log output takes the
        #: ``http`` level: building it costs ~5% of a small hit).
        self.log_requests = log_requests
        #: Open connections.
        self.channels: set[_Channel] = set()
        #: True once ``drain`` was called: no connection is kept alive.
        self.draining = False
        self._drained: list[Deferred[None]] = []

    def drain(self, grace: float) -> Deferred[None]:
        """Graceful stop (call once the port stopped listening): idle
        connections are closed now, busy ones once their responses are
        done; whatever is still open after ``grace`` seconds is aborted.
        Fires when every connection is gone."""
        self.draining = True
        if not self.channels:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._drained.append(done)
        for channel in list(self.channels):
            channel.close_when_idle()
        if self.channels:
            deadline = self.clock.callLater(grace, self._abort_all)
            done.addBoth(lambda result: (deadline.cancel() if deadline.active() else None) or result)
        return done

    def _abort_all(self) -> None:
        if self.channels:
            access_log.warn(
                "{api}: {count} connections still busy after the shutdown grace period: aborting them",
                api=self.api_name,
                count=len(self.channels),
            )
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()

    def _channel_gone(self, channel: _Channel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def log(self, request: Any, aborted: bool = False) -> None:
        if getattr(request, "_access_logged", False) or getattr(request, "relayed", False):
            # Relayed by a hit worker: the node logs (and counts) it.
            return
        request._access_logged = True
        duration = 0.0
        if isinstance(request, TimedRequest):
            duration = (self.clock.seconds() - request.started_at) * 1000.0
        sent = getattr(request, "bytes_sent", 0)
        x_cache = request.responseHeaders.getRawHeaders(b"x-cache")
        cache = x_cache[0].decode("ascii", "replace") if x_cache else None
        status = request.code
        if aborted and not request.startedWriting:
            status = 499  # nginx's "client closed request": no response was sent
        path = getattr(request, "path", None) or b""
        if self.metrics is not None:
            self.metrics.observe_request(self.api_name, path, status, sent, cache)
        if not self.log_requests:
            return
        client_host = getattr(request.getClientAddress(), "host", "-")
        if self.trust_forwarded:
            forwarded = request.getHeader(b"x-forwarded-for")
            if forwarded:
                client_host = forwarded.decode("ascii", "replace")
        access_log.info(
            "{api} {client} {method} {path} {status} {bytes}B {duration:.1f}ms {cache}{abortedText}",
            api=self.api_name,
            client=client_host,
            method=(getattr(request, "method", None) or b"-").decode("ascii", "replace"),
            path=loggable_path(getattr(request, "uri", None) or b""),
            status=status,
            bytes=sent,
            duration=round(duration, 3),
            cache=cache or "-",
            aborted=aborted,
            abortedText=" aborted" if aborted else "",
        )
