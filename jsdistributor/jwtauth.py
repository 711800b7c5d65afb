"""Operator API tokens, as the original node checks them. Pure: no I/O, the
clock is a parameter.

A request carries ``Authorization: Bearer <JWT>`` (scheme in any case). The
token is HS256-signed with ``operatorApi.hmacSecret`` and its payload binds
it to one request: ``reqUrl`` (path and query, ``/api/v1/set-buckets``) and
``reqBody`` (the parsed JSON body, ``{}`` when there is none). ``iat`` is
required; a token is refused once 300 s old (the original's ``maxAge: 5m``),
when its ``exp`` has passed, when its ``nbf`` is still ahead, or when ``iat``
is more than 30 s in the future (clock skew).

Every refusal is an ``AuthError`` whose message never contains the token or
the secret.
"""

from __future__ import annotations

import warnings
from typing import Any

import jwt

#: The original node's ``maxAge: '5m'``.
MAX_TOKEN_AGE = 300
#: How far ahead of our clock ``iat`` may be.
MAX_CLOCK_SKEW = 30
#: Longer tokens are refused before any parsing.
MAX_TOKEN_LENGTH = 8 * 1024
ALGORITHMS = ["HS256"]

# Our own time checks use the injected ``now``; PyJWT's use the wall clock.
_DECODE_OPTIONS: dict[str, Any] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class AuthError(Exception):
    """The request is not authorized; ``message`` says why (no secrets)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def verify_operator_request(
    authorization: bytes | None,
    req_url: str,
    req_body: object,
    secret: str,
    now: float,
) -> dict[str, Any]:
    """The token's payload when it authorizes this request; ``AuthError`` otherwise."""
    token = _bearer_token(authorization)
    payload = _decode(token, secret)
    _check_times(payload, now)
    if payload.get("reqUrl") != req_url:
        raise AuthError("invalid token: it was signed for another request URL")
    if "reqBody" not in payload or not _json_equal(payload["reqBody"], req_body):
        raise AuthError("invalid token: it was signed for another request body")
    return payload


def sign_operator_request(
    secret: str, req_url: str, req_body: object, now: float, expires_in: int = 60
) -> str:
    """What the original CLI sends: ``jwt.sign({reqUrl, reqBody}, secret, {expiresIn: 60})``."""
    issued = int(now)
    payload = {"reqUrl": req_url, "reqBody": req_body, "iat": issued, "exp": issued + expires_in}
    with warnings.catch_warnings():
        # A short secret makes PyJWT warn on every call; its strength is
        # checked once, at start-up (config.check_secret_strength).
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm="HS256")


def _bearer_token(authorization: bytes | None) -> str:
    if not authorization:
        raise AuthError("Authorization header missing")
    if len(authorization) > MAX_TOKEN_LENGTH + 64:
        raise AuthError("Authorization header too long")
    try:
        header = authorization.decode("ascii")
    except UnicodeDecodeError:
        raise AuthError("malformed Authorization header (not ASCII)") from None
    parts = header.split()
    if not parts:
        raise AuthError("Authorization header missing")
    scheme = parts[0]
    if scheme.lower() != "bearer":
        shown = scheme if len(scheme) <= 20 and scheme.isprintable() else scheme[:20] + "..."
        raise AuthError(f"unexpected authorization scheme {shown!r} (expected Bearer)")
    if len(parts) != 2:
        raise AuthError("malformed Authorization header (expected 'Bearer <token>')")
    token = parts[1]
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("invalid token: too long")
    return token


def _decode(token: str, secret: str) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            payload = jwt.decode(token, secret, algorithms=ALGORITHMS, options=_DECODE_OPTIONS)  # type: ignore[arg-type]
    except jwt.InvalidAlgorithmError:
        raise AuthError("invalid token: algorithm not allowed (only HS256)") from None
    except jwt.InvalidSignatureError:
        raise AuthError("invalid token: bad signature") from None
    except jwt.DecodeError:
        raise AuthError("invalid token: malformed") from None
    except jwt.PyJWTError:
        raise AuthError("invalid token") from None
    except Exception:  # untrusted input must never escape as anything else
        raise AuthError("invalid token: malformed") from None
    if not isinstance(payload, dict):
        raise AuthError("invalid token: payload is not a JSON object")
    return payload


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_times(payload: dict[str, Any], now: float) -> None:
    issued = payload.get("iat")
    if issued is None:
        raise AuthError("invalid token: no iat (issued at) claim")
    if not _is_number(issued):
        raise AuthError("invalid token: iat is not a number")
    if issued > now + MAX_CLOCK_SKEW:
        raise AuthError("invalid token: issued in the future (check the clocks)")
    if now >= issued + MAX_TOKEN_AGE:
        raise AuthError(f"invalid token: too old (tokens are valid for {MAX_TOKEN_AGE} s)")
    if "exp" in payload:
        if not _is_number(payload["exp"]):
            raise AuthError("invalid token: exp is not a number")
        if now >= payload["exp"]:
            raise AuthError("invalid token: expired")
    if "nbf" in payload:
        if not _is_number(payload["nbf"]):
            raise AuthError("invalid token: nbf is not a number")
        if payload["nbf"] > now:
            raise AuthError("invalid token: not valid yet (nbf)")


def _json_equal(a: object, b: object) -> bool:
    """Deep equality of JSON values as JavaScript's ``_.isEqual``: ``true`` is
    not ``1`` (Python's ``==`` says it is), ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False
