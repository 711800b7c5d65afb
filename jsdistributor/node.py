"""The node: one MultiService holding the public API, the operator API, the
cache and the periodic tasks."""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from . import __version__
from .buckets import BucketSelection
from .config import NodeConfig
from .errors import ApiError
from .httputil import AccessLoggingSite
from .model import MetadataStatus

log = Logger()

#: How long stopService waits for in-flight responses before closing them.
STOP_GRACE_SECONDS = 5.0

#: Pending connections the kernel queues for us (capped by
#: net.core.somaxconn). Twisted's default of 50 drops SYNs when a burst of
#: viewers connects at once, and each dropped SYN costs its viewer a second.
LISTEN_BACKLOG = 1024


class ListeningService(Service):
    """Listens on a TCP port while running; can stop/start listening on demand
    (the operator API's stop-api / start-api)."""

    def __init__(self, reactor: Any, site: Any, port: int, interface: str, name: str, reuse_port: bool = False) -> None:
        self._reactor = reactor
        #: Share the port with the hit workers (``SO_REUSEPORT``).
        self.reuse_port = reuse_port
        self.site = site
        self.port = port
        self.interface = interface
        self.setName(name)
        self.listening_port: Any = None

    @property
    def listening(self) -> bool:
        return self.listening_port is not None

    @property
    def bound_port(self) -> int | None:
        """The port listened on now (the real one when ``port`` is 0)."""
        return None if self.listening_port is None else int(self.listening_port.getHost().port)

    def listen(self) -> None:
        if self.listening_port is None:
            if self.reuse_port:
                from .workers.reuseport import listen_reuseport, port_is_taken

                if port_is_taken(self.interface, self.port):
                    raise CannotListenError(self.interface, self.port, OSError(errno.EADDRINUSE, "Address already in use"))
                self.listening_port = listen_reuseport(self._reactor, self.port, self.site, LISTEN_BACKLOG, self.interface)
            else:
                self.listening_port = self._reactor.listenTCP(
                    self.port, self.site, backlog=LISTEN_BACKLOG, interface=self.interface
                )
            log.info(
                "{name} listening on http://{interface}:{port}",
                name=self.name,
                interface=self.interface,
                port=self.bound_port,
            )

    def stop_listening(self) -> Deferred[None]:
        port, self.listening_port = self.listening_port, None
        if port is None:
            return succeed(None)
        log.info("{name} stopped listening", name=self.name)
        return maybeDeferred(port.stopListening)

    def startService(self) -> None:
        super().startService()
        self.listen()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop_listening()


class DistributorNode(MultiService):
    """Everything the daemon runs. ``reactor`` is injected (tests pass their own)."""

    def __init__(self, config: NodeConfig, reactor: Any, *, components: Any = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = self.clock = reactor
        self.selection = BucketSelection(config.buckets, config.worker_id)
        self.started_at = reactor.seconds()
        self.shutting_down = False

        from .wiring import build_components

        self.components = components if components is not None else build_components(self)
        self.metadata = self.components.metadata
        self.cache = self.components.cache
        self.assets = self.components.assets
        from .metrics import NodeMetrics

        self.metrics = getattr(self.components, "metrics", None) or NodeMetrics()
        self.metrics.watch(self)
        from .logs import logs_requests, most_verbose_level

        #: The most verbose level a log output takes (hit workers pass on
        #: what reaches it); access events are built only if it shows them.
        self.log_level = most_verbose_level(config.logs)
        self.log_requests = logs_requests(self.log_level)
        #: Set by ``tap.makeService``: the console log observer twistd should
        #: use (see ``setServiceParent``).
        self.console_observer: Any = None
        for service in self.components.services:
            service.setServiceParent(self)

        from .operator_api import OperatorApi
        from .public_api import PublicApi

        self.public_api = PublicApi(self)
        self.public_service = ListeningService(
            reactor,
            self._site(self.public_api.resource(), "public"),
            config.public_api.port,
            config.public_api.interface,
            "public API",
        )
        self.public_service.setServiceParent(self)
        self.internal_service: ListeningService | None = None
        self.worker_pool: Any = None
        if config.public_api.workers > 0:
            self._add_workers(config.public_api.workers)
        self.operator_service: ListeningService | None = None
        if config.operator_api is not None:
            self.operator_api = OperatorApi(self, config.operator_api.hmac_secret)
            self.operator_service = ListeningService(
                reactor,
                self._site(self.operator_api.resource(), "operator"),
                config.operator_api.port,
                config.operator_api.interface,
                "operator API",
            )
            self.operator_service.setServiceParent(self)
        self.metrics_service: ListeningService | None = None
        if config.metrics is not None:
            self.metrics_service = ListeningService(
                reactor,
                self._site(self.metrics.resource(), "metrics"),
                config.metrics.port,
                config.metrics.interface,
                "metrics",
            )
            self.metrics_service.setServiceParent(self)

    def _site(self, resource: Any, api: str, **options: Any) -> AccessLoggingSite:
        return AccessLoggingSite(
            resource, self.reactor, api, metrics=self.metrics, log_requests=self.log_requests, **options
        )

    def _add_workers(self, count: int) -> None:
        """``publicApi.workers``: the public port is shared with ``count``
        hit workers, which relay what they cannot serve to a listener of
        ours on the loopback interface (see jsdistributor.workers)."""
        from .workers.pool import WorkerPool
        from .workers.process import WorkerSettings

        self.public_service.reuse_port = True
        internal = self.internal_service = ListeningService(
            self.reactor,
            self._site(self.public_api.resource(), "public", trust_forwarded=True),
            0,
            "127.0.0.1",
            "public API for the hit workers",
        )
        internal.setServiceParent(self)
        config = self.config

        def settings(index: int) -> WorkerSettings:
            return WorkerSettings(
                index=index,
                interface=config.public_api.interface,
                assets_dir=str(config.directories.assets),
                primary_port=internal.bound_port,
                log_level=self.log_level,
                reader_idle_timeout=self.cache.reader_idle_timeout,
                send_timeout=self.cache.send_timeout,
            )

        public = self.public_service
        self.worker_pool = WorkerPool(self.reactor, count, settings, self.cache, self.metrics, lambda: public.bound_port)
        self.worker_pool.setServiceParent(self)

    def listening_services(self) -> list[ListeningService]:
        """The HTTP listeners: public API, operator API, metrics (and the
        loopback listener of the hit workers)."""
        services = (self.public_service, self.internal_service, self.operator_service, self.metrics_service)
        return [s for s in services if s is not None]

    def setServiceParent(self, parent: Any) -> None:
        """Under twistd, ``parent`` is the Application: give it our console
        observer as its ``ILogObserver`` component, which twistd's
        ``AppLogger.start`` installs (instead of its own unfiltered one)
        unless ``--logger`` was given."""
        if self.console_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            if parent.getComponent(ILogObserver, None) is None:
                parent.setComponent(ILogObserver, self.console_observer)
        super().setServiceParent(parent)

    # -- operator actions -------------------------------------------------

    @property
    def public_api_listening(self) -> bool:
        return self.public_service.listening

    def stop_public_api(self) -> Deferred[None]:
        stopped = self.public_service.stop_listening()
        if self.worker_pool is None:
            return stopped
        return DeferredList([stopped, self.worker_pool.stop_listening()], consumeErrors=True).addCallback(lambda _: None)

    def start_public_api(self) -> Deferred[None]:
        try:
            self.public_service.listen()
        except CannotListenError as e:
            raise ApiError(500, "cannot_listen", f"public API cannot listen: {e.socketError}") from None
        if self.worker_pool is not None:
            return self.worker_pool.listen(self.public_service.bound_port)
        return succeed(None)

    def request_shutdown(self) -> None:
        self.shutting_down = True
        log.info("shutdown requested through the operator API")
        # Let the 200 response go out first.
        self.reactor.callLater(0.2, self.reactor.stop)

    def set_worker(self, worker_id: int) -> None:
        self.selection.set_worker(worker_id)
        log.info("worker id set to {workerId}", workerId=worker_id)

    def set_buckets(self, buckets: list[str] | None) -> None:
        self.selection.set_buckets(buckets)
        log.info("buckets set to {buckets}", buckets="all of the worker's" if buckets is None else buckets)

    # -- status ----------------------------------------------------------

    async def status(self) -> dict[str, object]:
        status: MetadataStatus
        try:
            status = await self.metadata.get_status()
        except Exception as e:  # the interface says never; be safe anyway
            status = MetadataStatus(url=str(getattr(self.metadata, "url", "")), reachable=False, error=str(e))
        return {
            "id": self.config.id,
            "version": __version__,
            "workerId": self.selection.worker_id,
            "objectsInCache": self.cache.objects_in_cache,
            "storageLimit": self.config.limits.storage,
            "storageUsed": self.cache.storage_used,
            "uptime": int(self.reactor.seconds() - self.started_at),
            "downloadsInProgress": self.cache.downloads_in_progress,
            "downloads": self.cache.download_counts(),
            "nodeEnv": os.environ.get("NODE_ENV", "production"),
            "queryNodeStatus": status.as_json(),
        }

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        log.info(
            "jsdistributor {version} starting: node {id}",
            version=__version__,
            id=self.config.id,
        )
        super().startService()

    def stopService(self) -> Deferred[None]:
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        log.info("stopping: no new connections, finishing in-flight work")
        # twistd re-raises the signal that stopped the reactor once it is
        # done, so SIGTERM would end the process "killed by SIGTERM". Our
        # stop is graceful and complete: exit 0, as operators (and systemd's
        # Restart=on-failure) expect.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
        # The hit workers' loopback listener stays open while they finish.
        stops = [s.stop_listening() for s in self.listening_services() if s is not self.internal_service]
        if self.worker_pool is not None:
            stops.append(self.worker_pool.stop_listening())
        await DeferredList(stops, consumeErrors=True)
        # Downloads are abandoned at once (their readers cut, no new ones
        # start); responses in flight get STOP_GRACE_SECONDS to finish.
        await self.cache.begin_shutdown()
        drains = [s.site.drain(STOP_GRACE_SECONDS) for s in self.listening_services() if hasattr(s.site, "drain")]
        if self.worker_pool is not None:
            drains.append(self.worker_pool.drain(STOP_GRACE_SECONDS))
        await DeferredList(drains, consumeErrors=True)
        if self.internal_service is not None:
            await self.internal_service.stop_listening()
        await self.cache.stop(self.reactor, STOP_GRACE_SECONDS)
        await MultiService.stopService(self)
        log.info("stopped")


def timer(interval: float, fn: Any, clock: Any, name: str) -> TimerService:
    """A TimerService that logs (never propagates) a failing run."""

    def run() -> Any:
        d = ensureDeferred(_call(fn))
        d.addErrback(lambda f: log.failure("periodic task {name} failed", f, name=name))
        return d

    service = TimerService(interval, run)
    service.clock = clock
    service.setName(name)
    return service


async def _call(fn: Any) -> None:
    result = fn()
    if isinstance(result, Deferred) or hasattr(result, "__await__"):
        await result
