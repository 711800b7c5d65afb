"""Listening sockets shared by several processes (``SO_REUSEPORT``)."""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.error import CannotListenError


def _family(interface: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in interface else socket.AF_INET


def port_is_taken(interface: str, port: int) -> bool:
    """True when another socket already listens on ``interface:port``
    (checked with a plain bind: a ``SO_REUSEPORT`` bind would silently
    share the port with another node started by the same user)."""
    if port == 0:
        return False
    probe = socket.socket(_family(interface), socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, port))
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False


def listen_reuseport(reactor: Any, port: int, factory: Any, backlog: int, interface: str) -> Any:
    """Like ``reactor.listenTCP``, on a socket with ``SO_REUSEPORT`` set, so
    that other processes of this user may listen on the same port; the
    kernel spreads incoming connections over them."""
    family = _family(interface)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
        # The reactor takes its own copy of the descriptor.
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    except OSError as e:
        raise CannotListenError(interface, port, e) from None
    finally:
        sock.close()
