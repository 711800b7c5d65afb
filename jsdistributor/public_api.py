"""The public API (Klein): /api/v1/status, /api/v1/buckets, and the assets."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from werkzeug.exceptions import HTTPException

from .errors import ApiError
from .httputil import error_response, json_response

if TYPE_CHECKING:
    from .node import DistributorNode

log = Logger()

CORS_HEADERS = {
    b"access-control-allow-origin": b"*",
    b"access-control-expose-headers": b"x-cache, x-data-source, content-range, content-length, accept-ranges, etag",
    b"timing-allow-origin": b"*",
}


def add_cors(request: Any) -> None:
    for name, value in CORS_HEADERS.items():
        request.setHeader(name, value)


@cache
def demo_page_bytes() -> bytes:
    return files("jsdistributor").joinpath("demo", "index.html").read_bytes()


class PublicRoot(Resource):
    """The public site's root: a GET/HEAD of a cached asset goes straight to
    ``AssetServer.render_hit`` (the hot path, measured in bench/run.py);
    every other request, and any asset that is not a hit, to the Klein app,
    which renders it exactly as before."""

    isLeaf = True

    def __init__(self, klein_resource: Any, assets: Any) -> None:
        """``klein_resource``: renders every request that is not a hit (in a
        hit worker, the relay to the node)."""
        super().__init__()
        self._klein = klein_resource
        self._assets = assets

    def render(self, request: Any) -> Any:
        object_id = asset_id_of(request)
        if object_id is not None:
            add_cors(request)
            result = self._assets.render_hit(request, object_id)
            if result is not None:
                return result
        return self._klein.render(request)


def asset_id_of(request: Any) -> str | None:
    """The object id of a GET/HEAD of ``/api/v1/assets/{id}`` (or
    ``/asset/``) with a valid id; None for any other request."""
    if request.method in (b"GET", b"HEAD"):
        segments = request.postpath
        if len(segments) == 4 and segments[0] == b"api" and segments[1] == b"v1" and segments[2] in (b"assets", b"asset"):
            raw = segments[3]
            # bytes.isdigit() is ASCII-only: the same rule as is_valid_object_id.
            if 0 < len(raw) <= 20 and raw.isdigit():
                return str(raw.decode("ascii"))
    return None


class PublicApi:
    app = Klein()

    def __init__(self, node: DistributorNode) -> None:
        self._node = node

    def resource(self) -> Any:
        return PublicRoot(self.app.resource(), self._node.assets)

    @app.handle_errors(ApiError)
    def _api_error(self, request: Any, failure: Any) -> bytes:
        add_cors(request)
        return error_response(request, failure.value)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: Any, failure: Any) -> bytes:
        add_cors(request)
        e = failure.value
        kind = "not_found" if e.code == 404 else "method_not_allowed" if e.code == 405 else "bad_request"
        return error_response(request, ApiError(e.code, kind, e.description or e.name))

    @app.route("/api/v1/status", methods=["GET"])
    def status(self, request: Any) -> Any:
        add_cors(request)

        async def go() -> bytes:
            return json_response(request, await self._node.status())

        return ensureDeferred(go())

    @app.route("/api/v1/buckets", methods=["GET"])
    def buckets(self, request: Any) -> bytes:
        add_cors(request)
        return json_response(request, self._node.selection.as_json())

    @app.route("/api/v1/<string:kind>/<path:object_id>", methods=["GET", "HEAD"])
    def asset(self, request: Any, kind: str, object_id: str) -> Any:
        if kind not in ("assets", "asset"):
            raise ApiError(404, "not_found", "no such route")
        add_cors(request)
        return self._node.assets.render(request, object_id)

    @app.route("/demo", methods=["GET"])
    def demo_page(self, request: Any) -> bytes:
        """The demo page (``jsdistributor demo``): a static file that plays
        and lists assets by the ids in its query string."""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return demo_page_bytes()

    @app.route("/api/v1/<string:kind>/<path:object_id>", methods=["OPTIONS"])
    def asset_preflight(self, request: Any, kind: str, object_id: str) -> bytes:
        add_cors(request)
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"GET, HEAD, OPTIONS")
        request.setHeader(
            b"access-control-allow-headers",
            request.getHeader(b"access-control-request-headers") or b"range, if-range, if-none-match",
        )
        request.setHeader(b"access-control-max-age", b"86400")
        return b""
