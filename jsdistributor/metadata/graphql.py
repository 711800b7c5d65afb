"""GraphQL over HTTP (POST JSON) with treq: the transport of the query node
and storage squid sources.

Every failure becomes ``MetadataUnavailable`` with a message naming the
service and what went wrong, logged once here; the whole exchange (connect,
headers and body) is bounded by ``timeout`` seconds of the injected reactor.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ..errors import MetadataUnavailable

log = Logger()

#: Refuse answers larger than this (a listing of many bags is big, but not this big).
DEFAULT_MAX_RESPONSE_SIZE = 256 * 1024 * 1024

_HEADERS = {
    b"Content-Type": [b"application/json"],
    b"Accept": [b"application/json"],
}


class ResponseTooLarge(Exception):
    pass


class _BodyReader(Protocol):
    """Collects a response body; the Deferred's canceller aborts the transfer."""

    def __init__(self, max_size: int) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._max_size = max_size
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._size += len(data)
        if self._size > self._max_size:
            self.done.errback(ResponseTooLarge("answer larger than %d bytes" % (self._max_size,)))
            if self.transport is not None:
                self.transport.stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(reason)


def _read_body(response: IResponse, max_size: int) -> Deferred[bytes]:
    reader = _BodyReader(max_size)
    response.deliverBody(reader)
    return reader.done


def _describe(reason: Failure) -> str:
    """A one-line human description of a transport failure."""
    if reason.check(DNSLookupError):
        return "DNS lookup failed"
    if reason.check(ConnectError):
        return "cannot connect (%s)" % (reason.getErrorMessage() or reason.type.__name__,)
    nested = getattr(reason.value, "reasons", None)
    if nested:
        # twisted.web's ResponseFailed / RequestTransmissionFailed wrap failures.
        return "; ".join(_describe(f) for f in nested)
    message = reason.getErrorMessage()
    return "%s: %s" % (reason.type.__name__, message) if message else reason.type.__name__


def _graphql_error_messages(errors: Any) -> str:
    if not isinstance(errors, list):
        return repr(errors)[:300]
    messages = []
    for e in errors[:5]:
        message = e.get("message") if isinstance(e, dict) else None
        messages.append(message if isinstance(message, str) else repr(e)[:200])
    if len(errors) > 5:
        messages.append("(and %d more)" % (len(errors) - 5,))
    return "; ".join(messages)


class GraphQLClient:
    """One GraphQL endpoint (``url``), queried with POST JSON.

    ``http_client`` is a ``treq.client.HTTPClient`` (or anything with its
    ``post``), ``timeout`` is in seconds and covers the whole request.
    """

    def __init__(
        self,
        url: str,
        reactor: IReactorTime,
        http_client: Any,
        timeout: float,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
    ) -> None:
        self.url = url
        self._reactor = reactor
        self._http = http_client
        self.timeout = timeout
        self._max_response_size = max_response_size

    def query(
        self, document: str, operation_name: str, variables: Mapping[str, Any] | None = None
    ) -> Deferred[dict[str, Any]]:
        """POST ``{"query", "operationName", "variables"}``; fires with the
        answer's ``data`` object, or fails with ``MetadataUnavailable``."""
        body = json.dumps(
            {"query": document, "operationName": operation_name, "variables": dict(variables or {})}
        ).encode("utf-8")
        exchange = Deferred.fromCoroutine(self._exchange(body))
        # Not ``addTimeout``: cancelling the Agent's request fails it with
        # ResponseNeverReceived(CancelledError), which it does not recognise.
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            exchange.cancel()

        timer = self._reactor.callLater(self.timeout, expire)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if timed_out and isinstance(result, Failure):
                return Failure(TimeoutError())
            return result

        exchange.addBoth(done)
        return exchange.addErrback(self._failed, operation_name)

    async def _exchange(self, body: bytes) -> dict[str, Any]:
        response = await self._http.post(self.url, data=body, headers=_HEADERS, unbuffered=True, allow_redirects=False)
        content = await _read_body(response, self._max_response_size)
        return self._decode(response.code, content)

    def _decode(self, status: int, content: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            answer = None
        if status != 200:
            detail = ""
            if isinstance(answer, dict) and answer.get("errors"):
                detail = ": " + _graphql_error_messages(answer["errors"])
            raise MetadataUnavailable("answered HTTP %d%s" % (status, detail))
        if not isinstance(answer, dict):
            raise MetadataUnavailable("answered something that is not a JSON object (%r)" % (content[:80],))
        if answer.get("errors"):
            raise MetadataUnavailable("answered GraphQL errors: " + _graphql_error_messages(answer["errors"]))
        data = answer.get("data")
        if not isinstance(data, dict):
            raise MetadataUnavailable("answered no data object")
        return data

    def _failed(self, reason: Failure, operation_name: str) -> Failure:
        if reason.check(TimeoutError):
            what = "timed out after %gs" % (self.timeout,)
        elif reason.check(CancelledError):
            return reason  # our caller gave up: not the service's fault
        elif reason.check(MetadataUnavailable):
            what = str(reason.value)
        elif reason.check(ResponseTooLarge):
            what = str(reason.value)
        else:
            what = _describe(reason)
        message = "%s (%s) %s" % (self.url, operation_name, what)
        log.warn("metadata service unavailable: {message}", message=message)
        return Failure(MetadataUnavailable(message))
