"""The AMP commands between the primary and its hit workers.

Worker -> primary: ``Lookup`` (is this object a hit, and its size, type and
hash) and ``Report`` (accesses for the eviction policy, and request counts
for the metrics, every second). Primary -> worker: ``Forget`` (objects that
left the cache), ``Listen`` / ``StopListening`` (the operator's start-api /
stop-api), ``Drain`` (shutdown: finish the responses in flight) and
``Exit``.
"""

from __future__ import annotations

from twisted.protocols.amp import AmpList, Boolean, Command, Float, Integer, ListOf, Unicode

#: AMP values are at most 64 KiB: ids and counts travel in batches of this many.
BATCH = 500


class CannotListen(Exception):
    """A worker could not bind the public port."""


class Lookup(Command):
    arguments = [(b"objectId", Unicode())]
    response = [
        (b"found", Boolean()),
        (b"size", Integer()),
        (b"mimeType", Unicode()),
        (b"ipfsHash", Unicode()),
    ]


class Report(Command):
    arguments = [
        (b"accessed", AmpList([(b"objectId", Unicode()), (b"count", Integer())])),
        (
            b"requests",
            AmpList(
                [
                    (b"route", Unicode()),
                    (b"status", Integer()),
                    (b"cache", Unicode()),
                    (b"count", Integer()),
                    (b"sent", Integer()),
                ]
            ),
        ),
    ]
    requiresAnswer = False


class Forget(Command):
    arguments = [(b"objectIds", ListOf(Unicode())), (b"everything", Boolean())]
    requiresAnswer = False


class Listen(Command):
    arguments = [(b"port", Integer())]
    response = [(b"port", Integer())]
    errors = {CannotListen: b"CANNOT_LISTEN"}


class StopListening(Command):
    arguments: list[tuple[bytes, object]] = []
    response: list[tuple[bytes, object]] = []


class Drain(Command):
    arguments = [(b"grace", Float())]
    response: list[tuple[bytes, object]] = []


class Exit(Command):
    arguments: list[tuple[bytes, object]] = []
    requiresAnswer = False
