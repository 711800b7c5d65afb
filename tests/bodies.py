"""Small helpers shared by the storage client and simulator tests."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class Collect(Protocol):
    """Collects a body; ``done`` fires (never fails) when it ends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.done.callback(None)

    @property
    def clean(self) -> bool:
        """The body ended normally (not cut)."""
        return self.reason is not None and self.reason.check(ResponseDone) is not None
