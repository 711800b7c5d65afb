"""Helpers shared by the fault, hostile-input and HTTP-limit tests: a client
that tells a complete body from a cut one, raw socket conversations, and
ways to steer an in-process node (which storage node it prefers)."""

from __future__ import annotations

import socket
import time
from typing import Any

from attrs import define
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers


@define
class Outcome:
    """One GET as the viewer saw it. ``code`` is None when the connection
    went before any response head; ``complete`` is True only when the body
    reached its announced ``content-length`` and the response ended cleanly."""

    code: int | None
    headers: Headers | None
    body: bytes
    complete: bool
    error: str | None = None
    #: The announced ``content-length`` (twisted's client moves it out of
    #: the headers), None if there was none.
    length: int | None = None

    def header(self, name: str) -> str | None:
        if name.lower() == "content-length":
            return None if self.length is None else str(self.length)
        if self.headers is None:
            return None
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class _Collect(Protocol):
    def __init__(self, done: Deferred[tuple[bytes, Failure]]) -> None:
        self._done = done
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._done.callback((b"".join(self._chunks), reason))


class Client:
    """A non-persistent HTTP client; close with ``close()``."""

    def __init__(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=10)

    async def fetch(
        self, url: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None
    ) -> Outcome:
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        h = Headers({k.encode(): [v.encode("latin-1")] for k, v in (headers or {}).items()})
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        try:
            response = await self.agent.request(method.encode(), url.encode(), h, producer)
        except Exception as e:  # aborted before the head: the viewer sees an error
            return Outcome(None, None, b"", False, f"{type(e).__name__}: {e}")
        done: Deferred[tuple[bytes, Failure]] = Deferred()
        response.deliverBody(_Collect(done))
        data, reason = await done
        from twisted.web.iweb import UNKNOWN_LENGTH

        complete = bool(reason.check(ResponseDone))
        length = None if response.length is UNKNOWN_LENGTH else int(response.length)
        if complete and length is not None and length != len(data) and method != "HEAD":
            complete = False
        error = None if complete else reason.getErrorMessage()
        return Outcome(response.code, response.headers, data, complete, error, length)

    def close(self) -> Deferred[None]:
        return self.pool.closeCachedConnections()


def assert_never_complete_and_wrong(test: Any, outcome: Outcome, expected: bytes, what: str) -> None:
    """The integrity promise: a 200 body with the full length is the object;
    anything else must be visibly cut (or an error status)."""
    if outcome.code == 200 and outcome.complete:
        test.assertEqual(len(outcome.body), len(expected), what)
        test.assertTrue(outcome.body == expected, f"{what}: a complete-looking 200 body differs from the object")
    elif outcome.code in (200, 206):
        test.assertFalse(outcome.complete, f"{what}: a {outcome.code} was not complete and not cut?")


def prefer(node: Any, url: str, others: list[str]) -> None:
    """Make ``url`` the best-ranked storage node (as if it answered probes
    fastest), so a fault on it is the one the node meets first."""
    times = node.components.storage.response_times
    for _ in range(times.window):
        times.record(url, 0.001)
        for other in others:
            times.record(other, 0.5)


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, half_close: bool = False) -> Deferred[bytes]:
    """Send ``data`` on a fresh connection (in a thread) and return every
    byte received until the node closes (or ``timeout``)."""

    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except (socket.timeout, ConnectionResetError):
                pass
            return b"".join(chunks)

    return deferToThread(talk)


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def vm_rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
