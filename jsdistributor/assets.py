"""GET/HEAD /api/v1/assets/{objectId}: from disk, from a pending download,
by starting a download, or by proxying; with ranges, validators and exact
errors.

Ranges on a pending download: a range that starts within
``PROXY_AHEAD_BYTES`` of the downloaded part follows the download (served
from disk as bytes land); one that starts further ahead is proxied from the
source storage node with its own Range request (``x-data-source:
external``), because waiting for the download to reach it would cost the
viewer far more time to first byte than one more upstream request.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Callable, Coroutine

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from . import sendfile
from .cache.manager import CacheManager
from .cache.pending import DownloadFailed, PendingDownload, range_start as _range_start
from .cache.readers import StreamReader
from .errors import ApiError, MetadataUnavailable, StorageError
from .model import DataObject, is_valid_object_id
from .proxy import ProxyFailed, ProxyStream
from .ranges import ByteRange, Unsatisfiable, etag_for, if_range_allows, none_match, parse_range

log = Logger()

CACHE_HIT = b"max-age=31536000"
CACHE_PENDING = b"max-age=180, must-revalidate"
DEFAULT_MIME = "application/octet-stream"
#: Cached bodies (or ranges) up to this size are read and written at once
#: instead of streamed by a reader; a connection holds at most this much
#: of them in memory (a reader holds a chunk plus the transport's buffer).
SMALL_BODY_BYTES = 128 * 1024
#: Ranges starting further than this past the downloaded bytes are proxied.
PROXY_AHEAD_BYTES = 8 * 1024 * 1024


def _abort_for(request: Any) -> Callable[[], None]:
    def abort() -> None:
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            transport.abortConnection()

    return abort


class AssetServer:
    def __init__(
        self,
        reactor: Any,
        cache: CacheManager,
        metadata: Any,
        selection: Any,
        storage: Any,
        client: Any,
        max_cached_item_size: int | None,
    ) -> None:
        self.reactor = reactor
        self.cache = cache
        self.metadata = metadata
        self.selection = selection
        self.storage = storage
        self.client = client
        self.max_cached_item_size = max_cached_item_size

    def render(self, request: Any, object_id: str) -> Any:
        if not is_valid_object_id(object_id):
            raise ApiError(400, "invalid_object_id", "object id must be 1 to 20 decimal digits")
        return ensureDeferred(self._serve(request, object_id))

    # -- deciding ------------------------------------------------------------

    async def _serve(self, request: Any, object_id: str) -> bytes | None:
        local = self._serve_local(request, object_id)
        if local is not None:
            return await local
        obj = await self._lookup(object_id)
        # The world may have moved while we waited for the metadata.
        local = self._serve_local(request, object_id)
        if local is not None:
            return await local
        if request.method == b"HEAD":
            mime = obj.mime_type or DEFAULT_MIME
            return self._head_only(request, obj, mime)
        if self.cache.closing:
            raise ApiError(503, "shutting_down", "the node is shutting down")
        cacheable = self.max_cached_item_size is None or obj.size <= self.max_cached_item_size
        if cacheable and self.cache.reserve(obj.size):
            try:
                pending = self.cache.start_download(obj)
            except OSError as e:
                self.cache.reserved -= obj.size
                log.error("cannot start a download of {objectId}: {error}", objectId=object_id, error=e)
                raise ApiError(503, "storage_error", "the node cannot write to its cache right now") from None
            return await self._serve_pending(request, pending, b"miss")
        return await self._serve_proxy(request, obj, b"miss")

    def _serve_local(self, request: Any, object_id: str) -> Coroutine[Any, Any, bytes | None] | None:
        """Serving from the cache or from a download in progress, or None
        when neither has the object. A cached object whose file is missing
        or of the wrong size is forgotten here (served as a miss)."""
        entry = self.cache.cached(object_id)
        if entry is not None:
            opened = self.cache.open_verified(object_id)
            if opened is not None:
                return self._serve_cached(request, object_id, entry, opened)
        pending = self.cache.pending_for(object_id)
        if pending is not None:
            return self._serve_pending(request, pending, b"pending")
        return None

    async def _lookup(self, object_id: str) -> DataObject:
        try:
            obj = await self.metadata.get_object(object_id)
        except MetadataUnavailable as e:
            raise ApiError(503, "metadata_unavailable", f"the metadata service cannot be reached: {e}") from None
        if obj is None:
            raise ApiError(404, "not_found", f"data object {object_id} does not exist")
        if not obj.is_accepted:
            raise ApiError(404, "not_uploaded", f"data object {object_id} has not been uploaded yet")
        if not self.selection.supports(obj):
            raise ApiError(421, "not_supported", f"data object {object_id} is not distributed by this node")
        return obj

    # -- headers ---------------------------------------------------------------

    def _plan(self, request: Any, size: int, etag: str | None) -> ByteRange | None | int:
        """The range to send, None for the whole object, or a status (304/416)."""
        if none_match(request.getHeader(b"if-none-match"), etag):
            return 304
        if not if_range_allows(request.getHeader(b"if-range"), etag):
            return None
        try:
            return parse_range(request.getHeader(b"range"), size)
        except Unsatisfiable:
            return 416

    def _headers(
        self, request: Any, mime: str, etag: str | None, cache: bytes, source: bytes, cache_control: bytes
    ) -> None:
        request.setHeader(b"content-type", mime.encode("latin-1", "replace"))
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"content-disposition", b"inline")
        request.setHeader(b"cache-control", cache_control)
        request.setHeader(b"x-cache", cache)
        request.setHeader(b"x-data-source", source)
        if etag is not None:
            request.setHeader(b"etag", etag.encode("latin-1", "replace"))

    def _start_body(self, request: Any, plan: ByteRange | None, size: int) -> tuple[int, int] | None:
        """Status and length headers; the ``[start, end)`` to send, or None
        when nothing is to be sent (HEAD)."""
        if plan is None:
            request.setResponseCode(200)
            start, end = 0, size
        else:
            request.setResponseCode(206)
            request.setHeader(b"content-range", plan.content_range().encode("ascii"))
            start, end = plan.start, plan.end
        request.setHeader(b"content-length", str(end - start).encode("ascii"))
        if request.method == b"HEAD":
            return None
        return start, end

    def _short_answer(self, request: Any, status: int, size: int) -> bytes:
        request.setResponseCode(status)
        if status == 416:
            request.setHeader(b"content-range", f"bytes */{size}".encode("ascii"))
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            body = ApiError(416, "range_not_satisfiable", f"the object has {size} bytes").body()
            request.setHeader(b"content-length", str(len(body)).encode("ascii"))
            return body
        request.responseHeaders.removeHeader(b"content-type")
        return b""

    # -- cached ----------------------------------------------------------------

    async def _serve_cached(self, request: Any, object_id: str, entry: Any, opened: BinaryIO) -> bytes | None:
        begun = self._begin_cached(request, object_id, entry, opened)
        if isinstance(begun, bytes):
            return begun
        return await self._stream(request, begun.start(), begun.stopProducing)

    def _begin_cached(self, request: Any, object_id: str, entry: Any, opened: BinaryIO) -> bytes | StreamReader:
        """Headers of a hit, and either the whole (empty) body or the reader
        to start."""
        etag = etag_for(entry.ipfs_hash) if entry.ipfs_hash else None
        self._headers(request, entry.mime_type or DEFAULT_MIME, etag, b"hit", b"local", CACHE_HIT)
        plan = self._plan(request, entry.size, etag)
        if isinstance(plan, int):
            opened.close()
            return self._short_answer(request, plan, entry.size)
        self.cache.touch(object_id)
        window = self._start_body(request, plan, entry.size)
        if window is None:
            opened.close()
            return b""
        start, end = window
        if end - start >= sendfile.MIN_BYTES:
            sent = sendfile.send_body(request, opened, start, end)  # NOT_STARTED when it cannot
            if sent == sendfile.BROKEN or start + sent >= end:
                # All sent (or the connection is gone): twisted.web only
                # has to finish the response.
                opened.close()
                return b""
            start += max(sent, 0)
        if end - start <= SMALL_BODY_BYTES:
            return self._small_body(request, object_id, opened, start, end)
        return self.cache.reader(request, object_id, start, end, _abort_for(request), opened=opened)

    def _small_body(self, request: Any, object_id: str, opened: BinaryIO, start: int, end: int) -> bytes:
        """A body of at most ``SMALL_BODY_BYTES``: one read, one write (no
        producer, no pause/resume round trips: about a third more hits per
        second on 100 KiB objects)."""
        try:
            opened.seek(start)
            data = opened.read(end - start)
        except OSError as e:
            log.error("reading cached object {objectId} failed: {error}", objectId=object_id, error=e)
            data = b""
        finally:
            opened.close()
        if len(data) != end - start:
            # Shorter than its entry: never let it look complete.
            log.warn("cached object {objectId} is shorter than expected: cutting the response", objectId=object_id)
            _abort_for(request)()
            return b""
        return data

    def render_hit(self, request: Any, object_id: str) -> bytes | int | None:
        """The hot path: a cached object served straight from twisted.web
        (no routing framework, no coroutine, no Deferred chain to Klein).
        None when ``object_id`` (already validated) is not a servable hit:
        the caller then takes the general path."""
        entry = self.cache.cached(object_id)
        if entry is None:
            return None
        opened = self.cache.open_verified(object_id)
        if opened is None:
            return None
        begun = self._begin_cached(request, object_id, entry, opened)
        if isinstance(begun, bytes):
            return begun
        gone = []

        def finish(_: object) -> None:
            if not gone and not request.finished:
                request.finish()

        def lost(_: object) -> None:
            gone.append(True)
            begun.stopProducing()

        request.notifyFinish().addErrback(lost)
        # An aborted reader already cut the connection: nothing to finish.
        begun.start().addCallbacks(finish, lambda f: None)
        return NOT_DONE_YET

    # -- pending ---------------------------------------------------------------

    async def _serve_pending(self, request: Any, pending: PendingDownload, cache: bytes) -> bytes | None:
        obj = pending.obj
        if request.method != b"HEAD" and not pending.first_byte.called:
            waiting = pending.first_byte
            try:
                await _shielded(waiting)
            except DownloadFailed as e:
                raise ApiError(502, "download_failed", f"the object could not be fetched: {e}") from None
        etag = etag_for(obj.ipfs_hash)
        mime = pending.content_type or obj.mime_type or DEFAULT_MIME
        if pending.head_bytes:
            from .cache.mime import detect_mime

            detected = detect_mime(pending.head_bytes)
            if detected != DEFAULT_MIME:
                mime = detected
        plan = self._plan(request, obj.size, etag)
        if isinstance(plan, int):
            self._headers(request, mime, etag, cache, b"local", CACHE_PENDING)
            return self._short_answer(request, plan, obj.size)
        if plan is not None and plan.start > pending.written + PROXY_AHEAD_BYTES and pending.source is not None:
            return await self._serve_proxy(request, obj, cache, plan=plan)
        if pending.failed and request.method != b"HEAD":
            # Before any header: the error's body must not inherit the
            # object's content-length.
            raise ApiError(502, "download_failed", f"the object could not be fetched: {pending.failure_reason}")
        self._headers(request, mime, etag, cache, b"local", CACHE_PENDING)
        window = self._start_body(request, plan, obj.size)
        if window is None:
            return b""
        reader = self.cache.reader(request, obj.id, window[0], window[1], _abort_for(request), pending=pending)
        return await self._stream(request, reader.start(), reader.stopProducing)

    def _head_only(self, request: Any, obj: DataObject, mime: str) -> bytes:
        etag = etag_for(obj.ipfs_hash)
        self._headers(request, mime, etag, b"miss", b"local", CACHE_PENDING)
        plan = self._plan(request, obj.size, etag)
        if isinstance(plan, int):
            return self._short_answer(request, plan, obj.size)
        self._start_body(request, plan, obj.size)
        return b""

    # -- proxied -----------------------------------------------------------------

    async def _serve_proxy(
        self, request: Any, obj: DataObject, cache: bytes, plan: ByteRange | None | int = -1
    ) -> bytes | None:
        etag = etag_for(obj.ipfs_hash)
        if plan == -1:
            plan = self._plan(request, obj.size, etag)
        if isinstance(plan, int):
            self._headers(request, obj.mime_type or DEFAULT_MIME, etag, cache, b"external", CACHE_PENDING)
            return self._short_answer(request, plan, obj.size)
        window = plan if plan is not None else ByteRange(0, obj.size, obj.size)
        tried: set[str] = set()
        while True:
            sources = await self.storage.find_sources(obj, frozenset(tried))
            if not sources:
                break
            response, endpoint = None, None
            for endpoint in sources:
                tried.add(endpoint.url)
                try:
                    response = await self.client.get_object(
                        endpoint, obj.id, window.start, window.end - 1 if plan is not None else None
                    )
                except StorageError as e:
                    log.warn("proxy: source {source} failed: {error}", source=endpoint.url, error=str(e))
                    self.storage.forget_source(obj.id, endpoint.url)
                    continue
                if response.code not in (200, 206) or (
                    response.code == 206 and _range_start(response) not in (None, window.start)
                ):
                    log.warn(
                        "proxy: source {source} answered {code} with an unexpected range",
                        source=endpoint.url,
                        code=response.code,
                    )
                    response.abandon()
                    response = None
                    continue
                break
            if response is None:
                continue
            upstream_offset = window.start if response.code == 206 else 0
            ctype = response.headers.getRawHeaders(b"content-type")
            mime = obj.mime_type or (ctype[0].decode("latin-1") if ctype else DEFAULT_MIME)
            self._headers(request, mime, etag, cache, b"external", CACHE_PENDING)
            self._start_body(request, plan, obj.size)
            whole = plan is None
            stream = ProxyStream(
                request,
                window,
                upstream_offset,
                obj.ipfs_hash if whole else None,
                _abort_for(request),
                reactor=self.reactor,
                idle_timeout=self.cache.idle_timeout,
                send_timeout=self.cache.send_timeout,
                upstream_length=response.length if isinstance(response.length, int) else None,
            )
            response.deliverBody(stream)
            return await self._stream(request, stream.done, stream.stopProducing)
        raise ApiError(502, "no_source", f"no storage node could serve data object {obj.id}")

    # -- streaming -------------------------------------------------------------

    async def _stream(self, request: Any, done: Deferred[None], stop: Callable[[], None]) -> None:
        """Wait for a streamed body. An aborted body waits for the
        connection to go (Klein then finishes nothing); a client that goes
        away cancels us and releases the producer."""
        result: Deferred[None] = Deferred(lambda d: stop())

        def ok(_: object) -> None:
            if not result.called:
                result.callback(None)

        def failed(f: Any) -> None:
            f.trap(CancelledError, ProxyFailed, Exception)
            # The connection was aborted: wait for Klein to cancel us.

        done.addCallbacks(ok, failed)
        request.notifyFinish().addErrback(lambda _: result.cancel() if not result.called else None)
        await result
        return None


def _shielded(d: Deferred[Any]) -> Deferred[Any]:
    """A Deferred following ``d`` whose cancellation leaves ``d`` alone
    (one reader going away must not cancel a shared download signal)."""
    out: Deferred[Any] = Deferred()

    def forward(result: Any) -> Any:
        if not out.called:
            out.callback(result)
        return result

    def forward_error(f: Any) -> Any:
        if not out.called:
            out.errback(f)
        return f

    d.addCallbacks(forward, forward_error)
    return out

