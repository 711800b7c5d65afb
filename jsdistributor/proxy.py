"""Streaming an object (or a range of it) straight from a storage node to a
client, without caching it: objects above ``limits.maxCachedItemSize``,
objects the store cannot take right now, and ranges far ahead of a pending
download.

Backpressure runs from client to storage node: when the client's transport
pauses us, we pause the upstream transport (twisted.web's own proxy lacks
this and fills RAM on large files). A whole-object proxy is hashed in
flight and its last byte is written only once the hash matches.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from .cache.hashing import ContentHasher
from .ranges import ByteRange

log = Logger()


class ProxyFailed(Exception):
    """The upstream failed after bytes were sent: the client was cut off."""


@implementer(IPushProducer)
class ProxyStream(Protocol):
    """Receives an upstream body and writes the wanted window to ``consumer``.

    ``window`` is ``[start, end)`` of the object; ``upstream_offset`` is the
    object offset of the first upstream byte (0 if the node ignored Range).
    """

    def __init__(
        self,
        consumer: Any,
        window: ByteRange,
        upstream_offset: int,
        expected_hash: str | None,
        abort: Callable[[], None],
    ) -> None:
        self._consumer = consumer
        self._position = upstream_offset
        self._window = window
        self._hasher = ContentHasher() if expected_hash is not None else None
        self._expected_hash = expected_hash
        self._abort = abort
        self._held = b""
        self.sent = 0
        self.done: Deferred[None] = Deferred()

    # -- IPushProducer (the client's side) ------------------------------
    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    # -- Protocol (the storage node's side) --------------------------------
    def connectionMade(self) -> None:
        self._consumer.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        if self._hasher is not None:
            self._hasher.update(data)
        begin = self._position
        self._position += len(data)
        lo = max(self._window.start - begin, 0)
        hi = min(self._window.end - begin, len(data))
        if self._position > self._window.end and self._hasher is not None:
            self._fail(f"upstream sent more than {self._window.total} bytes")
            return
        if lo >= hi:
            return
        chunk = data[lo:hi]
        if self._hasher is not None:
            # Hold the last byte back until the hash is checked.
            chunk = self._held + chunk
            chunk, self._held = chunk[:-1], chunk[-1:]
        if chunk:
            self.sent += len(chunk)
            self._consumer.write(chunk)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done.called:
            return
        self._unregister()
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._fail(f"upstream connection lost: {reason.getErrorMessage()}")
            return
        if self._position < self._window.end:
            self._fail(f"upstream body ended at byte {self._position} of {self._window.end}")
            return
        if self._hasher is not None:
            actual = self._hasher.ipfs_hash()
            if actual != self._expected_hash:
                self._fail(f"hash mismatch: expected {self._expected_hash}, got {actual}")
                return
            self.sent += len(self._held)
            self._consumer.write(self._held)
        self.done.callback(None)

    def _unregister(self) -> None:
        try:
            self._consumer.unregisterProducer()
        except Exception:
            pass

    def _fail(self, reason: str) -> None:
        log.error("proxy cut off: {reason}", reason=reason)
        if self.transport is not None:
            self.transport.stopProducing()
        self._unregister()
        self._abort()
        if not self.done.called:
            self.done.errback(ProxyFailed(reason))
