"""The operator API (Klein, every route POST under /api/v1, JWT-secured),
and ``GET /metrics`` (Prometheus, not authenticated).

Exactly the original node's protocol: ``Authorization: Bearer <JWT>``, HS256
with ``operatorApi.hmacSecret``, the payload's ``reqUrl``/``reqBody`` equal
to the request's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from .buckets import normalize_bucket_id
from .errors import ApiError
from .httputil import MAX_BODY, error_response, json_response
from .jwtauth import AuthError, verify_operator_request

if TYPE_CHECKING:
    from .node import DistributorNode

log = Logger()

#: JSON nesting deeper than this is refused (hostile bodies stay cheap).
MAX_DEPTH = 32


def _depth(value: object, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def read_json_body(request: Any) -> object:
    """The request's JSON body (``{}`` when empty), or ApiError 400/413."""
    length = request.getHeader(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise ApiError(413, "body_too_large", f"request body above {MAX_BODY} bytes")
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "body_too_large", f"request body above {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_body", "request body is not valid JSON") from None
    if _depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise ApiError(400, "invalid_body", "request body is nested too deeply")
    return body


class OperatorApi:
    app = Klein()

    def __init__(self, node: DistributorNode, secret: str) -> None:
        self._node = node
        self._secret = secret

    def resource(self) -> Any:
        return self.app.resource()

    # -- plumbing ---------------------------------------------------------

    def _authorize(self, request: Any) -> object:
        body = read_json_body(request)
        try:
            verify_operator_request(
                request.getHeader(b"authorization"),
                request.uri.decode("utf-8", "replace"),
                body,
                self._secret,
                self._node.clock.seconds(),
            )
        except AuthError as e:
            log.warn("operator request refused: {reason}", reason=e.message)
            raise ApiError(401, "unauthorized", e.message) from None
        return body

    @app.handle_errors(ApiError)
    def _api_error(self, request: Any, failure: Any) -> bytes:
        return error_response(request, failure.value)

    @app.handle_errors(HTTPException)
    def _http_error(self, request: Any, failure: Any) -> bytes:
        e = failure.value
        kind = "not_found" if e.code == 404 else "method_not_allowed" if e.code == 405 else "bad_request"
        return error_response(request, ApiError(e.code, kind, e.description or e.name))

    # -- routes -----------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Any) -> bytes:
        """Prometheus metrics, unauthenticated (as Prometheus scrapes): the
        operator API listens on 127.0.0.1 unless ``operatorApi.interface``
        says otherwise; ``metrics.port`` serves them alone on another port."""
        body, content_type = self._node.metrics.render(request.getHeader(b"accept"))
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body

    @app.route("/api/v1/stop-api", methods=["POST"])
    def stop_api(self, request: Any) -> bytes:
        self._authorize(request)
        if not self._node.public_api_listening:
            raise ApiError(409, "conflict", "Already stopped")
        # Answered once nothing listens any more (hit workers included).
        d = self._node.stop_public_api()
        return d.addCallback(lambda _: json_response(request, {"message": "public API stopped"}))

    @app.route("/api/v1/start-api", methods=["POST"])
    def start_api(self, request: Any) -> Any:
        self._authorize(request)
        if self._node.public_api_listening:
            raise ApiError(409, "conflict", "Already started")
        d = self._node.start_public_api()
        return d.addCallback(lambda _: json_response(request, {"message": "public API started"}))

    @app.route("/api/v1/shutdown", methods=["POST"])
    def shutdown(self, request: Any) -> bytes:
        self._authorize(request)
        if self._node.shutting_down:
            raise ApiError(409, "conflict", "Already shutting down")
        self._node.request_shutdown()
        return json_response(request, {"message": "shutting down"})

    @app.route("/api/v1/set-worker", methods=["POST"])
    def set_worker(self, request: Any) -> bytes:
        body = self._authorize(request)
        if not isinstance(body, dict) or "workerId" not in body:
            raise ApiError(400, "invalid_body", "workerId: required")
        worker = body["workerId"]
        if isinstance(worker, bool) or not isinstance(worker, int) or worker < 0:
            raise ApiError(400, "invalid_body", "workerId: must be an integer >= 0")
        self._node.set_worker(worker)
        return json_response(request, {"message": "worker set", "workerId": worker})

    @app.route("/api/v1/set-buckets", methods=["POST"])
    def set_buckets(self, request: Any) -> bytes:
        body = self._authorize(request)
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_body", "body: must be a JSON object")
        buckets = body.get("buckets")
        if buckets is None:
            self._node.set_buckets(None)
            return json_response(request, {"message": "serving all buckets of the worker"})
        if not isinstance(buckets, list) or not buckets:
            raise ApiError(400, "invalid_body", "buckets: must be a non-empty array")
        try:
            normalized = [normalize_bucket_id(b) for b in buckets]
        except ValueError as e:
            raise ApiError(400, "invalid_body", f"buckets: {e}") from None
        self._node.set_buckets(normalized)
        return json_response(request, {"message": "buckets set", "bucketIds": normalized})
