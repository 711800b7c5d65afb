"""A worker's view of the cache: the hits it has learned from the primary.

It stands in for ``CacheManager`` in ``AssetServer.render_hit`` (the same
code, so a worker's hit is byte for byte the primary's). An object's bytes
never change under its id and a file under its final name is always
complete, so an entry stays valid until the primary says ``Forget``; the
file is still checked (opened, size compared) on every request.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, BinaryIO, Callable

from attrs import frozen
from twisted.logger import Logger

from ..cache.readers import SEND_TIMEOUT, StreamReader
from ..cache.store import size_mismatch

log = Logger()


@frozen
class HitEntry:
    size: int
    mime_type: str | None
    ipfs_hash: str | None


class HitTable:
    """``object id -> HitEntry``, plus the accesses not yet reported."""

    def __init__(
        self,
        reactor: Any,
        path_of: Callable[[str], str],
        reader_idle_timeout: float = 30.0,
        send_timeout: float | None = SEND_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self._path_of = path_of
        self.reader_idle_timeout = reader_idle_timeout
        self.send_timeout = send_timeout
        self.entries: dict[str, HitEntry] = {}
        #: Accesses since the last report to the primary.
        self.accessed: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.entries)

    # -- what the primary tells us -------------------------------------------

    def learn(self, object_id: str, entry: HitEntry) -> None:
        self.entries[object_id] = entry

    def forget(self, object_ids: list[str]) -> None:
        for object_id in object_ids:
            self.entries.pop(object_id, None)

    def forget_all(self) -> None:
        self.entries.clear()

    def take_accessed(self) -> Counter[str]:
        accessed, self.accessed = self.accessed, Counter()
        return accessed

    # -- what AssetServer.render_hit asks ------------------------------------

    def cached(self, object_id: str) -> HitEntry | None:
        return self.entries.get(object_id)

    def touch(self, object_id: str) -> None:
        self.accessed[object_id] += 1

    def open_verified(self, object_id: str) -> BinaryIO | None:
        """The object's file, if it is there with the learned size; otherwise
        the entry is dropped and None returned (the request then goes to the
        primary, which sorts the cache out)."""
        entry = self.entries.get(object_id)
        if entry is None:
            return None
        try:
            f = open(self._path_of(object_id), "rb")
        except OSError:
            del self.entries[object_id]
            return None
        size = size_mismatch(f, entry.size)
        if size is not None:
            log.warn(
                "object {objectId} has {actual} bytes on disk, {expected} expected: asking the node",
                objectId=object_id,
                actual=size,
                expected=entry.size,
            )
            del self.entries[object_id]
            return None
        return f

    def reader(
        self,
        consumer: Any,
        object_id: str,
        start: int,
        end: int,
        abort: Callable[[], None],
        pending: Any = None,
        opened: BinaryIO | None = None,
    ) -> StreamReader:
        assert pending is None and opened is not None, "a worker only serves complete, opened files"
        return StreamReader(
            self.reactor,
            consumer,
            lambda: opened,
            start,
            end,
            None,
            self.reader_idle_timeout,
            abort=abort,
            send_timeout=self.send_timeout,
        )
