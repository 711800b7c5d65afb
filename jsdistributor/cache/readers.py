"""Readers: push producers that feed one HTTP response from a file on disk,
following a pending download as its bytes land.

A reader holds at most one chunk in memory; the transport's own buffer
pauses it (``pauseProducing`` may be called from inside ``write``), so a
slow client never makes the node hold more than about
``CHUNK + transport buffer`` bytes for it, and never slows the download or
other readers (they all read from the file, not from each other).
"""

from __future__ import annotations

from typing import Any, BinaryIO, Callable, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

#: Bytes read from disk and written to the consumer at a time.
CHUNK = 64 * 1024

#: Seconds a client may leave us paused (not reading) before its connection
#: is aborted -- nginx's ``send_timeout``. A paused reader costs little
#: memory, but it holds a socket, a file and (for a hit) keeps the object
#: from being evicted; a player that paused for longer re-asks with a Range.
SEND_TIMEOUT = 60.0


class ByteSource(Protocol):
    """Where a reader's bytes come from: a pending download, or nothing for
    a complete file (then every byte of the file is readable)."""

    @property
    def readable_limit(self) -> int:
        """Bytes from offset 0 that readers may be given now."""

    @property
    def failed(self) -> bool: ...

    def add_reader(self, reader: StreamReader) -> None: ...

    def remove_reader(self, reader: StreamReader) -> None: ...


class ReaderAborted(Exception):
    """The reader's connection was aborted (source failed or went idle)."""


@implementer(IPushProducer)
class StreamReader:
    """Streams bytes ``[start, end)`` of ``path`` to ``consumer``.

    ``done`` fires with None once the last byte was written (the consumer
    then finishes the response), or fails with ``ReaderAborted`` after the
    connection was aborted, or ``CancelledError`` when the client went away.
    """

    def __init__(
        self,
        reactor: Any,
        consumer: Any,
        open_file: Callable[[], BinaryIO],
        start: int,
        end: int,
        source: ByteSource | None,
        idle_timeout: float,
        on_release: Callable[[], None] | None = None,
        abort: Callable[[], None] | None = None,
        send_timeout: float | None = SEND_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._consumer = consumer
        self._open_file = open_file
        self._file: BinaryIO | None = None
        self.position = start
        self.end = end
        self._source = source
        self._idle_timeout = idle_timeout
        self._on_release = on_release
        self._abort_transport = abort
        self._paused = False
        self._pumping = False
        self._idle: IDelayedCall | None = None
        self._send_timeout = send_timeout
        self._stalled: IDelayedCall | None = None
        self.finished = False
        self.done: Deferred[None] = Deferred(lambda d: self._release())

    # -- life cycle -------------------------------------------------------

    def start(self) -> Deferred[None]:
        try:
            self._file = self._open_file()
            self._file.seek(self.position)
        except OSError as e:
            log.error("cannot open object data: {error}", error=e)
            self.abort("cannot open object data")
            return self.done
        self._consumer.registerProducer(self, True)
        if self._source is not None:
            self._source.add_reader(self)
        self._pump()
        return self.done

    def _release(self) -> None:
        """Give back everything the reader holds (idempotent)."""
        if self.finished:
            return
        self.finished = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._disarm_send_timer()
        if self._source is not None:
            self._source.remove_reader(self)
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            self._consumer.unregisterProducer()
        except Exception:  # consumer already gone
            pass
        if self._on_release is not None:
            callback, self._on_release = self._on_release, None
            callback()

    def abort(self, reason: str) -> None:
        """Cut the connection: a truncated body must never look complete."""
        if self.finished:
            return
        log.warn("aborting a reader at byte {position} of [.., {end}): {reason}",
                 position=self.position, end=self.end, reason=reason)
        self._release()
        if self._abort_transport is not None:
            self._abort_transport()
        if not self.done.called:
            self.done.errback(ReaderAborted(reason))

    # -- IPushProducer ----------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self._send_timeout is not None and not self.finished and self._stalled is None:
            self._stalled = self._reactor.callLater(self._send_timeout, self._client_stalled)

    def resumeProducing(self) -> None:
        self._paused = False
        self._disarm_send_timer()
        self._pump()

    def _disarm_send_timer(self) -> None:
        if self._stalled is not None and self._stalled.active():
            self._stalled.cancel()
        self._stalled = None

    def _client_stalled(self) -> None:
        self._stalled = None
        self.abort(f"the client read nothing for {self._send_timeout:.0f}s")

    def stopProducing(self) -> None:
        """The consumer went away (client disconnected)."""
        if not self.finished:
            self._release()
            if not self.done.called:
                self.done.errback(CancelledError("client went away"))

    # -- the source tells us ----------------------------------------------

    def data_available(self) -> None:
        self._pump()

    def source_failed(self, reason: str) -> None:
        self.abort(reason)

    # -- moving bytes ---------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return  # re-entered from write(): the outer loop carries on
        self._pumping = True
        try:
            self._pump_loop()
        except OSError as e:
            log.error("reading object data failed: {error}", error=e)
            self.abort("read error")
        finally:
            self._pumping = False

    def _pump_loop(self) -> None:
        while not self._paused and not self.finished:
            if self.position >= self.end:
                self._complete()
                return
            limit = self.end
            if self._source is not None:
                if self._source.failed:
                    self.abort("download failed")
                    return
                limit = min(limit, self._source.readable_limit)
            if self.position >= limit:
                self._arm_idle_timer()
                return
            assert self._file is not None
            data = self._file.read(min(CHUNK, limit - self.position))
            if not data:
                # The file is shorter than promised: never look complete.
                self.abort("object data shorter than expected")
                return
            self.position += len(data)
            self._disarm_idle_timer()
            self._consumer.write(data)

    def _complete(self) -> None:
        self._release()
        if not self.done.called:
            self.done.callback(None)

    def _arm_idle_timer(self) -> None:
        if self._idle is None or not self._idle.active():
            self._idle = self._reactor.callLater(self._idle_timeout, self._went_idle)

    def _disarm_idle_timer(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _went_idle(self) -> None:
        self._idle = None
        self.abort(f"no data for {self._idle_timeout:.0f}s")
