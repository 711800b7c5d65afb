"""AccessLoggingSite in memory: one access event per request (aborted ones
included), bounded request heads, open connections, metrics fed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from jsdistributor.httputil import AccessLoggingSite, loggable_path
from jsdistributor.metrics import NodeMetrics


class _Leaf(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"x-cache", b"hit")
        if request.path == b"/slow":
            request.write(b"part")
            self.held.append(request)
            return NOT_DONE_YET
        if request.path == b"/nothing-yet":
            self.held.append(request)
            return NOT_DONE_YET
        return b"hello"


class AccessLoggingSiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = NodeMetrics()
        self.leaf = _Leaf()
        self.site = AccessLoggingSite(self.leaf, self.clock, "public", metrics=self.metrics)
        self.events: list[dict[str, Any]] = []
        self.open: list[Any] = []
        self.addCleanup(lambda: [self.lose(p) for p in list(self.open)])

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "jsdistributor.access":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5555))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555))
        protocol.makeConnection(transport)
        self.open.append(protocol)
        return protocol, transport

    def lose(self, protocol: Any, why: str = "closed") -> None:
        self.open.remove(protocol)
        protocol.connectionLost(Failure(ConnectionError(why)))

    def test_one_event_per_request(self) -> None:
        protocol, transport = self.connect()
        self.assertEqual(self.site.connections, 1)
        self.clock.advance(0.25)
        protocol.dataReceived(b"GET /fast?token=abc HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", transport.value())
        self.assertEqual(len(self.events), 1)
        e = self.events[0]
        self.assertEqual(
            {k: e[k] for k in ("api", "client", "method", "path", "status", "bytes", "cache", "aborted")},
            {"api": "public", "client": "192.0.2.7", "method": "GET", "path": "/fast?token=***", "status": 200,
             "bytes": 5, "cache": "hit", "aborted": False},
        )
        self.lose(protocol, "bye")
        self.assertEqual(self.site.connections, 0)
        self.assertEqual(len(self.events), 1, "a finished request is not logged again")

    def test_aborted_mid_body(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.events, [])
        self.clock.advance(2)
        self.lose(protocol, "viewer left")
        self.assertEqual(len(self.events), 1)
        e = self.events[0]
        self.assertEqual((e["status"], e["bytes"], e["aborted"], e["duration"]), (200, 4, True, 2000.0))
        text = self.metrics.render()[0].decode()
        self.assertIn('jsdistributor_served_bytes_total{x_cache="hit"} 4.0', text)

    def test_aborted_before_any_response_is_499(self) -> None:
        protocol, _ = self.connect()
        protocol.dataReceived(b"GET /nothing-yet HTTP/1.1\r\nHost: x\r\n\r\n")
        self.lose(protocol, "gone")
        self.assertEqual((self.events[0]["status"], self.events[0]["aborted"]), (499, True))

    def test_timeouts_on_the_injected_clock(self) -> None:
        """The channel's timers run on the site's clock, never the global
        reactor: an idle connection is closed when the Clock says so."""
        from twisted.internet import reactor

        before = set(reactor.getDelayedCalls())
        _, transport = self.connect()
        self.assertEqual(set(reactor.getDelayedCalls()), before)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(61)
        self.assertTrue(transport.disconnecting, "an idle connection is closed after the site's timeout")

    def test_request_heads_are_bounded(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /fast HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n")
        self.assertRegex(transport.value()[:12], rb"^HTTP/1.1 4[0-9][0-9]$", "too many headers")
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /fast HTTP/1.1\r\n" + (b"X-Big: " + b"a" * 500 + b"\r\n") * 40 + b"\r\n")
        self.assertRegex(transport.value()[:12], rb"^HTTP/1.1 4[0-9][0-9]$", "headers too large")
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"hello", transport.value(), "the route never ran")


class LoggablePathTests(SynchronousTestCase):
    def test_masks_secret_parameters(self) -> None:
        self.assertEqual(loggable_path(b"/a?b=1&Token=x&secret=y&k"), "/a?b=1&Token=***&secret=***&k")
        self.assertEqual(loggable_path(b"/plain"), "/plain")
        self.assertEqual(len(loggable_path(b"/" + b"x" * 2000)), 512)

    @settings(deadline=None, max_examples=200)
    @given(st.binary(max_size=200), st.text(alphabet="abcdefghijklmnop0123456789", min_size=8, max_size=20))
    def test_a_token_value_never_logged(self, prefix: bytes, value: str) -> None:
        uri = b"/p?" + prefix.replace(b"?", b"").replace(b"&", b"") + b"&token=" + value.encode()
        self.assertNotIn("token=" + value, loggable_path(uri))
