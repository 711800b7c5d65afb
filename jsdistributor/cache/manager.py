"""The cache: complete objects on disk, pending downloads, space accounting,
eviction and state. The asset routes ask it what to serve; it never serves
HTTP itself."""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, BinaryIO, Callable, Mapping

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred, succeed
from twisted.logger import Logger

from ..interfaces import IContentStore
from ..model import DataObject, StorageEndpoint
from .eviction import CacheEntry
from .mime import SNIFF_BYTES, detect_mime
from .pending import PendingDownload, State
from .readers import SEND_TIMEOUT, StreamReader
from .state import StateCorrupt, load_argus_cache, load_state, reconcile, remove_state_temporaries, save_state
from .store import size_mismatch

log = Logger()


class CacheManager:
    """Owns the assets directory through ``store`` and the eviction ``policy``.

    Space: ``storage_used`` counts complete objects plus the space reserved
    for downloads in progress; it never exceeds ``limit``. When nothing can
    be evicted (every object is being read), ``reserve`` says no and the
    caller proxies instead of caching.
    """

    def __init__(
        self,
        reactor: Any,
        store: IContentStore,
        policy: Any,
        *,
        limit: int,
        state_path: Any,
        legacy_state_dir: Any = None,
        storage: Any = None,
        client: Any = None,
        idle_timeout: float = 5.0,
        download_timeout: float = 3600.0,
        reader_idle_timeout: float = 30.0,
        send_timeout: float | None = SEND_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.policy = policy
        self.limit = limit
        self.state_path = state_path
        self.legacy_state_dir = legacy_state_dir
        self.storage = storage
        self.client = client
        self.idle_timeout = idle_timeout
        self.download_timeout = download_timeout
        self.reader_idle_timeout = reader_idle_timeout
        #: Seconds a client may stop reading before it is cut off.
        self.send_timeout = send_timeout
        self.pending: dict[str, PendingDownload] = {}
        #: Shutting down: no new downloads.
        self.closing = False
        self.reserved = 0
        self.in_use: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        #: Called with the id of every object that leaves the cache (evicted,
        #: removed, forgotten): the hit workers must stop serving it.
        self.on_forget: list[Callable[[str], None]] = []

    # -- figures for /status ---------------------------------------------

    @property
    def objects_in_cache(self) -> int:
        return len(self.policy)

    @property
    def storage_used(self) -> int:
        return int(self.policy.total_size) + self.reserved

    @property
    def downloads_in_progress(self) -> int:
        return len(self.pending)

    def download_counts(self) -> dict[str, int]:
        by_state: Counter[str] = Counter(p.state.name.lower() for p in self.pending.values())
        return {
            "waitingForSlot": by_state["waiting_for_slot"],
            "findingSource": by_state["finding_source"],
            "downloading": by_state["downloading"],
            "completed": self.counts["completed"],
            "failed": self.counts["failed"],
        }

    # -- lookups -----------------------------------------------------------

    def cached(self, object_id: str) -> CacheEntry | None:
        return self.policy.get(object_id)  # type: ignore[no-any-return]

    def touch(self, object_id: str, times: int = 1) -> None:
        self.policy.access(object_id, self.reactor.seconds(), times)

    def pending_for(self, object_id: str) -> PendingDownload | None:
        return self.pending.get(object_id)

    def open_cached(self, object_id: str) -> BinaryIO:
        return open(self.store.file_name(object_id), "rb")

    def open_verified(self, object_id: str) -> BinaryIO | None:
        """The cached object's file, opened, if it is there with the size
        the cache recorded; otherwise the entry is forgotten (the file went
        missing or was changed behind our back: never serve it as a hit)
        and None returned, so the caller treats the request as a miss."""
        entry = self.policy.get(object_id)
        if entry is None:
            return None
        try:
            f = self.open_cached(object_id)
        except OSError as e:
            log.warn("cached object {objectId} cannot be opened ({error}): forgetting it", objectId=object_id, error=e)
            self.forget(object_id)
            return None
        size = size_mismatch(f, entry.size)
        if size is not None:
            log.warn(
                "cached object {objectId} has {actual} bytes on disk, {expected} expected: dropping it",
                objectId=object_id,
                actual=size,
                expected=entry.size,
            )
            self.forget(object_id)
            if not self.in_use.get(object_id):
                self._delete_file(object_id)
            return None
        return f

    def forget(self, object_id: str) -> None:
        """Drop the cache entry (the file, if any, is left to the caller)."""
        if object_id in self.policy:
            self.policy.remove(object_id)
            self._forgotten(object_id)

    def _forgotten(self, object_id: str) -> None:
        for listener in self.on_forget:
            listener(object_id)

    def hold(self, object_id: str) -> Callable[[], None]:
        """Mark an object in use (not evictable) until the returned call."""
        self.in_use[object_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_use[object_id] -= 1
                if self.in_use[object_id] <= 0:
                    del self.in_use[object_id]

        return release

    # -- space ---------------------------------------------------------------

    def reserve(self, size: int) -> bool:
        """Make room for ``size`` bytes, evicting as needed; False if that
        is impossible now (everything left is in use)."""
        if size > self.limit:
            return False
        now = self.reactor.seconds()
        while self.storage_used + size > self.limit:
            victim = self.policy.pop_victim(now, lambda i: self.in_use.get(i, 0) > 0)
            if victim is None:
                return False
            self._forgotten(victim)
            self._delete_file(victim)
            log.info("evicted object {objectId}", objectId=victim)
            self.counts["evicted"] += 1
        self.reserved += size
        return True

    def _delete_file(self, object_id: str) -> None:
        try:
            self.store.remove(object_id)
        except OSError as e:
            log.error("cannot remove object {objectId}: {error}", objectId=object_id, error=e)

    def remove(self, object_id: str) -> None:
        if object_id in self.policy and not self.in_use.get(object_id):
            self.policy.remove(object_id)
            self._forgotten(object_id)
            self._delete_file(object_id)

    # -- downloads -------------------------------------------------------

    def start_download(self, obj: DataObject) -> PendingDownload:
        """Start fetching ``obj`` (space must have been reserved)."""
        assert obj.id not in self.pending
        storage, client = self.storage, self.client

        def find_sources(exclude: frozenset[str]) -> Deferred[list[StorageEndpoint]]:
            # First round: GET the best guess straight away (the GET is its
            # own availability check: one round trip less on every miss);
            # after a failure, HEAD-checked candidates in rank order.
            best_guess = getattr(storage, "best_guess", None)  # optional in fakes
            if not exclude and best_guess is not None:
                guess = best_guess(obj)
                if guess is not None:
                    return succeed([guess])
            return storage.find_sources(obj, exclude)  # type: ignore[no-any-return]

        pending = PendingDownload(
            obj=obj,
            reactor=self.reactor,
            temp=None,  # opened once a download slot is ours
            reopen_temp=lambda: self.store.open_temp(obj.id),
            find_sources=find_sources,
            run_blocking=self._run_blocking,
            fetch=lambda endpoint, object_id, offset: client.get_object(endpoint, object_id, offset),
            acquire_slot=storage.download_slot,
            idle_timeout=self.idle_timeout,
            total_timeout=self.download_timeout,
            on_source_ok=lambda endpoint: storage.remember_source(obj.id, endpoint),
            on_source_failed=lambda endpoint: storage.forget_source(obj.id, endpoint.url),
        )
        self.pending[obj.id] = pending
        log.info("object {objectId}: download started ({size} bytes)", objectId=obj.id, size=obj.size)
        pending.start().addCallback(self._download_done, pending)
        return pending

    def _run_blocking(self, work: Callable[[], None]) -> Deferred[None]:
        """Disk work that may block (fsync) in the reactor's thread pool when
        there is one (a real reactor), else right away (a test Clock)."""
        get_pool = getattr(self.reactor, "getThreadPool", None)
        if get_pool is None:
            return maybeDeferred(work)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, get_pool(), work)

    def _download_done(self, ok: bool, pending: PendingDownload) -> None:
        obj = pending.obj
        del self.pending[obj.id]
        self.reserved -= obj.size
        if not ok:
            self.counts["failed"] += 1
            return
        self.counts["completed"] += 1
        mime = detect_mime(pending.head_bytes[:SNIFF_BYTES])
        if mime == "application/octet-stream" and obj.mime_type:
            mime = obj.mime_type
        self.policy.add(
            obj.id,
            obj.size,
            self.reactor.seconds(),
            popularity=max(1, len(pending.readers)),
            mime_type=mime,
            ipfs_hash=obj.ipfs_hash,
        )
        log.info("object {objectId}: cached ({size} bytes, {mime})", objectId=obj.id, size=obj.size, mime=mime)

    def reader(
        self,
        consumer: Any,
        object_id: str,
        start: int,
        end: int,
        abort: Callable[[], None],
        pending: PendingDownload | None = None,
        opened: BinaryIO | None = None,
    ) -> StreamReader:
        """A reader of ``[start, end)`` of a cached object (``opened``: its
        file, already open), or of ``pending``."""
        release = self.hold(object_id)
        open_file: Callable[[], BinaryIO]
        if pending is not None:
            assert pending.temp is not None, "readers follow a download once its first byte is in"
            open_file = partial(self._open_pending, pending.temp.path.path, object_id)
        elif opened is not None:
            open_file = partial(_given, opened)
        else:
            open_file = partial(self.open_cached, object_id)
        return StreamReader(
            self.reactor,
            consumer,
            open_file,
            start,
            end,
            pending if pending is not None and pending.state is not State.COMPLETED else None,
            self.reader_idle_timeout,
            on_release=release,
            abort=abort,
            send_timeout=self.send_timeout,
        )

    def _open_pending(self, path: str, object_id: str) -> BinaryIO:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            # The commit (in a thread) renamed it into place while the
            # download still looks pending: the same bytes, under their
            # final name.
            return self.open_cached(object_id)

    # -- state -----------------------------------------------------------------

    def load(self, supported: set[str] | None = None, expected_sizes: dict[str, int] | None = None) -> None:
        """Start-up: load state (ours, or the original node's), reconcile with
        the files, drop leftovers. Never fatal."""
        remove_state_temporaries(self.state_path)
        removed = self.store.remove_temporaries()
        if removed:
            log.warn("removed {count} partial files left by an earlier run", count=removed)
        entries: list[CacheEntry] | None = None
        try:
            entries = load_state(self.state_path)
        except StateCorrupt as e:
            log.warn("cache state is corrupt ({error}): rebuilding it from the files", error=str(e))
        if entries is None and self.legacy_state_dir is not None:
            try:
                entries = load_argus_cache(self.legacy_state_dir)
            except StateCorrupt as e:
                log.warn("the original node's cache.json is corrupt ({error}): ignoring it", error=str(e))
            else:
                if entries is not None:
                    log.info("adopted the original node's cache state ({count} objects)", count=len(entries))
        files = self.store.list_objects()
        result = reconcile(entries or [], files, supported, self.reactor.seconds(), expected_sizes=expected_sizes)
        for object_id in result.drop_files:
            self._delete_file(object_id)
        self.policy.add_entries(result.entries)
        if result.drop_files or result.drop_entries or result.adopt:
            log.info(
                "cache reconciled: {kept} kept, {adopted} adopted, {dropped} files dropped, {stale} stale entries",
                kept=len(result.keep),
                adopted=len(result.adopt),
                dropped=len(result.drop_files),
                stale=len(result.drop_entries),
            )
        over = self.storage_used - self.limit
        if over > 0:
            log.warn("cache holds {over} bytes above limits.storage: evicting", over=over)
            self.reserve(0)

    def save(self) -> None:
        save_state(self.state_path, list(self.policy.entries()))

    def save_in_thread(self) -> Deferred[None]:
        """The periodic save: the snapshot is taken here (cheap, ~25 ms at a
        million entries), the JSON encoding and fsync (about a second at a
        million) happen in a thread so the reactor keeps serving."""
        from twisted.internet.threads import deferToThreadPool

        snapshot = list(self.policy.entries())
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), save_state, self.state_path, snapshot)

    def cleanup(self, supported: Mapping[str, int]) -> int:
        """Drop cached objects no longer supported (``supported``: id ->
        size the network says it has), or whose size disagrees; returns
        how many. Objects being read are left for the next round."""
        dropped = 0
        for entry in list(self.policy.entries()):
            expected = supported.get(entry.object_id)
            if (expected is None or expected != entry.size) and not self.in_use.get(entry.object_id):
                self.remove(entry.object_id)
                dropped += 1
        if dropped:
            log.info("cleanup dropped {count} objects no longer supported", count=dropped)
        return dropped

    def begin_shutdown(self) -> Deferred[None]:
        """No new downloads from now on (``closing``); the pending ones are
        abandoned. Fires when they have all ended."""
        self.closing = True
        return self.abandon_downloads()

    def abandon_downloads(self, reason: str = "the node is shutting down") -> Deferred[None]:
        """Cancel every pending download (readers aborted, partial files
        removed); fires when all have ended."""
        waits = []
        for pending in list(self.pending.values()):
            waits.append(pending.when_done())
            pending.cancel(reason)
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def stop(self, reactor: Any, grace: float) -> Deferred[None]:
        """Shutdown: abandon downloads (readers aborted, partial files
        removed) and save state."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.begin_shutdown()
        try:
            self.save()
            log.info("cache state saved ({count} objects)", count=len(self.policy))
        except OSError as e:
            log.error("cannot save cache state: {error}", error=e)


def _given(f: BinaryIO) -> BinaryIO:
    return f
