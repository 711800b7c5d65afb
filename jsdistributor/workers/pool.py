"""The primary's side of the hit workers: starting them, answering their
lookups and reports, telling them what left the cache, and passing the
operator's start-api / stop-api and the shutdown on to them."""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.protocols.amp import AMP
from twisted.python.failure import Failure

from ..model import is_valid_object_id
from .commands import BATCH, Drain, Exit, Forget, Listen, Lookup, Report, StopListening
from .process import CONTROL_FD, WorkerSettings

log = Logger()

NOT_A_HIT = {"found": False, "size": 0, "mimeType": "", "ipfsHash": ""}

#: Seconds a worker gets to answer StopListening before it is killed.
ANSWER_TIMEOUT = 5.0
#: Seconds a worker gets to exit once told to, before it is killed.
EXIT_GRACE = 5.0
#: Restart delays after a worker ended unexpectedly: doubled after each
#: quick failure, up to the last.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that ran this long before ending is restarted at the first delay.
STABLE_AFTER = 60.0


class PrimaryControl(AMP):
    """The primary's end of one worker's AMP connection."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        super().__init__()
        self._pool = pool
        self.index = index

    @Lookup.responder
    def lookup(self, objectId: str) -> dict[str, Any]:
        return self._pool.lookup(objectId)

    @Report.responder
    def report(self, accessed: list[dict[str, Any]], requests: list[dict[str, Any]]) -> dict[str, Any]:
        self._pool.report(self.index, accessed, requests)
        return {}


class WorkerProcess(ProcessProtocol):
    """One worker's process: its log lines become our log events."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self._out = b""
        self._err = b""
        self.ended: Deferred[None] = Deferred()
        self.started_at = 0.0

    def outReceived(self, data: bytes) -> None:
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        for line in lines:
            self._event(line)

    def errReceived(self, data: bytes) -> None:
        self._err += data
        *lines, self._err = self._err.split(b"\n")
        for line in lines:
            if line.strip():
                log.warn("worker {workerIndex}: {line}", workerIndex=self.index, line=line.decode("utf-8", "replace"))

    def _event(self, line: bytes) -> None:
        """One line of the worker's stdout: a log event
        (``process.event_for_primary``), logged as ours."""
        if not line.strip():
            return
        try:
            event = json.loads(line)
            namespace, text, fields = str(event["namespace"]), str(event["text"]), dict(event["fields"])
            level = LogLevel.levelWithName(event["level"])
        except (ValueError, KeyError, TypeError, InvalidLogLevelError):
            log.warn("worker {workerIndex}: {line}", workerIndex=self.index, line=line.decode("utf-8", "replace"))
            return
        # Not Logger.emit's own parameters, nor the keys the observers own.
        fields = {k: v for k, v in fields.items() if k not in ("self", "level", "format") and not k.startswith("log_")}
        fields.update(workerIndex=self.index, workerText=text)
        Logger(namespace=namespace).emit(level, "worker {workerIndex}: {workerText}", **fields)

    def processEnded(self, reason: Failure) -> None:
        for rest in (self._out, self._err):
            if rest.strip():
                self._event(rest)
        self._pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """``count`` hit workers next to the primary. ``public_port()`` is the
    port the primary's public API listens on now (None when stopped);
    ``settings(index)`` builds a worker's settings."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        settings: Callable[[int], WorkerSettings],
        cache: Any,
        metrics: Any,
        public_port: Callable[[], int | None],
    ) -> None:
        self.setName("hit workers")
        self._reactor = reactor
        self.count = count
        self._settings = settings
        self._cache = cache
        self._metrics = metrics
        self._public_port = public_port
        self.processes: dict[int, WorkerProcess] = {}
        self.controls: dict[int, PrimaryControl] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._forgotten: list[str] = []
        self._stopping = False
        self._trigger: Any = None
        cache.on_forget.append(self._object_forgotten)

    # -- processes ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # From the moment the process is stopping, a worker that ends is
        # not replaced (the node's own stop reaches this service last).
        self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        for index in range(1, self.count + 1):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = self._settings(index)
        process = WorkerProcess(self, index)
        process.started_at = self._reactor.seconds()
        argv = [sys.executable, "-m", "jsdistributor.workers.process", settings.to_json()]
        try:
            self._reactor.spawnProcess(
                process, sys.executable, argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", CONTROL_FD: theirs.fileno()}
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        control = PrimaryControl(self, index)
        self._reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, Factory.forProtocol(lambda: control))
        ours.close()
        self.processes[index] = process
        self.controls[index] = control
        log.info("hit worker {workerIndex} started", workerIndex=index)
        port = self._public_port()
        if port is not None:
            self._listen_one(index, port)

    def _shutting_down(self) -> None:
        self._stopping = True

    def worker_ended(self, process: WorkerProcess, reason: Failure) -> None:
        index = process.index
        if self.processes.get(index) is process:
            del self.processes[index]
            self.controls.pop(index, None)
        if self._stopping or not self.running:
            return
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        lived = self._reactor.seconds() - process.started_at
        failures = 0 if lived >= STABLE_AFTER else self._failures.get(index, 0)
        delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
        self._failures[index] = failures + 1
        log.error(
            "hit worker {workerIndex} ended (exit code {code}, signal {signal}): starting it again in {delay} s",
            workerIndex=index,
            code=code,
            signal=signal,
            delay=delay,
        )
        self._metrics.worker_restarts.inc()
        self._restarts[index] = self._reactor.callLater(delay, self._spawn, index)

    # -- what the workers ask ----------------------------------------------------

    def lookup(self, object_id: str) -> dict[str, Any]:
        """Whether ``object_id`` is a hit, with what a worker needs to serve it."""
        if not is_valid_object_id(object_id):
            return NOT_A_HIT
        entry = self._cache.cached(object_id)
        if entry is None:
            return NOT_A_HIT
        return {"found": True, "size": entry.size, "mimeType": entry.mime_type or "", "ipfsHash": entry.ipfs_hash or ""}

    def report(self, index: int, accessed: list[dict[str, Any]], requests: list[dict[str, Any]]) -> None:
        for item in accessed:
            object_id = item["objectId"]
            if self._cache.cached(object_id) is not None:
                # Capped: a report is a second's worth of one worker.
                self._cache.touch(object_id, min(int(item["count"]), 10_000))
        answered = 0
        for item in requests:
            self._metrics.add_requests(
                "public", item["route"], item["status"], item["cache"] or None, item["count"], item["sent"]
            )
            answered += item["count"]
        if answered:
            self._metrics.worker_requests.labels(str(index)).inc(answered)

    # -- what we tell the workers ---------------------------------------------

    def _object_forgotten(self, object_id: str) -> None:
        if not self._forgotten:
            self._reactor.callLater(0, self._send_forgotten)
        self._forgotten.append(object_id)

    def _send_forgotten(self) -> None:
        ids, self._forgotten = self._forgotten, []
        everything = len(ids) > 50 * BATCH
        for control in self.controls.values():
            if everything:
                control.callRemote(Forget, objectIds=[], everything=True)
                continue
            for start in range(0, len(ids), BATCH):
                control.callRemote(Forget, objectIds=ids[start : start + BATCH], everything=False)

    def _listen_one(self, index: int, port: int) -> Deferred[None]:
        control = self.controls[index]

        def listening(answer: dict[str, Any]) -> None:
            log.info("hit worker {workerIndex} listening on port {port}", workerIndex=index, port=answer["port"])

        def failed(reason: Failure) -> None:
            log.error("hit worker {workerIndex} cannot listen: {error}", workerIndex=index, error=reason.getErrorMessage())

        return control.callRemote(Listen, port=port).addCallbacks(listening, failed)

    def listen(self, port: int) -> Deferred[None]:
        """Every worker listens on ``port`` (start-api)."""
        return _gather([self._listen_one(index, port) for index in list(self.controls)])

    def stop_listening(self) -> Deferred[None]:
        """Every worker closes its listening socket (stop-api, shutdown);
        fires once they all have. One that does not answer within
        ``ANSWER_TIMEOUT`` seconds is killed (its replacement does not
        listen while the public API is stopped)."""
        calls = []
        for index, control in list(self.controls.items()):
            d = control.callRemote(StopListening).addTimeout(ANSWER_TIMEOUT, self._reactor)
            d.addErrback(self._unresponsive, index, "stop listening")
            calls.append(d)
        return _gather(calls)

    def _unresponsive(self, reason: Failure, index: int, what: str) -> None:
        log.error(
            "hit worker {workerIndex} did not {what} ({error}): killing it",
            workerIndex=index,
            what=what,
            error=reason.getErrorMessage(),
        )
        process = self.processes.get(index)
        if process is not None:
            _kill(process)

    def drain(self, grace: float) -> Deferred[None]:
        """Shutdown: every worker finishes its responses in flight (those
        still open after ``grace`` seconds are cut)."""
        return _gather(
            [
                control.callRemote(Drain, grace=grace).addTimeout(grace + ANSWER_TIMEOUT, self._reactor)
                for control in list(self.controls.values())
            ]
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        for delayed in self._restarts.values():
            if delayed.active():
                delayed.cancel()
        self._restarts.clear()
        ended = [process.ended for process in self.processes.values()]
        for control in list(self.controls.values()):
            control.callRemote(Exit)
        if not ended:
            return succeed(None)
        deadline = self._reactor.callLater(EXIT_GRACE, self._kill_all)
        done = DeferredList(ended, consumeErrors=True)

        def finished(_: object) -> None:
            if deadline.active():
                deadline.cancel()
            log.info("hit workers stopped")

        return done.addCallback(finished)

    def _kill_all(self) -> None:
        for process in list(self.processes.values()):
            log.warn("hit worker {workerIndex} did not exit: killing it", workerIndex=process.index)
            _kill(process)


def _gather(calls: list[Deferred[Any]]) -> Deferred[None]:
    """Fires once every call has answered or failed (failures are logged
    where the calls are made)."""
    return DeferredList(calls, consumeErrors=True).addCallback(lambda _: None)


def _kill(process: WorkerProcess) -> None:
    if process.transport is not None:
        try:
            process.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
