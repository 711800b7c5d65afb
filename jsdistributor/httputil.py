"""Small twisted.web helpers shared by both APIs: JSON responses, the
per-request access log, and a Site that records it."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from .errors import ApiError, set_json

access_log = Logger(namespace="jsdistributor.access")

#: Operator request bodies above this are refused with 413.
MAX_BODY = 64 * 1024


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

    def write(self, data: bytes) -> None:
        if not self.finished and self.method != b"HEAD":
            self.bytes_sent += len(data)
        super().write(data)

    def connectionLost(self, reason: Any) -> None:
        site = getattr(self.channel, "site", None)
        super().connectionLost(reason)  # forgets the channel
        if not self.finished and isinstance(site, AccessLoggingSite):
            site.log(self, aborted=True)


class _Channel(HTTPChannel):
    """HTTP/1.1 with bounded request heads (twisted's defaults are
    generous), counting the site's open connections.

    A plain ``HTTPChannel``: the node speaks cleartext HTTP (TLS, and so
    HTTP/2 negotiation, is a reverse proxy's job)."""

    totalHeadersSize = 16 * 1024
    maxHeaders = 100

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connections += 1

    def connectionLost(self, reason: Any) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.site.connections -= 1


class AccessLoggingSite(Site):
    """A Site whose access log is one structured event per request
    (namespace ``jsdistributor.access``), also fed to ``metrics`` (a
    ``NodeMetrics``) when set. ``connections``: open connections now."""

    requestFactory = TimedRequest
    protocol = _Channel

    def __init__(
        self, resource: Any, clock: IReactorTime, name: str, timeout: float = 60.0, metrics: Any = None
    ) -> None:
        # The clock also drives the channels' idle timeouts.
        super().__init__(resource, timeout=timeout, reactor=clock)
        self.clock = clock
        self.api_name = name
        self.metrics = metrics
        self.connections = 0

    def log(self, request: Any, aborted: bool = False) -> None:
        if getattr(request, "_access_logged", False):
            return
        request._access_logged = True
        duration = 0.0
        if isinstance(request, TimedRequest):
            duration = (self.clock.seconds() - request.started_at) * 1000.0
        client = request.getClientAddress()
        sent = getattr(request, "bytes_sent", 0)
        x_cache = request.responseHeaders.getRawHeaders(b"x-cache")
        cache = x_cache[0].decode("ascii", "replace") if x_cache else None
        status = request.code
        if aborted and not request.startedWriting:
            status = 499  # nginx's "client closed request": no response was sent
        path = getattr(request, "path", None) or b""
        if self.metrics is not None:
            self.metrics.observe_request(self.api_name, path, status, sent, cache)
        access_log.info(
            "{api} {client} {method} {path} {status} {bytes}B {duration:.1f}ms {cache}{abortedText}",
            api=self.api_name,
            client=getattr(client, "host", "-"),
            method=(getattr(request, "method", None) or b"-").decode("ascii", "replace"),
            path=loggable_path(getattr(request, "uri", None) or b""),
            status=status,
            bytes=sent,
            duration=round(duration, 3),
            cache=cache or "-",
            aborted=aborted,
            abortedText=" aborted" if aborted else "",
        )
