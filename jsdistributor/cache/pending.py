"""One download, many readers.

A ``PendingDownload`` fetches one object once: it waits for a download
slot, looks for a source, streams the body to a temporary file while
counting and hashing it, resumes on the next source after a failure
(``Range: bytes=N-``), and on success verifies size and hash before
renaming the file into place. Readers (``StreamReader``) follow it: each
chunk that lands on disk is announced to every reader at once (no polling).

The object's last byte is held back from every reader until the hash has
been checked: nobody ever receives a complete body of unverified bytes. If
the download fails, every reader's connection is aborted, so a truncated
body keeps its advertised Content-Length and is visibly cut.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from ..errors import StorageError
from ..interfaces import ITempObject
from ..model import DataObject, StorageEndpoint
from .hashing import ContentHasher
from .readers import StreamReader

log = Logger()


class State(enum.Enum):
    WAITING_FOR_SLOT = "waiting for a download slot"
    FINDING_SOURCE = "looking for a source"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"


class DownloadFailed(Exception):
    """The object could not be downloaded (no source finished, integrity
    check failed, disk error, or timeout)."""


class _SourceFailed(Exception):
    """This source failed; the next one may resume."""


class _Rejected(Exception):
    """Give up on the whole download (cancelled, or wrong bytes that cannot
    be retried elsewhere)."""


class _BadBytes(_Rejected):
    """This source's bytes are wrong (too many, hash mismatch): readers got
    unverified bytes from it, so they are aborted and the download restarts
    from byte 0 on the next source (when a fresh temporary can be had)."""


class _BodyReceiver(Protocol):
    """Feeds one storage-node response body into the download."""

    def __init__(self, download: PendingDownload, skip: int) -> None:
        self._download = download
        self._skip = skip  # a source that ignored our Range: drop the prefix
        self.finished: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            # Given up on (idle, wrong bytes, cancelled): late bytes still
            # queued in the transport must never reach the file, where the
            # next source may already be writing.
            return
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
            if not data:
                return
        try:
            self._download._received(data)
        except Exception as e:  # reject / disk errors: stop this body now
            self.transport.stopProducing()
            if not self.finished.called:
                self.finished.errback(e)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(_SourceFailed(f"connection lost: {reason.getErrorMessage()}"))


@define(eq=False)
class PendingDownload:
    """The lifecycle of one object's download, and its readers."""

    obj: DataObject
    reactor: Any
    #: Where the bytes go; None: ``reopen_temp()`` opens it once a download
    #: slot is ours (a download queued for a slot holds no file: in a storm
    #: of stalled storage nodes, hundreds queue).
    temp: ITempObject | None
    #: ``(exclude) -> Deferred[list[StorageEndpoint]]`` ranked sources with the object.
    find_sources: Callable[[frozenset[str]], Deferred[list[StorageEndpoint]]]
    #: ``(endpoint, object_id, offset) -> Deferred[IResponse]``
    fetch: Callable[[StorageEndpoint, str, int], Deferred[Any]]
    #: ``() -> Deferred[release]`` a download slot.
    acquire_slot: Callable[[], Deferred[Callable[[], None]]]
    #: Seconds without a byte from a source before giving up on it.
    idle_timeout: float
    #: Seconds for the whole download.
    total_timeout: float
    on_source_ok: Callable[[StorageEndpoint], None] = lambda endpoint: None
    on_source_failed: Callable[[StorageEndpoint], None] = lambda endpoint: None
    #: ``() -> ITempObject`` a fresh temporary, to restart from byte 0 after
    #: a source sent wrong bytes; None: such a download fails instead.
    reopen_temp: Callable[[], ITempObject] | None = None
    #: Runs blocking disk work (the commit's fsync and rename), e.g. in a
    #: thread; default: right here.
    run_blocking: Callable[[Callable[[], None]], Deferred[None]] = lambda work: maybeDeferred(work)

    state: State = State.WAITING_FOR_SLOT
    written: int = 0
    #: Size and hash checked and the file in place: readers may have every byte.
    verified: bool = False
    content_type: str | None = None
    source: StorageEndpoint | None = None
    failure_reason: str | None = None
    #: First bytes of the object, for mime detection.
    head_bytes: bytes = b""
    readers: set[StreamReader] = field(factory=set)
    _hasher: ContentHasher = field(factory=ContentHasher)
    _observers: list[Deferred[bool]] = field(factory=list)
    _body: _BodyReceiver | None = None
    _transport: Any = None
    _idle_call: IDelayedCall | None = None
    _deadline: IDelayedCall | None = None
    _current: Deferred[Any] | None = None
    _cancelled: str | None = None
    first_byte: Deferred[None] = field(factory=Deferred)

    # -- what readers see ------------------------------------------------

    @property
    def object_id(self) -> str:
        return self.obj.id

    @property
    def failed(self) -> bool:
        return self.state is State.FAILED

    @property
    def readable_limit(self) -> int:
        """Bytes readers may have: everything once verified, otherwise all
        but the object's last byte."""
        if self.verified:
            return self.obj.size
        return min(self.written, max(self.obj.size - 1, 0))

    def add_reader(self, reader: StreamReader) -> None:
        self.readers.add(reader)

    def remove_reader(self, reader: StreamReader) -> None:
        self.readers.discard(reader)

    def when_done(self) -> Deferred[bool]:
        """Fires True when completed and verified, False when failed."""
        d: Deferred[bool] = Deferred()
        if self.state in (State.COMPLETED, State.FAILED):
            d.callback(self.state is State.COMPLETED)
        else:
            self._observers.append(d)
        return d

    # -- running -----------------------------------------------------------

    def start(self) -> Deferred[bool]:
        """Run the download; the result fires True (verified, in place) or False."""
        d = self.when_done()
        self._deadline = self.reactor.callLater(self.total_timeout, self._timed_out)
        ensureDeferred(self._run())
        return d

    def cancel(self, reason: str) -> None:
        """Give up (shutdown): readers are aborted, the partial file removed."""
        if self.state in (State.COMPLETED, State.FAILED):
            return
        self._cancelled = reason
        self._stop_current()

    def _timed_out(self) -> None:
        self._deadline = None
        self.cancel(f"took longer than pendingDownloadTimeoutSec ({self.total_timeout:.0f}s)")

    def _stop_current(self) -> None:
        if self._transport is not None:
            self._transport.stopProducing()
        if self._current is not None:
            self._current.cancel()
        if self._body is not None and not self._body.finished.called:
            self._body.finished.errback(_Rejected(self._cancelled or "cancelled"))

    def _transition(self, state: State) -> None:
        log.info(
            "object {objectId}: {old} -> {new}",
            objectId=self.obj.id,
            old=self.state.value,
            new=state.value,
        )
        self.state = state

    async def _run(self) -> None:
        release = None
        try:
            self._current = self.acquire_slot()
            release = await self._current
            self._check_cancelled()
            if self.temp is None:
                if self.reopen_temp is None:
                    raise DownloadFailed("no temporary file to write to")
                self.temp = self.reopen_temp()  # may raise OSError: fails the download
            await self._download_from_sources()
            # The fsync and rename run off the reactor thread (other
            # connections keep moving) and a shutdown does not interrupt
            # them; the last byte goes out once the object is in place, so
            # a reader that got every byte finds the object cached.
            assert self.temp is not None
            await self.run_blocking(self.temp.commit)
            self.verified = True
        except Exception as e:
            reason = self._cancelled or _describe(e)
            self._fail(reason)
        else:
            self._succeed()
        finally:
            self._current = None
            if release is not None:
                release()

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise _Rejected(self._cancelled)

    async def _download_from_sources(self) -> None:
        tried: set[str] = set()
        while True:
            self._transition(State.FINDING_SOURCE)
            self._current = self.find_sources(frozenset(tried))
            sources = await self._current
            self._check_cancelled()
            if not sources:
                raise DownloadFailed(
                    "no source could serve it" if not tried else f"every source failed (tried {len(tried)})"
                )
            for endpoint in sources:
                tried.add(endpoint.url)
                try:
                    await self._download_from(endpoint)
                    self._verify()
                except _BadBytes as e:
                    self._check_cancelled()
                    if self.reopen_temp is None:
                        raise
                    log.warn(
                        "object {objectId}: source {source} sent wrong bytes ({reason}): starting over elsewhere",
                        objectId=self.obj.id,
                        source=endpoint.url,
                        reason=str(e),
                    )
                    self.on_source_failed(endpoint)
                    self._start_over(f"source {endpoint.url} sent wrong bytes: {e}")
                    continue
                except (_SourceFailed, StorageError) as e:
                    self._check_cancelled()
                    log.warn(
                        "object {objectId}: source {source} failed at byte {offset}: {reason}",
                        objectId=self.obj.id,
                        source=endpoint.url,
                        offset=self.written,
                        reason=str(e),
                    )
                    self.on_source_failed(endpoint)
                    continue
                self.on_source_ok(endpoint)
                return

    async def _download_from(self, endpoint: StorageEndpoint) -> None:
        offset = self.written
        self.source = endpoint
        self._current = self.fetch(endpoint, self.obj.id, offset)
        try:
            response = await self._current
        except CancelledError:
            self._check_cancelled()
            raise _SourceFailed("cancelled") from None
        skip = 0
        problem = None
        if self._cancelled:
            problem = self._cancelled
        elif offset and response.code == 200:
            skip = offset  # the source ignored Range: drop what we have
        elif offset and response.code != 206:
            problem = f"unexpected status {response.code} to a Range request"
        elif offset and range_start(response) not in (None, offset):
            problem = f"answered a Range request for byte {offset} with another range"
        elif not offset and response.code != 200:
            problem = f"unexpected status {response.code}"
        if problem is not None:
            _abandon(response)  # give its connection slot back
            self._check_cancelled()
            raise _SourceFailed(problem)
        if self.content_type is None:
            ctype = response.headers.getRawHeaders(b"content-type")
            if ctype:
                self.content_type = ctype[0].decode("latin-1")
        if self.state is not State.DOWNLOADING:
            self._transition(State.DOWNLOADING)
        body = self._body = _BodyReceiver(self, skip)
        response.deliverBody(body)
        self._transport = getattr(body, "transport", None)
        self._arm_idle()
        try:
            await body.finished
        finally:
            self._disarm_idle()
            self._body = None
            self._transport = None
        if self.written < self.obj.size:
            raise _SourceFailed(f"body ended after {self.written} of {self.obj.size} bytes")

    # -- bytes arriving ------------------------------------------------------

    def _received(self, data: bytes) -> None:
        if self.written + len(data) > self.obj.size:
            raise _BadBytes(
                f"too many bytes: expected {self.obj.size}, got at least {self.written + len(data)}"
            )
        assert self.temp is not None
        self.temp.write(data)  # may raise OSError (ENOSPC, EIO): fails the download
        self._hasher.update(data)
        if len(self.head_bytes) < 8192:
            self.head_bytes += data[: 8192 - len(self.head_bytes)]
        self.written += len(data)
        self._arm_idle()
        if not self.first_byte.called:
            self.first_byte.callback(None)
        for reader in list(self.readers):
            reader.data_available()

    def _arm_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.idle_timeout)
        else:
            self._idle_call = self.reactor.callLater(self.idle_timeout, self._went_idle)

    def _disarm_idle(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _went_idle(self) -> None:
        self._idle_call = None
        if self._body is not None and not self._body.finished.called:
            if self._transport is not None:
                self._transport.stopProducing()
            self._body.finished.errback(_SourceFailed(f"no data for {self.idle_timeout:.1f}s"))

    # -- the end -------------------------------------------------------------

    def _verify(self) -> None:
        if self.written != self.obj.size:
            raise _BadBytes(f"size mismatch: expected {self.obj.size}, got {self.written}")
        actual = self._hasher.ipfs_hash()
        if actual != self.obj.ipfs_hash:
            raise _BadBytes(f"hash mismatch: expected {self.obj.ipfs_hash}, got {actual}")

    def _start_over(self, reason: str) -> None:
        """Throw away every byte so far: abort the readers that were given
        some (they can never be vouched for), take a fresh temporary and
        count from 0 again. ``first_byte`` stays fired: readers joining now
        wait for the new bytes."""
        assert self.reopen_temp is not None
        for reader in list(self.readers):
            reader.source_failed(reason)
        old, self.temp = self.temp, self.reopen_temp()  # may raise OSError: fails the download
        try:
            if old is not None:
                old.discard()
        except OSError as e:
            log.error("object {objectId}: cannot remove partial file: {error}", objectId=self.obj.id, error=e)
        self.written = 0
        self._hasher = ContentHasher()
        self.head_bytes = b""
        self.content_type = None

    def _finish_timers(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self._disarm_idle()

    def _succeed(self) -> None:
        self._finish_timers()
        self._transition(State.COMPLETED)
        for reader in list(self.readers):
            reader.data_available()
        self._notify(True)

    def _fail(self, reason: str) -> None:
        self._finish_timers()
        self.failure_reason = reason
        self._transition(State.FAILED)
        log.error("object {objectId}: download failed: {reason}", objectId=self.obj.id, reason=reason)
        try:
            if self.temp is not None:
                self.temp.discard()
        except OSError as e:
            log.error("object {objectId}: cannot remove partial file: {error}", objectId=self.obj.id, error=e)
        for reader in list(self.readers):
            reader.source_failed(reason)
        if not self.first_byte.called:
            self.first_byte.errback(DownloadFailed(reason))
            self.first_byte.addErrback(lambda f: None)
        self._notify(False)

    def _notify(self, ok: bool) -> None:
        observers, self._observers = self._observers, []
        for d in observers:
            d.callback(ok)


def range_start(response: Any) -> int | None:
    """The first byte of a 206's ``Content-Range``, None if absent or
    malformed (tolerated: the content hash still guards the bytes)."""
    from ..storage.client import parse_content_range

    values = response.headers.getRawHeaders(b"content-range")
    if not values or len(values) != 1:
        return None
    parsed = parse_content_range(values[0])
    return None if parsed is None else parsed[0]


def _abandon(response: Any) -> None:
    abandon = getattr(response, "abandon", None)
    if abandon is not None:
        abandon()


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        return f"disk error: {e.strerror or e}"
    return str(e) or type(e).__name__
