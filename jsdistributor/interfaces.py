"""The seams of the node: tests swap real parts for in-memory ones here."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMetadataSource(Interface):
    """What the network says about objects and buckets.

    Every method returns a Deferred. Failures (HTTP errors, GraphQL errors,
    timeouts, garbage) fail the Deferred with
    ``jsdistributor.errors.MetadataUnavailable`` within the configured
    timeout; nothing hangs.
    """

    url = Attribute("str: where the metadata comes from (for /status and logs)")

    def get_object(object_id):  # type: ignore[no-untyped-def]
        """Deferred[DataObject | None]: ``None`` if the object does not exist."""

    def list_bucket_objects(selection):  # type: ignore[no-untyped-def]
        """Deferred[dict[str, ObjectSummary]]: every object in the buckets
        ``selection`` (a ``BucketSelection``) serves, fetched in batches."""

    def get_storage_endpoints():  # type: ignore[no-untyped-def]
        """Deferred[list[StorageEndpoint]]: active storage operators' API roots."""

    def get_status():  # type: ignore[no-untyped-def]
        """Deferred[MetadataStatus]; never fails (unreachable is a status)."""


class IStorageClient(Interface):
    """HTTP client of storage nodes ("Colossus"): raw bytes, no decoding,
    no redirects. ``endpoint`` is a ``StorageEndpoint``."""

    def head_object(endpoint, object_id):  # type: ignore[no-untyped-def]
        """Deferred[bool]: the node answers 200 to ``HEAD /files/{id}``."""

    def get_object(endpoint, object_id, offset=0, end=None):  # type: ignore[no-untyped-def]
        """Deferred[twisted.web.iweb.IResponse] for ``GET /files/{id}``, with
        ``Range: bytes=offset-[end]`` when ``offset`` or ``end`` is given. The
        body is not read: call ``response.deliverBody(protocol)``; the
        transport given to the protocol can be paused/resumed/stopped."""

    def probe(endpoint):  # type: ignore[no-untyped-def]
        """Deferred[float]: seconds ``GET /version`` took; fails on error."""


class ITempObject(Interface):
    """An object being written; invisible to readers of the store until
    ``commit``."""

    path = Attribute("twisted.python.filepath.FilePath of the temporary file")

    def write(data):  # type: ignore[no-untyped-def]
        """Append bytes; may raise ``OSError`` (ENOSPC, EIO...)."""

    def commit():  # type: ignore[no-untyped-def]
        """Flush, fsync and rename into place: the object becomes complete."""

    def discard():  # type: ignore[no-untyped-def]
        """Close and delete the temporary file (idempotent)."""


class IContentStore(Interface):
    """One file per object id under the assets directory.

    Every method validates ``object_id`` (1-20 decimal digits) before any
    path is built and raises ``ValueError`` otherwise.
    """

    def path_of(object_id):  # type: ignore[no-untyped-def]
        """FilePath of the complete object (may not exist)."""

    def file_name(object_id):  # type: ignore[no-untyped-def]
        """``path_of(object_id).path``, as cheaply as possible (the hit path)."""

    def size_of(object_id):  # type: ignore[no-untyped-def]
        """int size of the complete object, or None if absent."""

    def open_temp(object_id):  # type: ignore[no-untyped-def]
        """A new ``ITempObject`` for ``object_id``."""

    def remove(object_id):  # type: ignore[no-untyped-def]
        """Delete the complete object if present."""

    def list_objects():  # type: ignore[no-untyped-def]
        """dict[str, int]: id -> size of every complete object on disk."""

    def remove_temporaries():  # type: ignore[no-untyped-def]
        """Delete leftover temporary files (after a crash); returns count."""


class IEvictionPolicy(Interface):
    """Orders cached objects for eviction. Pure bookkeeping, no I/O;
    ``now`` is seconds (float) from the injected clock."""

    def add(object_id, size, now, popularity=1):  # type: ignore[no-untyped-def]
        """Track a newly cached object."""

    def access(object_id, now, times=1):  # type: ignore[no-untyped-def]
        """Record ``times`` accesses (popularity += times, last access = now)."""

    def remove(object_id):  # type: ignore[no-untyped-def]
        """Stop tracking (idempotent)."""

    def pop_victim(now, in_use):  # type: ignore[no-untyped-def]
        """Remove and return the id of the object least worth keeping that
        is not ``in_use(id)``, or None if every object is in use."""

    def entries():  # type: ignore[no-untyped-def]
        """Iterable of ``CacheEntry`` for saving state."""
