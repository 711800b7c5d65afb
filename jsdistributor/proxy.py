"""Streaming an object (or a range of it) straight from a storage node to a
client, without caching it: objects above ``limits.maxCachedItemSize``,
objects the store cannot take right now, and ranges far ahead of a pending
download.

Backpressure runs from client to storage node: when the client's transport
pauses us, we pause the upstream transport (twisted.web's own proxy lacks
this and fills RAM on large files). A whole-object proxy is hashed in
flight and its last byte is written only once the hash matches.

Bounded in time as a download is: an upstream that sends nothing for
``idle_timeout`` seconds, or a client that reads nothing for
``send_timeout`` seconds, ends the stream (the client is cut off, the
upstream connection and its client slot are given back). Once the wanted
window has arrived the upstream is closed at once: a storage node that
ignored our Range (or sends more than it announced) costs no more than the
window.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from .cache.hashing import ContentHasher
from .cache.readers import SEND_TIMEOUT
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
        reactor: Any = None,
        idle_timeout: float | None = None,
        send_timeout: float | None = SEND_TIMEOUT,
        upstream_length: int | None = None,
    ) -> None:
        self._consumer = consumer
        self._position = upstream_offset
        #: Object offset where the upstream body ends (None: unknown).
        self._upstream_end = None if upstream_length is None else upstream_offset + upstream_length
        self._window = window
        self._hasher = ContentHasher() if expected_hash is not None else None
        self._expected_hash = expected_hash
        self._abort = abort
        self._held = b""
        self.sent = 0
        self.done: Deferred[None] = Deferred()
        self._reactor = reactor
        self._idle_timeout = idle_timeout if reactor is not None else None
        self._send_timeout = send_timeout if reactor is not None else None
        self._idle: IDelayedCall | None = None
        self._stalled: IDelayedCall | None = None
        self._paused = False
        self._ending = False

    # -- IPushProducer (the client's side) ------------------------------
    def pauseProducing(self) -> None:
        if self._ending:
            return
        self._paused = True
        if self.transport is not None:
            self.transport.pauseProducing()
        # While the client holds us, upstream silence is ours, not theirs.
        self._cancel(self._idle)
        self._idle = None
        if self._send_timeout is not None and self._stalled is None:
            self._stalled = self._reactor.callLater(self._send_timeout, self._client_stalled)

    def resumeProducing(self) -> None:
        if self._ending:
            return
        self._paused = False
        self._cancel(self._stalled)
        self._stalled = None
        if self.transport is not None:
            self.transport.resumeProducing()
        self._arm_idle()

    def stopProducing(self) -> None:
        """The client went away."""
        self._stop_timers()
        if self.transport is not None:
            self.transport.stopProducing()

    # -- Protocol (the storage node's side) --------------------------------
    def connectionMade(self) -> None:
        try:
            self._consumer.registerProducer(self, True)
        except Exception:  # the client is already gone
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(ProxyFailed("the client went away"))
            return
        self._arm_idle()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._arm_idle()
        begin = self._position
        room = self._window.end - begin
        if self._hasher is not None and len(data) > room:
            # A whole-object proxy counts every byte: more than the object
            # is a wrong object.
            self._fail(f"upstream sent more than {self._window.total} bytes")
            return
        data = data[: max(room, 0)]
        if self._hasher is not None:
            self._hasher.update(data)
        self._position += len(data)
        lo = max(self._window.start - begin, 0)
        chunk = data[lo:]
        if self._hasher is not None:
            # Hold the last byte back until the hash is checked.
            chunk = self._held + chunk
            chunk, self._held = chunk[:-1], chunk[-1:]
        if chunk:
            self.sent += len(chunk)
            self._consumer.write(chunk)
        if self._position >= self._window.end and not self.done.called:
            self._conclude()
            if self.transport is not None and (self._upstream_end is None or self._upstream_end > self._position):
                # Everything wanted has arrived: whatever else upstream
                # would send (a Range it ignored) is not needed. (A body
                # ending here is left to end: its connection is reused.)
                self.transport.stopProducing()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self.done.called:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self._fail(f"upstream connection lost: {reason.getErrorMessage()}")
            return
        if self._position < self._window.end:
            self._fail(f"upstream body ended at byte {self._position} of {self._window.end}")
            return
        self._conclude()

    def _conclude(self) -> None:
        self._ending = True
        self._stop_timers()
        if self._hasher is not None:
            actual = self._hasher.ipfs_hash()
            if actual != self._expected_hash:
                self._fail(f"hash mismatch: expected {self._expected_hash}, got {actual}")
                return
            self.sent += len(self._held)
            self._consumer.write(self._held)
            self._held = b""
        self._unregister()
        self.done.callback(None)

    def _unregister(self) -> None:
        try:
            self._consumer.unregisterProducer()
        except Exception:
            pass

    def _fail(self, reason: str) -> None:
        log.error("proxy cut off: {reason}", reason=reason)
        self._ending = True
        self._stop_timers()
        if self.transport is not None:
            self.transport.stopProducing()
        self._unregister()
        self._abort()
        if not self.done.called:
            self.done.errback(ProxyFailed(reason))

    # -- timers ----------------------------------------------------------------
    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()

    def _stop_timers(self) -> None:
        self._cancel(self._idle)
        self._cancel(self._stalled)
        self._idle = self._stalled = None

    def _arm_idle(self) -> None:
        if self._idle_timeout is None or self._ending or self._paused:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._reactor.callLater(self._idle_timeout, self._upstream_idle)

    def _upstream_idle(self) -> None:
        self._idle = None
        self._fail(f"upstream sent nothing for {self._idle_timeout:.1f}s")

    def _client_stalled(self) -> None:
        self._stalled = None
        self._fail(f"the client read nothing for {self._send_timeout:.0f}s")
