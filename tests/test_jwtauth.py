"""Operator tokens: what the original CLI signs passes, everything else is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.jwtauth import AuthError, sign_operator_request, verify_operator_request

SECRET = "an-operator-secret-long-enough-for-pyjwt-to-stay-quiet-with-hs384"
NOW = 1_700_000_000.0
URL = "/api/v1/set-worker"
BODY = {"workerId": 1}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def by_hand(header: dict[str, object], payload: dict[str, object], secret: str = SECRET) -> str:
    """An HS256 token built without PyJWT, compact JSON as JavaScript writes it."""
    signing_input = (
        b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def encode(payload: dict[str, object], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=algorithm)


class VerifyTests(SynchronousTestCase):
    def verify(self, authorization: bytes | None, url: str = URL, body: object = BODY, now: float = NOW) -> dict:
        return verify_operator_request(authorization, url, body, SECRET, now)

    def refused(self, authorization: bytes | None, url: str = URL, body: object = BODY, now: float = NOW) -> str:
        error = self.assertRaises(AuthError, self.verify, authorization, url, body, now)
        self.assertNotIn(SECRET, error.message)
        if authorization and b" " in authorization:
            token = authorization.split(b" ", 1)[1].decode("ascii", "replace")
            if len(token) > 8:
                self.assertNotIn(token, error.message)
        return error.message

    def good_payload(self, **changes: object) -> dict[str, object]:
        payload: dict[str, object] = {"reqUrl": URL, "reqBody": BODY, "iat": int(NOW), "exp": int(NOW) + 60}
        payload.update(changes)
        return {k: v for k, v in payload.items() if v is not None}

    def test_valid_token(self) -> None:
        token = sign_operator_request(SECRET, URL, BODY, NOW)
        payload = self.verify(b"Bearer " + token.encode())
        self.assertEqual(payload["reqUrl"], URL)
        self.assertEqual(payload["reqBody"], BODY)

    def test_original_cli_token(self) -> None:
        """``jwt.sign({reqUrl, reqBody}, secret, {expiresIn: 60})`` with a lowercase scheme."""
        token = encode({"reqUrl": URL, "reqBody": {"workerId": 1}, "iat": int(NOW) - 10, "exp": int(NOW) + 50})
        self.assertEqual(self.verify(b"bearer " + token.encode())["reqBody"], {"workerId": 1})

    def test_sign_matches_original_byte_for_byte(self) -> None:
        """The same bytes jsonwebtoken produces: header, key order, compact JSON."""
        expected = by_hand(
            {"alg": "HS256", "typ": "JWT"},
            {"reqUrl": URL, "reqBody": {"workerId": 1}, "iat": int(NOW), "exp": int(NOW) + 60},
        )
        self.assertEqual(sign_operator_request(SECRET, URL, {"workerId": 1}, NOW + 0.9), expected)

    def test_short_secret_is_quiet(self) -> None:
        """Secret strength is checked once at start-up, not warned per request."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            token = sign_operator_request("demo", URL, BODY, NOW)
            verify_operator_request(b"Bearer " + token.encode(), URL, BODY, "demo", NOW)
        self.assertEqual([str(w.message) for w in caught], [])

    def test_scheme_case_and_spacing(self) -> None:
        token = sign_operator_request(SECRET, URL, BODY, NOW).encode()
        for scheme in (b"BEARER ", b"bEaReR  ", b"Bearer\t"):
            self.verify(scheme + token)

    def test_empty_body(self) -> None:
        token = sign_operator_request(SECRET, "/api/v1/shutdown", {}, NOW)
        self.verify(b"bearer " + token.encode(), url="/api/v1/shutdown", body={})

    def test_alg_none(self) -> None:
        token = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(self.good_payload()).encode()) + "."
        self.assertIn("algorithm not allowed", self.refused(b"Bearer " + token.encode()))

    def test_hs384(self) -> None:
        token = encode(self.good_payload(), algorithm="HS384")
        self.assertIn("algorithm not allowed", self.refused(b"Bearer " + token.encode()))

    def test_rs256(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        token = jwt.encode(self.good_payload(), pem, algorithm="RS256")
        self.assertIn("algorithm not allowed", self.refused(b"Bearer " + token.encode()))

    def test_wrong_secret(self) -> None:
        token = encode(self.good_payload(), secret="another-secret-entirely-" + "x" * 40)
        self.assertEqual(self.refused(b"Bearer " + token.encode()), "invalid token: bad signature")

    def test_another_url(self) -> None:
        token = sign_operator_request(SECRET, "/api/v1/set-buckets", BODY, NOW)
        self.assertIn("another request URL", self.refused(b"Bearer " + token.encode()))
        token = sign_operator_request(SECRET, URL + "?x=1", BODY, NOW)
        self.assertIn("another request URL", self.refused(b"Bearer " + token.encode()))

    def test_another_body(self) -> None:
        for signed in ({"workerId": 2}, {}, {"workerId": True}, {"workerId": 1, "x": None}, [1]):
            token = sign_operator_request(SECRET, URL, signed, NOW)
            self.assertIn("another request body", self.refused(b"Bearer " + token.encode()), signed)
        token = encode(self.good_payload(reqBody=None))
        self.assertIn("another request body", self.refused(b"Bearer " + token.encode()))

    def test_number_forms_equal(self) -> None:
        """JavaScript has one number type: 1 and 1.0 are the same body."""
        token = sign_operator_request(SECRET, URL, {"workerId": 1.0}, NOW)
        self.verify(b"Bearer " + token.encode(), body={"workerId": 1})

    def test_missing_iat(self) -> None:
        token = encode(self.good_payload(iat=None))
        self.assertEqual(self.refused(b"Bearer " + token.encode()), "invalid token: no iat (issued at) claim")
        token = encode(self.good_payload(iat="yesterday"))
        self.assertEqual(self.refused(b"Bearer " + token.encode()), "invalid token: iat is not a number")

    def test_too_old(self) -> None:
        token = encode(self.good_payload(iat=int(NOW) - 360, exp=None))
        self.assertIn("too old", self.refused(b"Bearer " + token.encode()))
        # Just under five minutes is fine.
        token = encode(self.good_payload(iat=int(NOW) - 299, exp=None))
        self.verify(b"Bearer " + token.encode())

    def test_expired(self) -> None:
        token = encode(self.good_payload(iat=int(NOW) - 61, exp=int(NOW) - 1))
        self.assertEqual(self.refused(b"Bearer " + token.encode()), "invalid token: expired")
        token = sign_operator_request(SECRET, URL, BODY, NOW)
        self.assertEqual(self.refused(b"Bearer " + token.encode(), now=NOW + 60), "invalid token: expired")

    def test_issued_in_the_future(self) -> None:
        token = encode(self.good_payload(iat=int(NOW) + 31, exp=int(NOW) + 91))
        self.assertIn("issued in the future", self.refused(b"Bearer " + token.encode()))
        # Small clock skew is tolerated.
        token = encode(self.good_payload(iat=int(NOW) + 20, exp=int(NOW) + 80))
        self.verify(b"Bearer " + token.encode())

    def test_not_before(self) -> None:
        token = encode(self.good_payload(nbf=int(NOW) + 10))
        self.assertIn("not valid yet", self.refused(b"Bearer " + token.encode()))

    def test_garbage(self) -> None:
        for token in (b"garbage", b"a.b.c", b"....", b"eyJ.eyJ.x"):
            self.assertIn("invalid token", self.refused(b"Bearer " + token))

    def test_bad_base64(self) -> None:
        good = sign_operator_request(SECRET, URL, BODY, NOW)
        header, payload, signature = good.split(".")
        for token in (f"{header}.{payload}!!.{signature}", f"{header}.%%%.{signature}", f"@@.{payload}.{signature}"):
            self.assertIn("invalid token", self.refused(b"Bearer " + token.encode()))

    def test_payload_not_an_object(self) -> None:
        token = by_hand({"alg": "HS256", "typ": "JWT"}, {"a": 1}).split(".")
        body = b64(b"[1, 2]")
        signing_input = token[0] + "." + body
        signature = b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
        self.assertIn("invalid token", self.refused(b"Bearer " + (signing_input + "." + signature).encode()))

    def test_huge_token(self) -> None:
        token = encode(self.good_payload(padding="x" * 9000))
        self.assertIn("too long", self.refused(b"Bearer " + token.encode()))

    def test_missing_header(self) -> None:
        self.assertEqual(self.refused(None), "Authorization header missing")
        self.assertEqual(self.refused(b""), "Authorization header missing")
        self.assertEqual(self.refused(b"   "), "Authorization header missing")

    def test_wrong_scheme(self) -> None:
        self.assertEqual(
            self.refused(b"Basic dXNlcjpwYXNz"), "unexpected authorization scheme 'Basic' (expected Bearer)"
        )
        token = sign_operator_request(SECRET, URL, BODY, NOW).encode()
        self.assertIn("unexpected authorization scheme", self.refused(token))
        self.assertIn("malformed", self.refused(b"Bearer"))
        self.assertIn("malformed", self.refused(b"Bearer " + token + b" extra"))
        self.assertIn("not ASCII", self.refused("Bearer é".encode()))

    @settings(deadline=None, max_examples=500)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.builds(lambda rest: b"Bearer " + rest, st.binary(max_size=300)),
            st.builds(
                lambda parts: b"bearer " + b".".join(parts),
                st.lists(st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")), max_size=4),
            ),
        )
    )
    def test_arbitrary_headers_only_raise_auth_error(self, header: bytes) -> None:
        try:
            verify_operator_request(header, URL, BODY, SECRET, NOW)
        except AuthError as e:
            self.assertIsInstance(e.message, str)
        else:
            self.fail(f"{header!r} was accepted")

    @settings(deadline=None, max_examples=200)
    @given(
        st.dictionaries(
            st.sampled_from(["reqUrl", "reqBody", "iat", "exp", "nbf", "aud", "sub"]),
            st.one_of(
                st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                st.lists(st.integers(), max_size=2),
            ),
        )
    )
    def test_arbitrary_signed_payloads_only_raise_auth_error(self, payload: dict[str, object]) -> None:
        token = by_hand({"alg": "HS256", "typ": "JWT"}, payload)
        try:
            verify_operator_request(b"Bearer " + token.encode(), URL, BODY, SECRET, NOW)
        except AuthError:
            pass
