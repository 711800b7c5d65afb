"""Small caching primitives for the metadata sources: no I/O, clock injected.

``TTLCache`` keeps answers for ``ttl`` seconds of the injected clock;
``SharedLookups`` adds request coalescing on top: concurrent lookups of the
same key share one fetch, each caller getting its own Deferred (cancelling
one caller's Deferred does not cancel the fetch nor the other callers).
Failures are never cached.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Default bound on the number of cached answers of one ``TTLCache``.
DEFAULT_MAX_ENTRIES = 100_000


class TTLCache(Generic[K, V]):
    """Answers kept for ``ttl`` seconds, at most ``max_entries`` of them.

    A ``ttl`` of 0 (or less) disables caching. When full, expired entries
    are purged first, then the oldest ones.
    """

    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V:
        """The cached answer; ``KeyError`` if absent or expired."""
        expires_at, value = self._entries[key]
        if self._clock.seconds() >= expires_at:
            del self._entries[key]
            raise KeyError(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        # Re-insert so that insertion order stays expiry order.
        self._entries.pop(key, None)
        self._entries[key] = (self._clock.seconds() + self.ttl, value)
        if len(self._entries) > self.max_entries:
            self._shrink()

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def purge_expired(self) -> int:
        """Drop expired entries; returns how many were dropped."""
        now = self._clock.seconds()
        expired = [k for k, (expires_at, _) in self._entries.items() if now >= expires_at]
        for k in expired:
            del self._entries[k]
        return len(expired)

    def _shrink(self) -> None:
        self.purge_expired()
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]


class SharedLookups(Generic[K, V]):
    """A ``TTLCache`` plus one in-flight fetch per key.

    ``get(key, fetch)`` answers from the cache, or joins the fetch already
    running for ``key``, or starts ``fetch()``. Successful answers are cached
    for ``ttl`` seconds; failures reach every waiter and are not cached.
    """

    def __init__(self, clock: IReactorTime, ttl: float, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.cache: TTLCache[K, V] = TTLCache(clock, ttl, max_entries)
        self._in_flight: dict[K, list[Deferred[V]]] = {}

    def in_flight(self) -> int:
        """How many fetches are running now."""
        return len(self._in_flight)

    def get(self, key: K, fetch: Callable[[], Deferred[V] | V]) -> Deferred[V]:
        try:
            return succeed(self.cache.get(key))
        except KeyError:
            pass
        waiters = self._in_flight.get(key)
        start = waiters is None
        if waiters is None:
            waiters = self._in_flight[key] = []
        waiter = self._new_waiter(waiters)
        if start:
            # The waiter is registered before fetching: ``fetch`` may answer
            # synchronously.
            fetched: Deferred[V] = maybeDeferred(fetch)
            fetched.addBoth(self._done, key, waiters)
        return waiter

    @staticmethod
    def _new_waiter(waiters: list[Deferred[V]]) -> Deferred[V]:
        def cancel(waiter: Deferred[V]) -> None:
            # Only this caller stops waiting; the fetch goes on for the others
            # (and still fills the cache).
            if waiter in waiters:
                waiters.remove(waiter)

        waiter: Deferred[V] = Deferred(cancel)
        waiters.append(waiter)
        return waiter

    def _done(self, result: V | Failure, key: K, waiters: list[Deferred[V]]) -> None:
        if self._in_flight.get(key) is waiters:
            del self._in_flight[key]
        if not isinstance(result, Failure):
            self.cache.put(key, result)
        for waiter in list(waiters):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        waiters.clear()
        return None
