"""Which storage nodes to download an object from, and how many downloads
run at once.

:class:`StorageNodes` is a ``twisted.application.service.Service``: started,
it probes every storage node (``GET /version``) every ``probe_interval``
seconds and ranks them by response time (:mod:`.ranking`); ``find_sources``
then checks, best first, which nodes have an object.

How the cache is expected to use it::

    release = yield nodes.download_slot()          # queue for a download slot
    try:
        tried = set()
        while True:
            sources = yield nodes.find_sources(obj, frozenset(tried))
            if not sources:
                raise NoSource
            for source in sources:
                try:
                    yield download(source)         # client.get_object(...)
                except Exception:
                    nodes.forget_source(obj.id, source.url)
                    tried.add(source.url)
                else:
                    nodes.remember_source(obj.id, source)
                    return
    finally:
        release()

A remembered source (a recent successful download, for ``source_ttl``
seconds of the injected clock) is returned **alone**, without any HEAD: the
fast path costs no request. If it fails, ``forget_source`` and call
``find_sources`` again as above.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import StorageError
from ..interfaces import IMetadataSource, IStorageClient
from ..model import DataObject, StorageEndpoint, is_valid_object_id
from .ranking import ResponseTimes

__all__ = ["StorageNodes"]

log = Logger()

#: ``find_sources`` stops once it has found this many available sources.
DEFAULT_MAX_SOURCES = 3

#: Remembered sources are pruned of expired entries beyond this many.
_REMEMBERED_PRUNE_AT = 10_000


class _Once:
    def __init__(self, func: Callable[[], None]) -> None:
        self._func: Callable[[], None] | None = func

    def __call__(self) -> None:
        func, self._func = self._func, None
        if func is not None:
            func()


class _ProbeRun:
    """One ``probe_all`` pass: what ``stop`` must cancel."""

    def __init__(self) -> None:
        self.cancelled = False
        self.in_flight: set[Deferred[Any]] = set()
        self.done: Deferred[None] | None = None

    def track(self, d: Deferred[Any]) -> Deferred[Any]:
        self.in_flight.add(d)

        def untrack(result: object) -> object:
            self.in_flight.discard(d)
            return result

        return d.addBoth(untrack)

    def cancel(self) -> None:
        self.cancelled = True
        for d in list(self.in_flight):
            d.cancel()


class StorageNodes(Service):
    """Storage node ranking, source selection and the download limit.

    ``probe_interval`` (``intervals.check_storage_node_response_times``),
    ``source_ttl`` (``limits.data_object_source_by_object_id_ttl``; 0
    disables remembering) and ``max_concurrent_downloads``
    (``limits.max_concurrent_storage_node_downloads``) come from the config.
    ``availability_concurrency``: HEAD checks in flight at once per
    ``find_sources`` call; ``max_concurrent_probes``: ``/version`` probes
    at once; ``max_sources``: ``find_sources`` stops once it has found this
    many. ``response_times`` may be passed in (e.g. with a failure penalty
    of twice the client's timeout).

    As a Service: ``startService``/``stopService`` call ``start``/``stop``.
    """

    name = "storage-nodes"

    def __init__(
        self,
        reactor: Any,
        client: IStorageClient,
        metadata: IMetadataSource,
        *,
        probe_interval: float,
        source_ttl: float,
        max_concurrent_downloads: int,
        availability_concurrency: int = 5,
        max_concurrent_probes: int = 10,
        max_sources: int = DEFAULT_MAX_SOURCES,
        response_times: ResponseTimes | None = None,
    ) -> None:
        for label, value in (
            ("probe_interval", probe_interval),
            ("max_concurrent_downloads", max_concurrent_downloads),
            ("availability_concurrency", availability_concurrency),
            ("max_concurrent_probes", max_concurrent_probes),
            ("max_sources", max_sources),
        ):
            if not value > 0:
                raise ValueError(f"{label} must be > 0, not {value!r}")
        self._reactor = reactor
        self._client = client
        self._metadata = metadata
        self.probe_interval = probe_interval
        self.source_ttl = source_ttl
        self.availability_concurrency = availability_concurrency
        self.max_sources = max_sources
        self.response_times = response_times if response_times is not None else ResponseTimes()
        #: The storage endpoints last listed by the metadata source.
        self.endpoints: list[StorageEndpoint] = []
        #: Download slots: ``max_concurrent_downloads`` tokens, the rest queue.
        self.downloads = DeferredSemaphore(max_concurrent_downloads)
        self._max_downloads = max_concurrent_downloads
        self._probe_slots = DeferredSemaphore(max_concurrent_probes)
        self._runs: set[_ProbeRun] = set()
        self._remembered: dict[str, tuple[StorageEndpoint, float]] = {}
        self._loop: LoopingCall | None = None

    # Service.
    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        super().stopService()
        return self.stop()

    def start(self) -> None:
        """Probe now, then every ``probe_interval`` seconds."""
        if self._loop is not None and self._loop.running:
            return
        loop = LoopingCall(self.probe_all)
        loop.clock = self._reactor
        self._loop = loop
        loop.start(self.probe_interval, now=True).addErrback(
            lambda f: log.failure("storage node probing stopped", f)
        )

    def stop(self) -> Deferred[None]:
        """Stop probing and cancel the probes in flight; fires when every
        probing pass has ended."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        runs = [run for run in self._runs if run.done is not None]
        for run in runs:
            run.cancel()
        waits = [_observe(run.done) for run in runs if run.done is not None]
        return DeferredList(waits).addCallback(lambda _: None)

    # Probing.
    def probe_all(self) -> Deferred[None]:
        """List the storage endpoints (a failure keeps the last known
        list), probe each distinct url (at most ``max_concurrent_probes``
        at once) and record the times. Never fails."""
        run = _ProbeRun()
        self._runs.add(run)
        self._prune_remembered()
        d = run.track(maybeDeferred(self._metadata.get_storage_endpoints))
        d.addCallbacks(self._got_endpoints, self._endpoints_failed, errbackArgs=(run,))
        d.addCallback(lambda _: self._probe_endpoints(run))
        d.addErrback(lambda f: log.failure("probing storage nodes failed", f))

        def finished(_: object) -> None:
            self._runs.discard(run)

        d.addBoth(finished)
        run.done = d
        return d

    def _got_endpoints(self, endpoints: list[StorageEndpoint]) -> None:
        self.endpoints = list(endpoints)
        self.response_times.retain_only(e.url for e in self.endpoints)

    def _endpoints_failed(self, failure: Failure, run: _ProbeRun) -> None:
        if run.cancelled:
            return
        log.warn(
            "could not list storage endpoints ({error}); probing the {count} last known",
            error=failure.getErrorMessage() or failure.type.__name__,
            count=len(self.endpoints),
        )

    def _probe_endpoints(self, run: _ProbeRun) -> Deferred[None]:
        urls: dict[str, StorageEndpoint] = {}
        for endpoint in self.endpoints:
            urls.setdefault(endpoint.url, endpoint)
        probes = [self._probe_slots.run(self._probe_one, run, endpoint) for endpoint in urls.values()]
        return DeferredList(probes, consumeErrors=True).addCallback(lambda _: None)

    def _probe_one(self, run: _ProbeRun, endpoint: StorageEndpoint) -> Deferred[None] | None:
        if run.cancelled:
            return None
        d = run.track(maybeDeferred(self._client.probe, endpoint))

        def succeeded(seconds: float) -> None:
            self.response_times.record(endpoint.url, seconds)

        def failed(failure: Failure) -> None:
            if run.cancelled and failure.check(CancelledError):
                return
            log.info(
                "storage node {url} failed its probe: {error}",
                url=endpoint.url,
                error=failure.getErrorMessage() or failure.type.__name__,
            )
            self.response_times.record_failure(endpoint.url)

        return d.addCallbacks(succeeded, failed)

    # Sources.
    def find_sources(
        self, obj: DataObject, exclude: frozenset[str] = frozenset()
    ) -> Deferred[list[StorageEndpoint]]:
        """Endpoints of ``obj`` that have it, best first.

        Candidates are ``obj.storage_endpoints`` (one per url) minus the
        urls in ``exclude``. A remembered source among them is returned
        alone without a HEAD. Otherwise candidates are checked with
        ``HEAD /files/{id}`` in rank order, ``availability_concurrency`` at
        once; the result lists those that answered 200, in rank order,
        stopping at the first ``max_sources`` (lower-ranked checks still
        in flight are cancelled). An empty list: nobody has it (or every
        node failed). A node whose HEAD fails (connection, timeout,
        unexpected status) gets a failed probe recorded.
        """
        if not is_valid_object_id(obj.id):
            return fail(ValueError(f"invalid data object id {obj.id!r}"))
        candidates = self._candidates(obj, exclude)
        remembered = self.remembered_source(obj.id)
        if remembered is not None and remembered.url in candidates:
            return succeed([candidates[remembered.url]])
        ranked = [candidates[url] for url in self.response_times.rank(candidates)]
        check = _AvailabilityCheck(
            self._client, obj.id, ranked, self.availability_concurrency, self.max_sources, self._head_failed
        )
        return check.run()

    def _candidates(self, obj: DataObject, exclude: frozenset[str]) -> dict[str, StorageEndpoint]:
        candidates: dict[str, StorageEndpoint] = {}
        for endpoint in obj.storage_endpoints:
            if endpoint.url not in exclude:
                candidates.setdefault(endpoint.url, endpoint)
        return candidates

    def best_guess(self, obj: DataObject) -> StorageEndpoint | None:
        """The source to try first without any HEAD: the remembered one, else
        the best-ranked healthy node holding the object's bag. A download
        GETs it directly (the GET is its own availability check, one round
        trip less on every miss) and falls back to ``find_sources`` with it
        excluded when it fails."""
        candidates = self._candidates(obj, frozenset())
        remembered = self.remembered_source(obj.id)
        if remembered is not None and remembered.url in candidates:
            return candidates[remembered.url]
        for url in self.response_times.rank(candidates):
            if not self.response_times.is_penalised(url):
                return candidates[url]
        return None

    def _head_failed(self, endpoint: StorageEndpoint, object_id: str, failure: Failure) -> None:
        log.info(
            "HEAD of {objectId} on {url} failed: {error}",
            objectId=object_id,
            url=endpoint.url,
            error=failure.getErrorMessage() or failure.type.__name__,
        )
        if failure.check(StorageError):
            self.response_times.record_failure(endpoint.url)

    def remember_source(self, object_id: str, endpoint: StorageEndpoint) -> None:
        """A download of ``object_id`` from ``endpoint`` succeeded."""
        if self.source_ttl <= 0:
            return
        self._remembered[object_id] = (endpoint, self._reactor.seconds() + self.source_ttl)
        if len(self._remembered) > _REMEMBERED_PRUNE_AT:
            self._prune_remembered()

    def forget_source(self, object_id: str, url: str) -> None:
        """A download of ``object_id`` from ``url`` failed: do not prefer
        it any more (no-op if another source is remembered)."""
        entry = self._remembered.get(object_id)
        if entry is not None and entry[0].url == url:
            del self._remembered[object_id]

    def remembered_source(self, object_id: str) -> StorageEndpoint | None:
        """The remembered source of ``object_id`` if still within its TTL."""
        entry = self._remembered.get(object_id)
        if entry is None:
            return None
        endpoint, expires = entry
        if self._reactor.seconds() >= expires:
            del self._remembered[object_id]
            return None
        return endpoint

    def _prune_remembered(self) -> None:
        now = self._reactor.seconds()
        for object_id in [k for k, (_, expires) in self._remembered.items() if now >= expires]:
            del self._remembered[object_id]

    # Download slots.
    def download_slot(self) -> Deferred[Callable[[], None]]:
        """Fires with an idempotent ``release()`` once one of the
        ``max_concurrent_downloads`` slots is free (FIFO). Call it when the
        download ends, however it ends. Cancelling while queued leaves the
        queue."""
        return self.downloads.acquire().addCallback(lambda _: _Once(self.downloads.release))

    @property
    def active_downloads(self) -> int:
        return self._max_downloads - self.downloads.tokens

    @property
    def queued_downloads(self) -> int:
        return len(self.downloads.waiting)


def _observe(d: Deferred[None]) -> Deferred[None]:
    """A new Deferred firing (with None) when ``d`` fires, leaving ``d``'s
    own result alone."""
    observer: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


class _AvailabilityCheck:
    """HEADs ``ranked`` endpoints, ``concurrency`` at once, and fires with
    the first ``wanted`` that answered 200, in rank order."""

    def __init__(
        self,
        client: IStorageClient,
        object_id: str,
        ranked: list[StorageEndpoint],
        concurrency: int,
        wanted: int,
        on_error: Callable[[StorageEndpoint, str, Failure], None],
    ) -> None:
        self._client = client
        self._object_id = object_id
        self._ranked = ranked
        self._concurrency = concurrency
        self._wanted = wanted
        self._on_error = on_error
        self._answers: list[bool | None] = [None] * len(ranked)
        self._next = 0
        self._pending: dict[int, Deferred[bool]] = {}
        self._finished = False
        self._done: Deferred[list[StorageEndpoint]] = Deferred(self._cancel)

    def run(self) -> Deferred[list[StorageEndpoint]]:
        self._fill()
        if not self._finished:
            self._conclude()
        return self._done

    def _fill(self) -> None:
        while not self._finished and len(self._pending) < self._concurrency and self._next < len(self._ranked):
            index = self._next
            self._next += 1
            d = maybeDeferred(self._client.head_object, self._ranked[index], self._object_id)
            self._pending[index] = d
            d.addBoth(self._answered, index)

    def _answered(self, result: bool | Failure, index: int) -> None:
        self._pending.pop(index, None)
        if self._finished:
            return None  # cancelled by us, or a late answer
        if isinstance(result, Failure):
            self._on_error(self._ranked[index], self._object_id, result)
            self._answers[index] = False
        else:
            self._answers[index] = bool(result)
        if not self._conclude():
            self._fill()
            self._conclude()
        return None

    def _conclude(self) -> bool:
        """Finish if the answers so far decide the result."""
        if self._finished:
            return True
        found: list[StorageEndpoint] = []
        for index, answer in enumerate(self._answers):
            if answer is None:
                return False  # a better-ranked answer is still to come
            if answer:
                found.append(self._ranked[index])
                if len(found) >= self._wanted:
                    break
        self._finish(found)
        return True

    def _finish(self, found: list[StorageEndpoint]) -> None:
        self._finished = True
        for d in list(self._pending.values()):
            d.cancel()
        self._pending.clear()
        self._done.callback(found)

    def _cancel(self, d: Deferred[list[StorageEndpoint]]) -> None:
        self._finished = True
        for pending in list(self._pending.values()):
            pending.cancel()
        self._pending.clear()
