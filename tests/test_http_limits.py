"""HTTP-level limits on an in-process node over real sockets: oversized and
too many headers, request bodies, slow-loris clients, pipelining, and
clients that never read what they asked for."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from .faultkit import Client, raw_exchange, sleep, vm_rss_kib
from .nodeharness import NodeHarness

SMALL = os.urandom(100_000)
HUGE = os.urandom(50 * 1024 * 1024)
PROXIED = os.urandom(32 * 1024 * 1024)
OBJECTS = {"1": SMALL, "2": b"two", "3": b"three", "50": HUGE, "60": PROXIED}


class HttpLimitTests(TestCase):
    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.client = Client()
        self.addCleanup(self.client.close)
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self.h.start(OBJECTS, **{"limits.maxCachedItemSize": "60M"}))

    @property
    def site(self) -> Any:
        return self.h.node.public_service.site  # type: ignore[union-attr]

    async def still_serving(self, what: str) -> None:
        outcome = await self.client.fetch(f"{self.h.public}/assets/2")
        self.assertEqual((outcome.code, outcome.body), (200, b"two"), f"the node serves on after {what}")

    async def _headers(self) -> None:
        port = self.h.public_port
        big = b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        self.assertTrue((await raw_exchange(port, big)).startswith(b"HTTP/1.1 400"), "a 20 KB header")
        many = b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n"
        self.assertTrue((await raw_exchange(port, many)).startswith(b"HTTP/1.1 400"), "500 headers")
        total = b"GET /api/v1/assets/2 HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 300) for i in range(80)) + b"\r\n"
        self.assertTrue((await raw_exchange(port, total)).startswith(b"HTTP/1.1 400"), "24 KB of headers")
        long_line = b"GET /api/v1/assets/" + b"2" * 70_000 + b" HTTP/1.1\r\n\r\n"
        self.assertTrue((await raw_exchange(port, long_line)).startswith(b"HTTP/1.1 400"), "a 70 KB request line")
        await self.still_serving("oversized heads")

    def test_oversized_and_too_many_headers(self) -> object:
        return ensureDeferred(self._headers())

    async def _bodies(self) -> None:
        port = self.h.public_port
        started = time.monotonic()
        # A declared gigabyte that never comes: refused at once, not spooled.
        answer = await raw_exchange(port, b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:80])
        self.assertLess(time.monotonic() - started, 3.0)
        chunk = b"8000\r\n" + b"z" * 0x8000 + b"\r\n"
        answer = await raw_exchange(port, b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 8)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:80])
        answer = await raw_exchange(port, b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"two"), "a small body is fine")
        await self.still_serving("large bodies")

    def test_request_bodies_are_bounded(self) -> object:
        return ensureDeferred(self._bodies())

    async def _slow_loris(self) -> None:
        self.site.head_timeout = 1.0
        port = self.h.public_port
        request = b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"

        def trickle() -> tuple[float, bytes]:
            started = time.monotonic()
            answer = b""
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                try:
                    for byte in request:
                        s.sendall(bytes([byte]))
                        time.sleep(0.1)
                        if time.monotonic() - started > 8:
                            break
                except (BrokenPipeError, ConnectionResetError):
                    pass
                try:
                    answer = s.recv(1000)
                except (ConnectionResetError, socket.timeout):
                    pass
            return time.monotonic() - started, answer

        slow = [deferToThread(trickle) for _ in range(5)]
        await sleep(0.3)
        for _ in range(3):
            await self.still_serving("slow-loris clients")  # others are unaffected meanwhile
        results = await DeferredList(slow, fireOnOneErrback=True)
        for _, (took, answer) in results:
            self.assertLess(took, 3.0, "a client that has not sent its request head within head_timeout is dropped")
            self.assertTrue(answer.startswith(b"HTTP/1.1 408") or answer == b"", answer[:60])
        self.assertEqual(len(self.site.channels), 0, "the slow clients' connections are gone")
        # A slow but complete request within the bound is served.
        answer = await raw_exchange(port, b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.endswith(b"two"))

    def test_slow_loris_clients_are_dropped(self) -> object:
        return ensureDeferred(self._slow_loris())

    async def _pipelined(self) -> None:
        requests = b"".join(
            [
                b"GET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /api/v1/assets/1 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n",
                b"GET /api/v1/assets/999 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"HEAD /api/v1/assets/3 HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /api/v1/assets/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ]
        )
        answer = await raw_exchange(self.h.public_port, requests)
        responses = _split_responses(answer, head_only={3})
        self.assertEqual([r[0] for r in responses], [200, 206, 404, 200, 200, 200], answer[:300])
        self.assertEqual(responses[0][1], b"two")
        self.assertEqual(responses[1][1], SMALL[:10])
        self.assertEqual(json.loads(responses[2][1])["type"], "not_found")
        self.assertEqual(responses[3][1], b"")
        self.assertIn(b"objectsInCache", responses[4][1])
        self.assertEqual(responses[5][1], b"three")

    def test_pipelined_requests_are_answered_in_order(self) -> object:
        return ensureDeferred(self._pipelined())

    async def _never_reads(self) -> None:
        assert self.h.node is not None
        warm = await self.client.fetch(f"{self.h.public}/assets/50")
        self.assertEqual(len(warm.body), len(HUGE))
        del warm
        await sleep(0.1)
        self.h.node.cache.send_timeout = 2.0
        rss_before = vm_rss_kib()
        sockets = []
        for _ in range(4):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            s.connect(("127.0.0.1", self.h.public_port))
            s.sendall(b"GET /api/v1/assets/50 HTTP/1.1\r\nHost: x\r\n\r\n")
            sockets.append(s)
        self.addCleanup(lambda: [s.close() for s in sockets])
        await sleep(0.5)
        self.assertEqual(self.h.node.cache.in_use.get("50"), 4, "four readers are paused on the object")
        started = time.monotonic()
        for _ in range(3):
            other = await self.client.fetch(f"{self.h.public}/assets/1")
            self.assertEqual(other.body, SMALL, "other clients are unaffected")
        self.assertLess(time.monotonic() - started, 2.0)
        growth = vm_rss_kib() - rss_before
        self.assertLess(growth, 16 * 1024, f"node memory stays bounded ({growth} KiB more for 4 x 50 MiB unread)")
        await sleep(2.5)
        self.assertEqual(self.h.node.cache.in_use.get("50"), None, "clients that read nothing are dropped")
        self.assertLessEqual(len(self.site.channels), 1)

    def test_clients_that_never_read_are_bounded_then_dropped(self) -> object:
        return ensureDeferred(self._never_reads())

    async def _proxy_never_reads(self) -> None:
        assert self.h.node is not None
        self.h.node.assets.max_cached_item_size = 1000
        self.h.node.cache.send_timeout = 2.0
        client = self.h.node.assets.client
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        s.connect(("127.0.0.1", self.h.public_port))
        self.addCleanup(s.close)
        s.sendall(b"GET /api/v1/assets/60 HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(1.0)
        sent = sum(sim.sim.bytes_sent for sim in self.h.sims)
        # Socket buffers on the two hops hold several MiB; the rest waits.
        self.assertLess(sent, len(PROXIED) * 3 // 4, "the storage node is paused with the client (backpressure)")
        self.assertGreaterEqual(_active(client), 1)
        await sleep(2.0)
        self.assertEqual(_active(client), 0, "the upstream connection slot is given back once the client is dropped")

    def test_a_proxied_client_that_never_reads_frees_its_upstream(self) -> object:
        return ensureDeferred(self._proxy_never_reads())


def _active(client: Any) -> int:
    inner = getattr(client, "_inner", None) or getattr(client, "inner", None) or client
    return int(inner.active_requests)


def _split_responses(data: bytes, head_only: set[int]) -> list[tuple[int, bytes]]:
    """Parse consecutive HTTP/1.1 responses (content-length or chunked)."""
    out = []
    index = 0
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if index in head_only:
            body, data = b"", rest
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body += rest[:size]
                rest = rest[size + 2 :]
                if size == 0:
                    break
            data = rest
        else:
            length = int(headers.get(b"content-length", b"0"))
            body, data = rest[:length], rest[length:]
        out.append((status, body))
        index += 1
    return out
