"""Cached bodies sent with sendfile(2) (``jsdistributor/sendfile.py``): the
bytes are the object's, the headers come first, a client whose socket is
full gets the rest through the usual reader, and anything that is not a
plain TCP connection with an empty buffer never takes this path."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from jsdistributor import sendfile

from .nodeharness import NodeHarness, header, sleep

BIG = os.urandom(3_000_000)
SMALLISH = os.urandom(8_000)
OBJECTS = {"1": BIG, "2": SMALLISH}


def read_response(port: int, request: bytes, rcvbuf: int | None = None, pause: float = 0.0) -> tuple[bytes, bytes]:
    """One request on a new blocking socket: ``(head, body)`` read until
    the declared length. ``rcvbuf`` shrinks the receive buffer (the node's
    socket then fills up); ``pause`` waits before reading anything."""
    import time

    with socket.socket() as s:
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(20)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        time.sleep(pause)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before the headers: {data!r}")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            body += chunk
        return head, body


class SendfileServingTests(TestCase):
    timeout = 60

    def setUp(self) -> object:
        self.calls: list[tuple[int, int]] = []  # (asked, sent)
        real = os.sendfile

        def counting(out: int, source: int, offset: int, count: int) -> int:
            sent = real(out, source, offset, count)
            self.calls.append((count, sent))
            return sent

        self.patch(sendfile.os, "sendfile", counting)
        self.h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        await self.h.start(OBJECTS)
        for object_id, data in OBJECTS.items():
            response, body = await self.h.get(f"/assets/{object_id}")
            self.assertEqual(body, data)
        await sleep(0.1)
        self.calls.clear()

    async def _whole_and_ranges(self) -> None:
        response, body = await self.h.get("/assets/1")
        self.assertEqual((response.code, header(response, "x-cache")), (200, "hit"))
        self.assertEqual(body, BIG, "the whole body, byte for byte")
        self.assertTrue(self.calls, "a cached 3 MB body goes out with sendfile")
        self.calls.clear()
        response, body = await self.h.get("/assets/1", {"range": "bytes=1000-2000999"})
        self.assertEqual((response.code, header(response, "content-range")), (206, "bytes 1000-2000999/3000000"))
        self.assertEqual(body, BIG[1000:2001000])
        self.assertEqual(self.calls[0][0], 2_000_000, "sendfile is asked for the range, from its start")
        self.calls.clear()
        response, body = await self.h.get("/assets/1", method="HEAD")
        self.assertEqual((response.code, header(response, "content-length"), body), (200, "3000000", b""))
        response, body = await self.h.get("/assets/2")
        self.assertEqual(body, SMALLISH)
        self.assertEqual(self.calls, [], "HEAD and bodies under sendfile.MIN_BYTES take the usual path")

    def test_whole_bodies_and_ranges(self) -> object:
        return ensureDeferred(self._whole_and_ranges())

    async def _full_socket(self) -> None:
        # A client with a tiny receive buffer that waits before reading:
        # sendfile sends what fits, the reader sends the rest after it.
        head, body = await deferToThread(
            read_response, self.h.public_port, b"GET /api/v1/assets/1 HTTP/1.1\r\nHost: x\r\n\r\n", 4096, 0.3
        )
        self.assertIn(b"x-cache: hit", head.lower())
        self.assertEqual(len(body), len(BIG))
        self.assertEqual(body, BIG, "the bytes after a partial sendfile follow in order")
        self.assertTrue(self.calls, "sendfile was used")
        self.assertLess(sum(sent for _, sent in self.calls), len(BIG), "the socket filled up: sendfile sent part")

    def test_a_full_socket_gets_the_rest_from_the_reader(self) -> object:
        return ensureDeferred(self._full_socket())

    async def _keep_alive(self) -> None:
        # Two requests on one connection: the second response's headers
        # come after the first body, wherever its bytes came from.
        def two() -> bytes:
            with socket.create_connection(("127.0.0.1", self.h.public_port), timeout=20) as s:
                s.sendall(b"GET /api/v1/assets/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/assets/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                chunks = []
                while data := s.recv(1 << 20):
                    chunks.append(data)
                return b"".join(chunks)

        raw = await deferToThread(two)
        first_head, rest = raw.split(b"\r\n\r\n", 1)
        self.assertTrue(first_head.startswith(b"HTTP/1.1 200"), first_head)
        self.assertEqual(rest[: len(BIG)], BIG)
        second_head, second_body = rest[len(BIG) :].split(b"\r\n\r\n", 1)
        self.assertTrue(second_head.startswith(b"HTTP/1.1 200"), second_head)
        self.assertEqual(second_body, SMALLISH)

    def test_pipelined_requests_stay_in_order(self) -> object:
        return ensureDeferred(self._keep_alive())


class UsableTests(TestCase):
    def test_not_a_tcp_connection(self) -> None:
        request = DummyRequest([b""])
        self.assertFalse(sendfile.usable(request))
        self.assertEqual(sendfile.send_body(request, None, 0, 10), sendfile.NOT_STARTED)  # type: ignore[arg-type]
        self.assertEqual(request.written, [], "nothing written when sendfile cannot start")

    def test_busy_or_head(self) -> None:
        from twisted.internet.tcp import Connection

        class FakeTcp(Connection):  # the attributes sendfile looks at, no socket
            def __init__(self) -> None:
                self.connected = True
                self.disconnecting = False
                self.dataBuffer = b""
                self.offset = 0
                self._tempDataLen = 0

        class Channel:
            transport: Any = FakeTcp()

        request: Any = DummyRequest([b""])
        request.channel = Channel()
        request.startedWriting = False
        self.assertTrue(sendfile.usable(request))
        Channel.transport._tempDataLen = 10
        self.assertFalse(sendfile.usable(request), "data waiting in the transport's buffer")
        Channel.transport._tempDataLen = 0
        Channel.transport.dataBuffer, Channel.transport.offset = b"abc", 1
        self.assertFalse(sendfile.usable(request), "a partly sent buffer")
        Channel.transport.dataBuffer, Channel.transport.offset = b"", 0
        request.method = b"HEAD"
        self.assertFalse(sendfile.usable(request), "HEAD has no body")
        request.method = b"GET"
        request.startedWriting = True
        self.assertFalse(sendfile.usable(request), "headers already written")
        request.startedWriting = False
        del Channel.transport._tempDataLen
        self.assertFalse(sendfile.usable(request), "a Twisted whose transport looks different")
