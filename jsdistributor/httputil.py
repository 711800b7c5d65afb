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


def error_response(request: Any, error: ApiError) -> bytes:
    set_json(request, error.status)
    return error.body()


class TimedRequest(Request):
    """A request that knows when it started (for the access log)."""

    started_at: float = 0.0
    bytes_sent: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        site = getattr(self.channel, "site", None)
        clock = getattr(site, "clock", None)
        self.started_at = clock.seconds() if clock is not None else 0.0

    def write(self, data: bytes) -> None:
        if not self.finished and self.method != b"HEAD":
            self.bytes_sent += len(data)
        super().write(data)


class AccessLoggingSite(Site):
    """A Site whose access log is one structured event per request."""

    requestFactory = TimedRequest

    def __init__(self, resource: Any, clock: IReactorTime, name: str, timeout: float = 60.0) -> None:
        super().__init__(resource, timeout=timeout)
        self.clock = clock
        self.api_name = name

    def buildProtocol(self, addr: Any) -> HTTPChannel:
        channel = super().buildProtocol(addr)
        # Bounded request heads: twisted's defaults are generous.
        channel.totalHeadersSize = 16 * 1024
        channel.maxHeaders = 100
        return channel

    def log(self, request: Any) -> None:
        duration = 0.0
        if isinstance(request, TimedRequest):
            duration = (self.clock.seconds() - request.started_at) * 1000.0
        client = request.getClientAddress()
        access_log.info(
            "{api} {client} {method} {path} {status} {bytes}B {duration:.1f}ms {cache}",
            api=self.api_name,
            client=getattr(client, "host", "-"),
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace")[:512],
            status=request.code,
            bytes=getattr(request, "bytes_sent", 0),
            duration=duration,
            cache=(request.responseHeaders.getRawHeaders(b"x-cache") or [b"-"])[0].decode("ascii", "replace"),
        )
