"""A hit worker process: ``python -m jsdistributor.workers.process SETTINGS``
(started by :class:`jsdistributor.workers.pool.WorkerPool`, never by hand).

File descriptor 3 is its AMP connection to the primary; its log events go
to stdout as JSON lines, which the primary logs as its own. It exits when
the primary says ``Exit`` or when the connection to the primary is lost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections import Counter
from typing import IO, Any, Mapping

from attrs import asdict, frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import FilteringLogObserver, Logger, LogLevel, formatEvent, globalLogBeginner
from twisted.protocols.amp import AMP
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..assets import AssetServer
from ..cache.store import ContentStore
from ..errors import ApiError
from ..httputil import AccessLoggingSite, error_response
from ..logs import LevelPredicate, logs_requests
from ..metrics import route_of
from ..node import LISTEN_BACKLOG
from ..public_api import PublicRoot, asset_id_of
from .commands import BATCH, CannotListen, Drain, Exit, Forget, Listen, Lookup, Report, StopListening
from .hits import HitEntry, HitTable
from .relay import RelayResource, relay_agent
from .reuseport import listen_reuseport

log = Logger()

#: The worker's end of its AMP socket pair.
CONTROL_FD = 3


@frozen
class WorkerSettings:
    index: int
    interface: str
    assets_dir: str
    #: The primary's loopback listener, where everything but hits goes.
    primary_port: int
    #: The most verbose level any of the node's log outputs takes.
    log_level: str = "info"
    reader_idle_timeout: float = 30.0
    send_timeout: float | None = 60.0
    #: Seconds between two reports (accesses, request counts) to the primary.
    report_interval: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        return cls(**json.loads(text))


class RequestTally:
    """Stands in for ``NodeMetrics`` in the worker's access log: counts
    requests by route, status and x-cache until the next report."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int, str]] = Counter()
        self.sent: Counter[tuple[str, int, str]] = Counter()

    def observe_request(self, api: str, path: bytes | str, status: int, sent: int, x_cache: str | None) -> None:
        key = (route_of(api, path), status, x_cache or "")
        self.counts[key] += 1
        self.sent[key] += sent

    def take(self) -> list[dict[str, Any]]:
        counts, sent = self.counts, self.sent
        self.counts, self.sent = Counter(), Counter()
        return [
            {"route": route, "status": status, "cache": cache, "count": n, "sent": sent[route, status, cache]}
            for (route, status, cache), n in counts.items()
        ]


class LookupThenRelay(Resource):
    """What the worker does with a request that is not a known hit: an
    asset it has not seen is looked up at the primary (and served here if
    it is a hit); everything else is relayed to the primary."""

    isLeaf = True

    def __init__(self, assets: AssetServer, relay: RelayResource, lookup: Any) -> None:
        super().__init__()
        self._assets = assets
        self._relay = relay
        self._lookup = lookup

    def render(self, request: Any) -> Any:
        object_id = asset_id_of(request)
        if object_id is None or self._assets.cache.cached(object_id) is not None:
            # Not an asset, or a known hit whose file did not check out.
            return self._relay.render(request)
        d = self._lookup(object_id).addCallback(self._looked_up, request, object_id)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> None:
        """A bug while serving: a 500 with the usual JSON body, never a hang."""
        log.failure("serving {uri} failed", failure, uri=request.uri)
        if request.finished or request._disconnected:
            return
        if request.startedWriting:
            request.channel.transport.abortConnection()
            return
        request.write(error_response(request, ApiError(500, "internal_error", "the request could not be served")))
        request.finish()

    def _looked_up(self, found: bool, request: Any, object_id: str) -> None:
        if request.finished or request._disconnected:
            return
        if found:
            result = self._assets.render_hit(request, object_id)
            if result is NOT_DONE_YET:
                return
            if isinstance(result, bytes):
                request.write(result)
                request.finish()
                return
        self._relay.render(request)


class WorkerControl(AMP):
    """The worker's end of the AMP connection."""

    def __init__(self, worker: HitWorker) -> None:
        super().__init__()
        self._worker = worker

    @Forget.responder
    def forget(self, objectIds: list[str], everything: bool) -> dict[str, Any]:
        if everything:
            self._worker.table.forget_all()
        else:
            self._worker.table.forget(objectIds)
        return {}

    @Listen.responder
    def listen(self, port: int) -> dict[str, Any]:
        return {"port": self._worker.listen(port)}

    @StopListening.responder
    def stop_listening(self) -> Deferred[dict[str, Any]]:
        return self._worker.stop_listening().addCallback(lambda _: {})

    @Drain.responder
    def drain(self, grace: float) -> Deferred[dict[str, Any]]:
        self._worker.report()
        return self._worker.site.drain(grace).addCallback(lambda _: {})

    @Exit.responder
    def exit(self) -> dict[str, Any]:
        self._worker.exit("the node asked")
        return {}

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self._worker.exit("the connection to the node was lost")


class HitWorker:
    def __init__(self, reactor: Any, settings: WorkerSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        store = ContentStore(settings.assets_dir)
        self.table = HitTable(
            reactor, store.file_name, settings.reader_idle_timeout, settings.send_timeout
        )
        self.assets = AssetServer(reactor, self.table, None, None, None, None, None)  # type: ignore[arg-type]
        self.tally = RequestTally()
        relay = RelayResource(relay_agent(reactor), f"http://127.0.0.1:{settings.primary_port}".encode("ascii"))
        fallback = LookupThenRelay(self.assets, relay, self.lookup)
        self.site = AccessLoggingSite(
            PublicRoot(fallback, self.assets),
            reactor,
            "public",
            metrics=self.tally,
            log_requests=logs_requests(settings.log_level),
        )
        self.control: WorkerControl | None = None
        self.port: Any = None
        self._lookups: dict[str, Deferred[bool]] = {}
        self._reporting = LoopingCall(self.report)
        self._reporting.clock = reactor
        self._exiting = False

    def connect(self, fd: int = CONTROL_FD) -> None:
        """Start talking to the primary over the socket pair ``fd``."""
        self.control = WorkerControl(self)
        factory = Factory.forProtocol(lambda: self.control)
        self.reactor.adoptStreamConnection(fd, socket.AF_UNIX, factory)
        os.close(fd)  # the reactor holds its own copy
        self._reporting.start(self.settings.report_interval, now=False)
        log.debug("worker {index} started", index=self.settings.index)

    # -- hits ------------------------------------------------------------

    def lookup(self, object_id: str) -> Deferred[bool]:
        """Ask the primary whether ``object_id`` is a hit (learning it if
        so); concurrent asks for one id share one round trip."""
        waiting = self._lookups.get(object_id)
        if waiting is None:
            if self.control is None:
                return succeed(False)
            waiting = self.control.callRemote(Lookup, objectId=object_id)
            waiting.addCallback(self._learn, object_id)
            waiting.addErrback(lambda f: log.warn("lookup of {objectId} failed: {error}", objectId=object_id, error=f.getErrorMessage()) or False)
            waiting.addBoth(self._looked_up, object_id)
            self._lookups[object_id] = waiting
        d: Deferred[bool] = Deferred()
        waiting.addCallback(lambda found: d.callback(found) or found)
        return d

    def _learn(self, answer: dict[str, Any], object_id: str) -> bool:
        if not answer["found"]:
            return False
        self.table.learn(
            object_id, HitEntry(answer["size"], answer["mimeType"] or None, answer["ipfsHash"] or None)
        )
        return True

    def _looked_up(self, found: bool, object_id: str) -> bool:
        self._lookups.pop(object_id, None)
        return found

    def report(self) -> None:
        """Accesses (for the primary's eviction policy) and request counts
        (for its metrics) since the last report."""
        if self.control is None:
            return
        accessed = [{"objectId": i, "count": n} for i, n in self.table.take_accessed().items()]
        requests = self.tally.take()
        while accessed or requests:
            self.control.callRemote(Report, accessed=accessed[:BATCH], requests=requests[:BATCH])
            accessed, requests = accessed[BATCH:], requests[BATCH:]

    # -- listening -------------------------------------------------------------

    def listen(self, port: int) -> int:
        if self.port is None:
            try:
                self.port = listen_reuseport(self.reactor, port, self.site, LISTEN_BACKLOG, self.settings.interface)
            except Exception as e:
                raise CannotListen(str(e)) from None
        return int(self.port.getHost().port)

    def stop_listening(self) -> Deferred[None]:
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    def exit(self, why: str) -> None:
        if self._exiting:
            return
        self._exiting = True
        log.debug("worker {index} exiting: {why}", index=self.settings.index, why=why)
        if self._reporting.running:
            self._reporting.stop()
        self.reactor.callLater(0, self.reactor.stop)


def event_for_primary(event: Mapping[str, Any]) -> dict[str, Any]:
    """What the primary needs to log ``event`` as its own: namespace,
    level, the formatted text, and the fields that are plain values (the
    JSON log file keeps them: an access event's status, bytes, ...)."""
    level = event.get("log_level", LogLevel.info)
    out: dict[str, Any] = {
        "namespace": event.get("log_namespace") or "-",
        # LogLevel's constants are not instances of the class.
        "level": level.name if level in LogLevel.iterconstants() else "info",
        "text": formatEvent(event),
        "fields": {
            key: value
            for key, value in event.items()
            if not key.startswith("log_") and isinstance(value, (str, int, float, bool, type(None)))
        },
    }
    failure = event.get("log_failure")
    if failure is not None:
        out["text"] += "\n" + failure.getTraceback()
    return out


def start_logging(level: str, output: IO[str] = sys.stdout) -> None:
    """Log events at ``level`` or above as JSON lines on ``output`` (the
    primary reads them and logs them with its own outputs)."""

    def write(event: Mapping[str, Any]) -> None:
        output.write(json.dumps(event_for_primary(event), default=str) + "\n")
        output.flush()

    observer = FilteringLogObserver(write, [LevelPredicate(level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = WorkerSettings.from_json(args[0])
    start_logging(settings.log_level)
    from twisted.internet import reactor

    worker = HitWorker(reactor, settings)
    # Ctrl-C in a terminal reaches the whole process group, and systemd's
    # default KillMode signals every process of the unit: the primary stops
    # the workers itself (Exit, or its connection closing), after they
    # have finished their responses. SIGKILL still ends a worker at once.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    reactor.callWhenRunning(signal.signal, signal.SIGTERM, signal.SIG_IGN)
    reactor.callWhenRunning(worker.connect)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
