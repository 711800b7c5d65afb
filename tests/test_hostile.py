"""Hostile input: object ids, Range/If-Range headers, operator API tokens
and bodies, and the security defaults.

Parsers already have their own property tests (``test_ranges``,
``test_jwtauth``); here the same kinds of input go through the whole node:
synchronously through ``AssetServer`` with every filesystem call recorded
(hypothesis), and over real sockets to an in-process node (seeded random
plans)."""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import jwt
from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from jsdistributor.assets import AssetServer
from jsdistributor.cache.eviction import LruSpPolicy
from jsdistributor.cache.hashing import content_hash
from jsdistributor.cache.manager import CacheManager
from jsdistributor.cache.store import ContentStore
from jsdistributor.errors import ApiError
from jsdistributor.jwtauth import sign_operator_request
from jsdistributor.model import DataObject, StorageEndpoint
from jsdistributor.testing.network import SECRET

from .faultkit import Client, raw_exchange, sleep
from .nodeharness import NodeHarness

# -- object ids ----------------------------------------------------------------

#: Ids a path-traversal or encoding attack would try (after URL decoding).
NASTY_IDS = [
    "", "0", "00000000000000000001", "1" * 20, "1" * 21, "9" * 200, "-1", "+1", "1.0", "1e3", " 1", "1 ",
    "..", "../1", "..%2F1", "1/../../etc/passwd", "/etc/passwd", "1\x00", "\x001", "1%00", "%2e%2e%2f",
    "١٢٣", "１２３", "²", "1\n", "1\r\nX-Injected: 1", "C:\\1", "1;rm", "~1", ".tmp", ".tmp/1", "1.part",
]


class _RecordingFs:
    """Records every path handed to the filesystem calls the cache uses."""

    NAMES = ("open", "stat", "lstat", "unlink", "replace", "rename", "scandir", "listdir", "makedirs", "mkdir", "remove")

    def __init__(self, test: SynchronousTestCase | TestCase) -> None:
        self.paths: list[str] = []
        self._test = test

    def patcher(self) -> Any:
        from twisted.python.monkey import MonkeyPatcher

        record = self.paths.append

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            def recorded(path: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(path, (str, bytes, os.PathLike)):
                    record(os.fsdecode(os.fspath(path)))
                return fn(path, *args, **kwargs)

            return recorded

        patches = [(builtins, "open", wrap(builtins.open))]
        patches += [(os, name, wrap(getattr(os, name))) for name in self.NAMES if hasattr(os, name)]
        return MonkeyPatcher(*patches)

    def outside(self, root: str, *others: str) -> list[str]:
        """Recorded paths outside ``root`` and ``others`` (the parents of
        ``others``, which ``os.makedirs`` visits, and Python's own module
        loading aside)."""
        roots = [os.path.realpath(r) for r in (root, *others)]
        created = [os.path.realpath(r) for r in others]
        bad = []
        for path in list(self.paths):  # realpath itself calls os.lstat (maybe still recorded)
            real = os.path.realpath(path)
            if any(real == r or real.startswith(r + os.sep) for r in roots):
                continue
            if any(r.startswith(real + os.sep) for r in created):
                continue  # os.makedirs looking at the parents of a directory it creates
            if real.endswith((".py", ".pyc")) or "__pycache__" in real or "site-packages" in real:
                continue
            bad.append(path)
        return bad


class _Storage:
    """No storage node has anything (downloads fail fast, synchronously)."""

    def find_sources(self, obj: DataObject, exclude: frozenset[str] = frozenset()) -> Any:
        return succeed([])

    def download_slot(self) -> Any:
        return succeed(lambda: None)

    def remember_source(self, object_id: str, endpoint: StorageEndpoint) -> None:
        pass

    def forget_source(self, object_id: str, url: str) -> None:
        pass


class _Metadata:
    """Every well-formed id exists (so valid ids reach the cache and the
    store), under exactly the id asked for."""

    def get_object(self, object_id: str) -> Any:
        return succeed(DataObject(object_id, 10, content_hash(b"0123456789"), True, (StorageEndpoint("0", "http://x/api/v1"),)))


class _Selection:
    def supports(self, obj: DataObject) -> bool:
        return True


class ObjectIdTests(SynchronousTestCase):
    """Whatever the id, the node answers 400/404 (or tries a download under
    its own directory) and never touches a path outside the assets directory."""

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.assets = self.root.child("assets")
        self.assets.makedirs()
        self.root.child("secret").setContent(b"outside")
        clock = Clock()
        policy = LruSpPolicy()
        policy.add("7", 3, 0.0, ipfs_hash=content_hash(b"abc"))
        self.assets.child("7").setContent(b"abc")
        self.cache = CacheManager(
            clock, ContentStore(self.assets), policy, limit=10**9, state_path=self.root.child("state.json"),
            storage=_Storage(), client=None,
        )
        self.server = AssetServer(clock, self.cache, _Metadata(), _Selection(), _Storage(), None, None)

    def serve(self, object_id: str) -> int:
        request = DummyRequest([b"api", b"v1", b"assets", object_id.encode("utf-8", "surrogatepass")])
        try:
            d = self.server.render(request, object_id)
        except ApiError as e:
            return e.status
        result = []
        d.addBoth(result.append)
        self.assertTrue(result, f"{object_id!r}: the synchronous fakes answer at once")
        outcome = result[0]
        if isinstance(outcome, Failure):
            outcome.trap(ApiError)
            return outcome.value.status  # type: ignore[no-any-return]
        return request.responseCode or 200

    def check(self, object_id: str) -> None:
        fs = _RecordingFs(self)
        patcher = fs.patcher()
        patcher.patch()
        try:
            status = self.serve(object_id)
        finally:
            patcher.restore()
        self.assertIn(status, (200, 400, 404, 502), repr(object_id))
        outside = fs.outside(self.assets.path)
        self.assertEqual(outside, [], f"{object_id!r} made the node touch {outside}")
        valid = object_id.isascii() and object_id.isdigit() and 1 <= len(object_id) <= 20
        if not valid:
            self.assertEqual(status, 400, repr(object_id))
            self.assertEqual(fs.paths, [], f"an invalid id {object_id!r} never reaches the filesystem")

    def test_nasty_ids(self) -> None:
        for object_id in NASTY_IDS:
            self.check(object_id)
        self.assertEqual(self.serve("7"), 200, "a valid cached id is served")
        self.assertEqual(self.root.child("secret").getContent(), b"outside")

    @settings(deadline=None, max_examples=300, derandomize=True)
    @given(
        st.one_of(
            st.text(max_size=40),
            st.text(alphabet="0123456789./%\\\x00-+ ", max_size=30),
            st.from_regex(r"\A[0-9]{1,25}\Z"),
            st.builds(lambda n: "0" * n + "7", st.integers(min_value=0, max_value=25)),
        )
    )
    def test_any_id(self, object_id: str) -> None:
        self.check(object_id)


class ObjectIdSocketTests(TestCase):
    """The same, through the whole HTTP stack (percent-decoding, routing)."""

    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self.h.start({"7": b"seven", "12": b"twelve"}))

    async def _paths(self) -> None:
        rng = random.Random(1234)
        raw_paths = [
            "/api/v1/assets/", "/api/v1/assets//7", "/api/v1/assets/%37", "/api/v1/assets/0007",
            "/api/v1/assets/..%2F..%2F..%2Fetc%2Fpasswd", "/api/v1/assets/%2e%2e/%2e%2e/etc/passwd",
            "/api/v1/assets/../../../etc/passwd", "/api/v1/assets/7%00", "/api/v1/assets/7%2500",
            "/api/v1/assets/%C0%AE%C0%AE%2F", "/api/v1/assets/%D9%A1", "/api/v1/assets/-7",
            "/api/v1/assets/" + "9" * 5000, "/api/v1/assets/7?x=../../etc/passwd", "/api/v1/assets/7/..",
            "/api/v1/assets/7%2F..%2F12", "/api/v1/assets/.tmp", "/api/v1/assets/%2Etmp%2F7",
        ]
        alphabet = "0123456789./%2eEfF-\\"
        for _ in range(40):
            raw_paths.append("/api/v1/assets/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 25))))
        fs = _RecordingFs(self)
        patcher = fs.patcher()
        patcher.patch()
        self.addCleanup(patcher.restore)
        for path in raw_paths:
            answer = await raw_exchange(
                self.h.public_port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
            # 308: werkzeug merging "//" (to a path that is then checked again).
            self.assertIn(status, (200, 308, 400, 404, 414), f"{path}: {answer[:100]!r}")
            if status == 200:
                self.assertTrue(answer.endswith((b"seven", b"twelve")), path)
        patcher.restore()
        assets = str(self.h.config.directories.assets)
        state = str(self.h.config.directories.cache_state)  # the periodic state save
        self.assertEqual(fs.outside(assets, state), [], "no request made the node touch a path outside its assets directory")

    def test_raw_paths(self) -> object:
        return ensureDeferred(self._paths())


# -- Range / If-Range ----------------------------------------------------------

SMALL = os.urandom(200_000)
BIG = os.urandom(600_000)


def _random_range_header(rng: random.Random, size: int) -> str:
    n = lambda: rng.choice([0, 1, size - 1, size, size + 1, rng.randrange(size), 10**30, 2**63, 2**64 + 5])
    forms = [
        lambda: f"bytes={n()}-{n()}",
        lambda: f"bytes={n()}-",
        lambda: f"bytes=-{n()}",
        lambda: f"bytes= {n()} - {n()} ",
        lambda: f"BYTES={n()}-{n()}",
        lambda: "bytes=" + ",".join(f"{n()}-{n()}" for _ in range(rng.randrange(2, 50))),
        lambda: "bytes=" + ",".join(f"{i}-{i}" for i in range(rng.randrange(500, 1500))),
        lambda: f"bytes={-rng.randrange(1, 100)}-{n()}",
        lambda: f"items={n()}-{n()}",
        lambda: "bytes=" + "".join(rng.choice("0123456789-,= \t") for _ in range(rng.randrange(0, 30))),
        lambda: f"bytes={n()}--{n()}",
        lambda: "bytes=" + "9" * rng.randrange(20, 400) + "-",
        lambda: "".join(chr(rng.randrange(0x20, 0xFF)) for _ in range(rng.randrange(0, 40))).replace("\x7f", ""),
        lambda: "bytes=0-0,-1",
        lambda: "bytes=",
        lambda: "=",
    ]
    return rng.choice(forms)()


class RangeTests(TestCase):
    """Random and adversarial Range/If-Range headers on a hit, a pending
    download and a proxied object: only 200/206/416, with consistent
    ``content-range``, lengths and bytes; never a 500."""

    timeout = 90

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.client = Client()
        self.addCleanup(self.client.close)
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        objects = {"1": SMALL, "2": SMALL, "3": BIG}
        return ensureDeferred(self.h.start(objects, **{"limits.maxCachedItemSize": "500K"}))

    def check(self, outcome: Any, data: bytes, header: str, if_range: str | None) -> None:
        what = f"range {header[:120]!r} if-range {if_range!r} -> {outcome.code}"
        self.assertIn(outcome.code, (200, 206, 416), what)
        size = len(data)
        if outcome.code == 200:
            self.assertEqual(outcome.body, data, what)
            self.assertIsNone(outcome.header("content-range"), what)
        elif outcome.code == 206:
            content_range = outcome.header("content-range") or ""
            unit, _, rest = content_range.partition(" ")
            span, _, total = rest.partition("/")
            first, _, last = span.partition("-")
            self.assertEqual((unit, int(total)), ("bytes", size), what)
            a, b = int(first), int(last)
            self.assertTrue(0 <= a <= b < size, what)
            self.assertEqual(outcome.body, data[a : b + 1], what)
            self.assertEqual(int(outcome.header("content-length") or -1), b - a + 1, what)
        else:
            self.assertEqual(outcome.header("content-range"), f"bytes */{size}", what)
            self.assertEqual(json.loads(outcome.body)["type"], "range_not_satisfiable", what)

    async def _storm(self, object_id: str, data: bytes, rng: random.Random, count: int) -> None:
        url = f"{self.h.public}/assets/{object_id}"
        etag = f'"{content_hash(data)}"'
        for _ in range(count):
            header = _random_range_header(rng, len(data))
            headers = {"range": header}
            if_range = rng.choice([None, None, etag, '"other"', "W/" + etag, "Tue, 15 Nov 1994 08:12:31 GMT", "garbage", ""])
            if if_range is not None:
                headers["if-range"] = if_range
            outcome = await self.client.fetch(url, headers)
            self.assertTrue(outcome.complete, f"{header[:80]!r}: {outcome.error}")
            self.check(outcome, data, header, if_range)

    async def _all_states(self) -> None:
        rng = random.Random(20240611)
        first = await self.client.fetch(f"{self.h.public}/assets/1")
        self.assertEqual(first.body, SMALL)
        await sleep(0.05)
        await self._storm("1", SMALL, rng, 60)  # hit
        for sim in self.h.sims:
            sim.sim.configure_object("2", rate=40_000)  # pending for ~5 s
        starter = ensureDeferred(self.client.fetch(f"{self.h.public}/assets/2"))
        await sleep(0.3)
        self.assertIsNotNone(self.h.node.cache.pending_for("2"), "object 2 is being downloaded")  # type: ignore[union-attr]
        await self._storm("2", SMALL, rng, 25)  # pending (some ranges wait for bytes)
        for sim in self.h.sims:
            sim.sim.clear_knobs()
        self.assertEqual((await starter).body, SMALL)
        await self._storm("3", BIG, rng, 40)  # proxied (above maxCachedItemSize)

    def test_random_ranges_on_hit_pending_and_proxied(self) -> object:
        return ensureDeferred(self._all_states())


# -- operator API --------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], payload: dict[str, Any], key: bytes, digest: Any = hashlib.sha256) -> str:
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + _b64(signature)


def _rsa_keys() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


class OperatorApiAttackTests(TestCase):
    """Every token attack gives 401, every bad body 400/413, and none of
    them changes anything (``/buckets`` and the public port are checked
    after each)."""

    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self.h.start({"7": b"seven"}))

    async def unchanged(self, what: str) -> None:
        r, body = await self.h.get("/buckets")
        self.assertEqual(json.loads(body), {"allByWorkerId": 0}, f"{what} changed the buckets")
        self.assertTrue(self.h.node.public_api_listening, f"{what} stopped the public API")  # type: ignore[union-attr]
        r, body = await self.h.get("/assets/7")
        self.assertEqual((r.code, body), (200, b"seven"), what)
        self.assertTrue(self.h.node.running and not self.h.node.shutting_down, what)  # type: ignore[union-attr]

    async def _tokens(self) -> None:
        now = int(time.time())
        body = {"workerId": 5}
        url = "/api/v1/set-worker"
        good = {"reqUrl": url, "reqBody": body, "iat": now, "exp": now + 60}
        private_pem, public_pem = _rsa_keys()
        secret = SECRET.encode()
        attacks = {
            "alg none": _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(good).encode()) + ".",
            "alg None": _b64(b'{"alg":"None","typ":"JWT"}') + "." + _b64(json.dumps(good).encode()) + ".",
            "alg none, right signature kept": _forge({"alg": "none"}, good, secret),
            "HS256 keyed with an RSA public key PEM": _forge({"alg": "HS256", "typ": "JWT"}, good, public_pem),
            "RS256 signed with an RSA key": jwt.encode(good, private_pem, algorithm="RS256"),
            "HS512 with the right secret": _forge({"alg": "HS512", "typ": "JWT"}, good, secret, hashlib.sha512),
            "HS384 with the right secret": _forge({"alg": "HS384", "typ": "JWT"}, good, secret, hashlib.sha384),
            "wrong secret": sign_operator_request("another-secret-of-32-characters!", url, body, now),
            "secret with a trailing space": _forge({"alg": "HS256"}, good, secret + b" "),
            "empty secret": _forge({"alg": "HS256"}, good, b""),
            "expired": _forge({"alg": "HS256"}, dict(good, iat=now - 120, exp=now - 60), secret),
            "older than five minutes": _forge({"alg": "HS256"}, {"reqUrl": url, "reqBody": body, "iat": now - 400}, secret),
            "not valid yet (nbf)": _forge({"alg": "HS256"}, dict(good, nbf=now + 3600), secret),
            "issued in the future": _forge({"alg": "HS256"}, dict(good, iat=now + 3600, exp=now + 3660), secret),
            "no iat": _forge({"alg": "HS256"}, {"reqUrl": url, "reqBody": body}, secret),
            "iat not a number": _forge({"alg": "HS256"}, dict(good, iat="now"), secret),
            "replayed on another URL": sign_operator_request(SECRET, "/api/v1/set-buckets", body, now),
            "replayed with another body": sign_operator_request(SECRET, url, {"workerId": 6}, now),
            "reqUrl with a query": sign_operator_request(SECRET, url + "?x=1", body, now),
            "no reqBody": _forge({"alg": "HS256"}, {"reqUrl": url, "iat": now}, secret),
            "reqBody true for 1": sign_operator_request(SECRET, url, {"workerId": True}, now),
            "payload not an object": _b64(b'{"alg":"HS256"}') + "." + _b64(b"[1,2]") + "."
            + _b64(hmac.new(secret, (_b64(b'{"alg":"HS256"}') + "." + _b64(b"[1,2]")).encode(), hashlib.sha256).digest()),
            "bad base64": "!!!.###.$$$",
            "three dots": "a.b.c.d",
            "empty": "",
            "padding": sign_operator_request(SECRET, url, body, now) + "==",
            "truncated signature": sign_operator_request(SECRET, url, body, now)[:-5],
            "header not JSON": _b64(b"not json") + "." + _b64(json.dumps(good).encode()) + ".sig",
            "8 KiB of junk": "eyJ" + "A" * 8200,
            "kid path traversal": _forge({"alg": "HS256", "kid": "../../../dev/null"}, good, b""),
            "jku pointing elsewhere": _forge({"alg": "HS256", "jku": "http://127.0.0.1:1/keys"}, good, b"x"),
        }
        for name, token in attacks.items():
            r, answer = await self.h.operate("set-worker", body, token=token)
            self.assertEqual(r.code, 401, f"{name}: {answer[:200]!r}")
            self.assertEqual(json.loads(answer)["type"], "unauthorized", name)
            self.assertNotIn(SECRET, answer.decode(), name)
            await self.unchanged(name)
        # A huge Authorization header: refused by the HTTP layer (400), not parsed.
        r, answer = await self.h.operate("set-worker", body, token="eyJ" + "A" * 100_000)
        self.assertIn(r.code, (400, 401, 431), "a 100 KB token")
        await self.unchanged("a 100 KB token")
        # Other schemes and shapes of the header.
        for header in (b"Basic " + base64.b64encode(b"op:" + secret), b"Bearer", b"bearer a b", b"Bearer\x01x", b""):
            response = await self.h.http.post(
                self.h.operator + "/set-worker", data=json.dumps(body).encode(), headers={b"authorization": [header]}
            )
            self.assertIn(response.code, (400, 401), header)
            await response.text()
            await self.unchanged(repr(header))
        # The real thing still works.
        r, _ = await self.h.operate("set-worker", body)
        self.assertEqual(r.code, 200)
        _, answer = await self.h.get("/buckets")
        self.assertEqual(json.loads(answer), {"allByWorkerId": 5})

    def test_token_attacks(self) -> object:
        return ensureDeferred(self._tokens())

    async def _bodies(self) -> None:
        now = time.time()
        bad_worker_bodies: list[Any] = [
            {"workerId": "1"}, {"workerId": 1.5}, {"workerId": True}, {"workerId": None}, {"workerId": -1},
            {"workerId": [1]}, {"workerId": {"$gt": 0}}, {}, [], "1", 1, None, {"workerid": 1},
        ]
        for value in bad_worker_bodies:
            token = sign_operator_request(SECRET, "/api/v1/set-worker", value, now)
            r, answer = await self.h.operate("set-worker", value, token=token, raw=json.dumps(value).encode())
            self.assertEqual(r.code, 400, f"{value!r}: {answer!r}")
            self.assertEqual(json.loads(answer)["type"], "invalid_body")
            await self.unchanged(repr(value))
        bad_bucket_bodies: list[Any] = [
            {"buckets": "0:1"}, {"buckets": []}, {"buckets": [[]]}, {"buckets": [{}]}, {"buckets": [None]},
            {"buckets": ["a:b"]}, {"buckets": ["0:-1"]}, {"buckets": [True]}, {"buckets": ["0:1:2"]},
            {"buckets": ["1" * 100]}, {"buckets": [1.5]}, [1], "x",
        ]
        for value in bad_bucket_bodies:
            token = sign_operator_request(SECRET, "/api/v1/set-buckets", value, now)
            r, answer = await self.h.operate("set-buckets", value, token=token, raw=json.dumps(value).encode())
            self.assertEqual(r.code, 400, f"{value!r}: {answer!r}")
            await self.unchanged(repr(value))
        # Not JSON, deeply nested JSON (signed or not, it is refused before any use).
        token = sign_operator_request(SECRET, "/api/v1/set-worker", {}, now)
        for raw in (b"{not json", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 40 + b"1" + b"}" * 40, b"NaN"):
            r, answer = await self.h.operate("set-worker", token=token, raw=raw[:60_000] if len(raw) > 60_000 else raw)
            self.assertIn(r.code, (400, 401), raw[:40])
            await self.unchanged(repr(raw[:40]))
        # Very large bodies: 413, whether declared or chunked.
        for size in (64 * 1024 + 1, 1024 * 1024, 20 * 1024 * 1024):
            r, answer = await self.h.operate("set-worker", token=token, raw=b" " * size)
            self.assertEqual(r.code, 413, size)
            await self.unchanged(f"{size} byte body")
        port = self.h.node.operator_service.listening_port.getHost().port  # type: ignore[union-attr]
        chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
        answer = await raw_exchange(
            port,
            b"POST /api/v1/set-worker HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 10,
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:60])
        await self.unchanged("a chunked body of 160 KiB")

    def test_bad_bodies(self) -> object:
        return ensureDeferred(self._bodies())


# -- security defaults ---------------------------------------------------------


class SecurityDefaultTests(TestCase):
    timeout = 60

    def test_operator_api_binds_to_loopback_by_default(self) -> None:
        from jsdistributor.config import parse_config
        from jsdistributor.testing.network import node_config_document

        directory = Path(self.mktemp())
        doc = node_config_document(directory, "catalog.yml")
        del doc["operatorApi"]["interface"]
        del doc["publicApi"]["interface"]
        directory.mkdir()
        (directory / "catalog.yml").write_text("version: 1\n")
        config = parse_config(doc, directory, {})
        assert config.operator_api is not None
        self.assertEqual(config.operator_api.interface, "127.0.0.1")
        self.assertEqual(config.public_api.interface, "0.0.0.0")

    async def _public_port(self) -> None:
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(h.stop()))
        await h.start({"7": b"seven"})
        token = sign_operator_request(SECRET, "/api/v1/shutdown", {}, time.time())
        for route in ("shutdown", "stop-api", "set-worker", "set-buckets", "start-api"):
            response = await h.http.post(
                f"{h.public}/{route}", data=b"{}", headers={b"authorization": [b"Bearer " + token.encode()]}
            )
            await response.text()
            self.assertIn(response.code, (404, 405), route)
        self.assertTrue(h.node.running and not h.node.shutting_down)  # type: ignore[union-attr]
        self.assertTrue(h.node.public_api_listening)  # type: ignore[union-attr]
        r, body = await h.get("/assets/7")
        self.assertEqual(body, b"seven")
        # Tokens and the secret never reach the logs, accepted or refused.
        r, _ = await h.operate("set-worker", {"workerId": 3})
        self.assertEqual(r.code, 200)
        r, _ = await h.operate("set-worker", {"workerId": 3}, token=token)
        self.assertEqual(r.code, 401)
        await h.get("/assets/7?token=" + token)
        from twisted.logger import formatEvent

        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("operator request refused", text)
        self.assertNotIn(SECRET, text)
        self.assertNotIn(token, text)
        self.assertNotIn(token.split(".")[2], text, "not even the signature")

    def test_public_port_has_no_operator_routes_and_logs_keep_secrets(self) -> object:
        return ensureDeferred(self._public_port())

    async def _insecure_dev(self) -> None:
        from jsdistributor.metadata.catalog import write_catalog
        from jsdistributor.testing.daemon import Daemon, twistd_argv
        from jsdistributor.testing.network import build_catalog, free_port, node_config_document
        from jsdistributor.testing.storage_sim import start_storage_sim

        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        sim = await start_storage_sim(reactor, objects={"7": b"seven"})
        self.addCleanup(lambda: ensureDeferred(sim.stop()))
        write_catalog(directory / "catalog.yml", build_catalog([sim.node_endpoint], {"7": b"seven"}))
        public, operator = free_port(), free_port()
        short = "devsecret"
        doc = node_config_document(directory, "catalog.yml", public, operator, **{"operatorApi.hmacSecret": short})
        (directory / "config.json").write_text(json.dumps(doc))
        daemon = Daemon(reactor, twistd_argv(directory / "config.json", "--insecure-dev"))
        self.addCleanup(lambda: ensureDeferred(daemon.stop()))
        await daemon.wait_for_port(operator)
        client = Client()
        self.addCleanup(client.close)
        outcome = await client.fetch(f"http://127.0.0.1:{public}/api/v1/assets/7")
        self.assertEqual(outcome.body, b"seven")
        token = sign_operator_request(short, "/api/v1/set-worker", {"workerId": 2}, time.time())
        answer = await client.fetch(
            f"http://127.0.0.1:{operator}/api/v1/set-worker",
            {"authorization": "Bearer " + token},
            method="POST",
            body=b'{"workerId": 2}',
        )
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(await daemon.stop(), 0)
        self.assertNotIn(short, daemon.output.replace("--insecure-dev", ""), "even a short secret is not logged")

    def test_insecure_dev_accepts_a_short_secret(self) -> object:
        return ensureDeferred(self._insecure_dev())
