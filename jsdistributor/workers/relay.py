"""Relaying a request to the primary over loopback, streaming the answer
back with backpressure (a slow viewer pauses the primary's response, which
pauses the primary's reader: nothing piles up in the worker)."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from ..errors import ApiError
from ..httputil import error_response
from ..public_api import add_cors

log = Logger()

#: Headers that belong to one connection, never relayed (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: Marks the header a worker adds with the viewer's address; the primary's
#: loopback listener logs it as the client.
FORWARDED_FOR = b"x-forwarded-for"

CONNECT_TIMEOUT = 5.0


def relay_agent(reactor: Any) -> Agent:
    """One persistent connection pool to the primary for the whole worker."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 256
    pool.cachedConnectionTimeout = 60
    return Agent(reactor, connectTimeout=CONNECT_TIMEOUT, pool=pool)


def _copy_headers(source: Headers, target: Headers) -> None:
    for name, values in source.getAllRawHeaders():
        if name.lower() not in HOP_BY_HOP:
            target.setRawHeaders(name, values)


@implementer(IPushProducer)
class _Pipe(Protocol):
    """The primary's response body, written to the viewer's request; the
    viewer's transport pauses and resumes the primary's."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.gone = False

    def connectionMade(self) -> None:
        self.request.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.gone = True
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]
        request = self.request
        if self.gone or request.finished:
            return
        request.unregisterProducer()
        # PotentialDataLoss: a body without length or chunking, ended by
        # the close (twisted.web's own error answers).
        if reason.check(ResponseDone, PotentialDataLoss):
            request.finish()
            return
        # A body cut short must not look complete to the viewer.
        log.info("relayed response cut short: {reason}", reason=reason.getErrorMessage())
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()


class RelayResource(Resource):
    """Sends any request to ``base`` (the primary's loopback listener) and
    streams its answer back."""

    isLeaf = True

    def __init__(self, agent: Any, base: bytes) -> None:
        super().__init__()
        self._agent = agent
        self._base = base

    def render(self, request: Any) -> Any:
        request.relayed = True
        headers = Headers()
        _copy_headers(request.requestHeaders, headers)
        # The agent frames the body it sends: a copied length would be a second one.
        headers.removeHeader(b"content-length")
        client = request.getClientAddress()
        headers.setRawHeaders(FORWARDED_FOR, [getattr(client, "host", "-").encode("ascii", "replace")])
        body = None
        if request.content is not None:
            request.content.seek(0)
            data = request.content.read()
            if data:
                body = FileBodyProducer(BytesIO(data))
        d = self._agent.request(request.method, self._base + request.uri, headers, body)
        pipe: list[_Pipe] = []

        def client_gone(_: object) -> None:
            if pipe:
                pipe[0].stopProducing()
            else:
                d.cancel()

        request.notifyFinish().addErrback(client_gone)

        def answer(response: Any) -> None:
            if request.finished or getattr(request, "_disconnected", False):
                response.deliverBody(Protocol())
                return
            request.setResponseCode(response.code, response.phrase)
            request.responseHeaders = Headers()
            _copy_headers(response.headers, request.responseHeaders)
            if request.method == b"HEAD" or response.code in (204, 304):
                response.deliverBody(Protocol())
                request.finish()
                return
            pipe.append(_Pipe(request))
            response.deliverBody(pipe[0])

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError) or request.finished or getattr(request, "_disconnected", False):
                return
            log.warn("cannot relay {uri} to the node: {error}", uri=request.uri, error=reason.getErrorMessage())
            if request.startedWriting:
                request.channel.transport.abortConnection()
                return
            request.responseHeaders = Headers()
            add_cors(request)
            body = error_response(request, ApiError(503, "node_unavailable", "the node cannot be reached right now"))
            request.write(body)
            request.finish()

        d.addCallbacks(answer, failed)
        d.addErrback(lambda f: log.failure("relaying {uri}", f, uri=request.uri))
        return NOT_DONE_YET
