"""Which cached object to evict: LRU-SP, as the original node (Argus) does it.

Pure bookkeeping, no I/O; ``now`` is seconds (float) from the injected clock.

LRU-SP ("LRU with size and popularity"): objects are grouped by
``ceil(log2(sizeKB / popularity))`` (clamped to 0..23, so 24 groups), where
``sizeKB = max(1, ceil(size / 1024))`` and ``popularity`` counts accesses
(1 when added). Each group is kept in LRU order: an access moves the object to
the tail of its (possibly new, since popularity changed) group. The eviction
candidates are the LRU heads of the non-empty groups; the victim is the
candidate with the greatest cost::

    cost = minutes_since_last_access * sizeKB / popularity
    minutes_since_last_access = max(0, ceil((now - last_access) / 60))

Ties go to the candidate in the higher group (the original scans groups
0..23 keeping the last candidate with ``cost >= best``).

Differences from the original, all deliberate:

- the group number is computed with exact integer arithmetic (the original
  divides two floating-point logarithms);
- a clock that went backwards gives cost 0 instead of a negative cost (which
  made the original find no victim at all);
- objects being read (``in_use``) are never chosen: a group whose head is in
  use offers its first entry that is not;
- nothing scans all entries: an access is O(1) (dict lookup and
  ``OrderedDict.move_to_end``), choosing a victim looks at the 24 group heads;
- saved state does not keep the groups' order: ``add_entries`` rebuilds it
  from the last access times (the same order while the clock runs forward).

``LruPolicy`` is plain LRU behind the same interface, and ``replay`` measures
a policy's hit ratio on a request trace, so the two can be compared.
"""

from __future__ import annotations

import gc
import math
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, NamedTuple

from attrs import frozen
from zope.interface import implementer

from jsdistributor.interfaces import IEvictionPolicy

#: Number of LRU-SP groups (sizes up to 2**24 KB = 16 GiB get their own group).
GROUP_COUNT = 24

InUse = Callable[[str], bool]


class CacheEntry(NamedTuple):
    """What the cache knows about one complete object (what the state file holds).

    A named tuple rather than an attrs class, for the 1,000,000-entry case:
    the policies store these very tuples (an access replaces one), so
    ``entries()`` creates nothing and the state file is ``json``-encoded from
    them directly (a tuple encodes as a JSON array). Use
    ``entry._replace(size=...)`` to derive one.
    """

    object_id: str
    #: Bytes.
    size: int
    #: Accesses, starting at 1.
    popularity: int
    #: Seconds (the injected clock's ``seconds()``).
    last_access: float
    #: Content type sniffed or declared when it was cached, if known.
    mime_type: str | None = None
    #: The verified content hash (``ipfsHash``), for the ETag; None for
    #: files adopted without one.
    ipfs_hash: str | None = None


#: ``_new(CacheEntry, (id, size, popularity, last_access, mime, hash))``: builds an
#: entry without the Python-level ``__new__`` of named tuples (hot paths).
_new = tuple.__new__


def size_kb(size: int) -> int:
    """``ceil(size / 1024)``, at least 1."""
    return -(-size // 1024) or 1


def cache_group(kb: int, popularity: int) -> int:
    """``ceil(log2(kb / popularity))`` clamped to ``0..GROUP_COUNT - 1``.

    Exact: with ``q = ceil(kb / popularity)``, the smallest ``g >= 0`` with
    ``2**g >= kb / popularity`` is the smallest with ``2**g >= q`` (``2**g`` is
    an integer), which is ``(q - 1).bit_length()``.
    """
    q = -(-kb // popularity)
    return min((q - 1).bit_length(), GROUP_COUNT - 1)


def elapsed_minutes(last_access: float, now: float) -> int:
    """Whole minutes since ``last_access``, rounded up, never negative."""
    elapsed = now - last_access
    if elapsed <= 0:
        return 0
    return math.ceil(elapsed / 60)


def eviction_cost(kb: int, popularity: int, last_access: float, now: float) -> float:
    """The LRU-SP cost of keeping an object: higher is evicted first."""
    return elapsed_minutes(last_access, now) * kb / popularity


def _check(object_id: str, size: int, popularity: int) -> None:
    if type(size) is not int or size < 0:
        raise ValueError("object %s: invalid size %r" % (object_id, size))
    if type(popularity) is not int or popularity < 1:
        raise ValueError("object %s: popularity must be an int >= 1, got %r" % (object_id, popularity))


def _no_object_in_use(object_id: str) -> bool:
    return False


def _group(entry: CacheEntry) -> int:
    """The entry's LRU-SP group: a function of its size and popularity."""
    q = -(-(-(-entry[1] // 1024) or 1) // entry[2])
    return min((q - 1).bit_length(), GROUP_COUNT - 1)


@implementer(IEvictionPolicy)
class LruSpPolicy:
    """LRU-SP eviction order (see the module docstring).

    Storage: one dict id -> ``CacheEntry`` (fast to copy and iterate, for
    saving), and per group an ``OrderedDict`` of ids in LRU order (O(1)
    move-to-end and head). An entry's group is a function of its size and
    popularity, so it is recomputed, not stored.

    Costs per operation (n tracked objects, R objects in use):

    - ``add``, ``access``, ``remove``, ``get``, ``set_mime_type``: O(1).
    - ``peek_victim``/``pop_victim``: O(24 + R). Each group offers its first
      entry (in LRU order) that is not in use; every entry skipped on the way
      is in use and belongs to exactly one group, so at most R entries are
      skipped in total. R is bounded by the number of objects being read
      right now (open connections), not by n; and objects being read were
      accessed recently, so they are rarely near a group's head.
    - ``entries``: O(n), creating nothing; ``list(policy.entries())`` is a
      cheap snapshot (about 20 ms at 1,000,000 entries) to save from
      another thread.
    """

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}
        # Per group: the ids, least recently used first.
        self._groups: list[OrderedDict[str, None]] = [OrderedDict() for _ in range(GROUP_COUNT)]
        self._total_size = 0

    # -- IEvictionPolicy ---------------------------------------------------

    def add(
        self,
        object_id: str,
        size: int,
        now: float,
        popularity: int = 1,
        mime_type: str | None = None,
        ipfs_hash: str | None = None,
    ) -> None:
        """Track a newly cached object (re-adding a tracked id replaces it)."""
        self.add_entry(_new(CacheEntry, (object_id, size, popularity, float(now), mime_type, ipfs_hash)))

    def access(self, object_id: str, now: float, times: int = 1) -> bool:
        """Record ``times`` accesses: popularity + times, last access ``now``,
        move to the tail of its group. False (and nothing changes) if not
        tracked."""
        old = self._entries.get(object_id)
        if old is None:
            return False
        entry = _new(CacheEntry, (object_id, old[1], old[2] + times, float(now), old[4], old[5]))
        self._entries[object_id] = entry
        group, new_group = _group(old), _group(entry)
        if new_group == group:
            self._groups[group].move_to_end(object_id)
        else:
            del self._groups[group][object_id]
            self._groups[new_group][object_id] = None
        return True

    def remove(self, object_id: str) -> bool:
        """Stop tracking (idempotent); True if it was tracked."""
        entry = self._entries.pop(object_id, None)
        if entry is None:
            return False
        del self._groups[_group(entry)][object_id]
        self._total_size -= entry[1]
        return True

    def peek_victim(self, now: float, in_use: InUse | None = None) -> str | None:
        """The id ``pop_victim`` would return, without removing it."""
        return self._victim(now, in_use or _no_object_in_use)

    def pop_victim(self, now: float, in_use: InUse | None = None) -> str | None:
        """Remove and return the object least worth keeping that is not
        ``in_use(id)``; None if nothing is tracked or everything is in use."""
        object_id = self._victim(now, in_use or _no_object_in_use)
        if object_id is not None:
            self.remove(object_id)
        return object_id

    def entries(self) -> Iterator[CacheEntry]:
        """Every tracked object, in no particular order (for saving:
        ``add_entries`` rebuilds each group's LRU order from last access
        times). Take a ``list`` before handing it to another thread."""
        return iter(self._entries.values())

    # -- extras --------------------------------------------------------------

    def add_entry(self, entry: CacheEntry) -> None:
        """Track an object at the tail of its group (``add`` with all fields)."""
        object_id, size, popularity = entry[0], entry[1], entry[2]
        _check(object_id, size, popularity)
        self.remove(object_id)
        self._entries[object_id] = entry
        self._groups[_group(entry)][object_id] = None
        self._total_size += size

    def add_entries(self, entries: Iterable[CacheEntry]) -> None:
        """Restore saved entries: added in order of last access (stable for
        equal times), which is each group's LRU order when the clock did not
        go backwards. A later entry for an id replaces an earlier one."""
        ordered = sorted(entries, key=_last_access)
        groups, known = self._groups, self._entries
        with gc_paused():
            for entry in ordered:
                # add_entry(), inlined: a million of these at start-up.
                object_id, size = entry[0], entry[1]
                _check(object_id, size, entry[2])
                if object_id in known:
                    self.remove(object_id)
                known[object_id] = entry
                groups[_group(entry)][object_id] = None
                self._total_size += size

    def lru_entries(self) -> Iterator[CacheEntry]:
        """Every tracked object, group by group, each group in LRU order
        (slower than ``entries``: for tests and debugging)."""
        for group in self._groups:
            for object_id in group:
                yield self._entries[object_id]

    def get(self, object_id: str) -> CacheEntry | None:
        return self._entries.get(object_id)

    def group_of(self, object_id: str) -> int | None:
        entry = self._entries.get(object_id)
        return None if entry is None else _group(entry)

    def set_mime_type(self, object_id: str, mime_type: str | None) -> bool:
        """Remember the object's content type (saved with the state)."""
        entry = self._entries.get(object_id)
        if entry is None:
            return False
        self._entries[object_id] = entry._replace(mime_type=mime_type)
        return True

    def mime_type_of(self, object_id: str) -> str | None:
        entry = self._entries.get(object_id)
        return None if entry is None else entry[4]

    @property
    def total_size(self) -> int:
        """Sum of the tracked objects' sizes (bytes)."""
        return self._total_size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._entries

    def _victim(self, now: float, in_use: InUse) -> str | None:
        best: str | None = None
        best_cost = -1.0
        entries = self._entries
        for group in self._groups:
            if not group:
                continue
            for object_id in group:
                if in_use(object_id):
                    continue
                entry = entries[object_id]
                # eviction_cost(), inlined: this runs 24 times per eviction.
                elapsed = now - entry[3]
                minutes = math.ceil(elapsed / 60) if elapsed > 0 else 0
                cost = minutes * (-(-entry[1] // 1024) or 1) / entry[2]
                # ">=": on a tie the later (higher) group wins, as in the original.
                if cost >= best_cost:
                    best, best_cost = object_id, cost
                break
        return best


def _last_access(entry: CacheEntry) -> float:
    return entry[3]


@implementer(IEvictionPolicy)
class LruPolicy:
    """Plain LRU behind the same interface (to compare policies on a trace).

    Popularity and mime types are tracked too, so its ``entries`` can be
    saved like LRU-SP's. Victim choice is O(1 + R) (R: objects in use).
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._total_size = 0

    def add(
        self,
        object_id: str,
        size: int,
        now: float,
        popularity: int = 1,
        mime_type: str | None = None,
        ipfs_hash: str | None = None,
    ) -> None:
        self.add_entry(_new(CacheEntry, (object_id, size, popularity, float(now), mime_type, ipfs_hash)))

    def access(self, object_id: str, now: float, times: int = 1) -> bool:
        old = self._entries.get(object_id)
        if old is None:
            return False
        self._entries[object_id] = _new(CacheEntry, (object_id, old[1], old[2] + times, float(now), old[4], old[5]))
        self._entries.move_to_end(object_id)
        return True

    def remove(self, object_id: str) -> bool:
        entry = self._entries.pop(object_id, None)
        if entry is None:
            return False
        self._total_size -= entry.size
        return True

    def peek_victim(self, now: float, in_use: InUse | None = None) -> str | None:
        in_use = in_use or _no_object_in_use
        for object_id in self._entries:
            if not in_use(object_id):
                return object_id
        return None

    def pop_victim(self, now: float, in_use: InUse | None = None) -> str | None:
        object_id = self.peek_victim(now, in_use)
        if object_id is not None:
            self.remove(object_id)
        return object_id

    def entries(self) -> Iterator[CacheEntry]:
        """Every tracked object, least recently used first."""
        return iter(self._entries.values())

    def add_entry(self, entry: CacheEntry) -> None:
        _check(entry.object_id, entry.size, entry.popularity)
        self.remove(entry.object_id)
        self._entries[entry.object_id] = entry
        self._total_size += entry.size

    def add_entries(self, entries: Iterable[CacheEntry]) -> None:
        """Restore saved entries, in order of last access (the LRU order)."""
        ordered = sorted(entries, key=_last_access)
        with gc_paused():
            for entry in ordered:
                self.add_entry(entry)

    def get(self, object_id: str) -> CacheEntry | None:
        return self._entries.get(object_id)

    def set_mime_type(self, object_id: str, mime_type: str | None) -> bool:
        entry = self._entries.get(object_id)
        if entry is None:
            return False
        self._entries[object_id] = entry._replace(mime_type=mime_type)
        return True

    def mime_type_of(self, object_id: str) -> str | None:
        entry = self._entries.get(object_id)
        return None if entry is None else entry.mime_type

    @property
    def total_size(self) -> int:
        return self._total_size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._entries


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during a bulk operation.

    Building or walking a million entries allocates millions of objects,
    each allocation burst triggering collections that traverse everything
    alive: pausing it makes loading/saving the state 2-3 times faster.
    Cycles made meanwhile are collected once it resumes (it stays off if it
    was off).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


Policy = LruSpPolicy | LruPolicy


@frozen
class ReplayStats:
    requests: int
    hits: int
    requested_bytes: int
    hit_bytes: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.hit_bytes / self.requested_bytes if self.requested_bytes else 0.0


def replay_stats(
    policy: Policy,
    trace: Iterable[tuple[str, int]],
    capacity: int,
    start: float = 0.0,
    step: float = 1.0,
) -> ReplayStats:
    """Serve ``trace`` (``(object_id, size)`` requests, ``step`` seconds
    apart) through a cache of ``capacity`` bytes ordered by ``policy``.

    A hit is an access; a miss caches the object after evicting until it
    fits (objects larger than ``capacity`` are never cached).
    """
    requests = hits = requested_bytes = hit_bytes = 0
    now = start
    for object_id, size in trace:
        requests += 1
        requested_bytes += size
        if policy.access(object_id, now):
            hits += 1
            hit_bytes += size
        elif size <= capacity:
            while policy.total_size + size > capacity:
                if policy.pop_victim(now) is None:  # pragma: no cover - nothing in use here
                    break
            policy.add(object_id, size, now)
        now += step
    return ReplayStats(requests, hits, requested_bytes, hit_bytes)


def replay(
    policy: Policy,
    trace: Iterable[tuple[str, int]],
    capacity: int,
    start: float = 0.0,
    step: float = 1.0,
) -> float:
    """The hit ratio of ``policy`` on ``trace`` (see ``replay_stats``)."""
    return replay_stats(policy, trace, capacity, start, step).hit_ratio
