"""Sending a cached body with ``sendfile(2)``: the kernel copies it from the
page cache to the socket, with no read into Python, no join with the
headers and no copy through user space (nginx's ``sendfile on``).

Twisted's TCP transport buffers what it is given and has no sendfile of its
own, so this only runs when the transport's buffer is empty: the response
headers are written through twisted.web and flushed, then the body goes
straight to the socket (``TCP_CORK`` around both, so the headers and the
first bytes of the body share a segment). It sends what the socket takes
now; the caller streams the rest the usual way, after these bytes (the
transport's buffer is empty, so the order on the wire is kept). Whenever
the transport is not a plain TCP connection, or its buffer is not empty,
nothing is sent and the caller serves the body as before.
"""

from __future__ import annotations

import os
import socket
from typing import Any, BinaryIO

from twisted.internet.tcp import Connection
from twisted.logger import Logger

log = Logger()

#: Bodies below this are cheaper to read and write in one go.
MIN_BYTES = 16 * 1024

#: ``send_body`` could not start: nothing was written.
NOT_STARTED = -1
#: ``send_body`` found the connection broken: it was aborted.
BROKEN = -2

_CORK = getattr(socket, "TCP_CORK", None)

#: ``JSDISTRIBUTOR_SENDFILE=0`` turns it off (nginx's ``sendfile off``: for
#: file systems where sendfile misbehaves, and for comparing).
ENABLED = os.environ.get("JSDISTRIBUTOR_SENDFILE", "1") != "0"


def _idle(transport: Any) -> bool:
    """Nothing of ours is waiting in the transport's buffer (private state
    of ``twisted.internet.abstract.FileDescriptor``; False if it changed)."""
    try:
        return bool(
            transport.connected
            and not transport.disconnecting
            and transport.offset == len(transport.dataBuffer)
            and not transport._tempDataLen
        )
    except AttributeError:
        return False


def _cork(sock: Any, on: bool) -> None:
    if _CORK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1 if on else 0)
        except OSError:
            pass


def usable(request: Any) -> bool:
    """Whether ``send_body`` can work on this request's connection now."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    return (
        ENABLED
        and hasattr(os, "sendfile")
        and isinstance(transport, Connection)
        and request.method != b"HEAD"
        and not request.startedWriting
        and _idle(transport)
    )


def send_body(request: Any, f: BinaryIO, start: int, end: int) -> int:
    """Write the response headers, then bytes ``[start, end)`` of ``f``
    with sendfile, as far as the socket takes them now.

    Returns how many body bytes were sent (the caller sends the rest, or
    finishes the request when that is all); ``NOT_STARTED`` (only when
    ``usable(request)`` is false: nothing was written); ``BROKEN`` (the
    connection failed and was aborted). A file that ends before ``end``
    returns what was sent: the caller's reader then finds it short.
    """
    if not usable(request):
        return NOT_STARTED
    transport = request.channel.transport
    sock = transport.socket
    _cork(sock, True)
    try:
        request.write(b"")  # the status line and headers, into the transport's buffer
        failed = transport.doWrite()  # ... and onto the socket
        if failed is not None:
            transport.abortConnection()
            return BROKEN
        if not _idle(transport):
            return 0  # the socket is full already: the rest goes the usual way
        sent = 0
        out, source = transport.fileno(), f.fileno()
        while start + sent < end:
            try:
                n = os.sendfile(out, source, start + sent, end - start - sent)
            except BlockingIOError:
                break
            except OSError as e:
                log.debug("sendfile failed: {error}", error=e)
                transport.abortConnection()
                return BROKEN
            if n == 0:
                break  # end of file
            sent += n
    finally:
        _cork(sock, False)
    if hasattr(request, "bytes_sent"):
        request.bytes_sent += sent
    return sent
