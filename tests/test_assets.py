"""Serving assets end to end: an in-process node on real sockets, real
storage-node simulators, a static catalog."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial.unittest import TestCase

from jsdistributor.cache.hashing import content_hash

from .nodeharness import NodeHarness, header, sleep

SMALL = os.urandom(100_000)
BIG = os.urandom(1_500_000)
HUGE = os.urandom(2_500_000)
LONG = os.urandom(3_000_000)
OBJECTS = {"1": SMALL, "2": BIG, "3": b"hello", "4": HUGE}


class AssetTests(TestCase):
    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(
            self.h.start(
                OBJECTS,
                unsupported={"50": b"elsewhere"},
                not_accepted={"60": b"not yet"},
                **{"limits.maxCachedItemSize": "2M"},
            )
        )

    def sim_gets(self, object_id: str) -> int:
        return sum(len(s.sim.requests_for(object_id, "GET")) for s in self.h.sims)

    async def _miss_then_hit(self) -> None:
        response, body = await self.h.get("/assets/1")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, SMALL)
        self.assertEqual(header(response, "x-cache"), "miss")
        self.assertEqual(header(response, "x-data-source"), "local")
        self.assertEqual(response.length, len(SMALL))
        self.assertEqual(header(response, "cache-control"), "max-age=180, must-revalidate")
        self.assertEqual(header(response, "access-control-allow-origin"), "*")
        self.assertEqual(header(response, "accept-ranges"), "bytes")
        self.assertEqual(header(response, "etag"), f'"{content_hash(SMALL)}"')
        await sleep(0.05)
        response, body = await self.h.get("/asset/1")  # the older path
        self.assertEqual((response.code, body), (200, SMALL))
        self.assertEqual(header(response, "x-cache"), "hit")
        self.assertEqual(header(response, "cache-control"), "max-age=31536000")
        self.assertEqual(header(response, "etag"), f'"{content_hash(SMALL)}"')
        self.assertEqual(self.sim_gets("1"), 1)
        status = json.loads((await self.h.get("/status"))[1])
        self.assertEqual(status["objectsInCache"], 1)
        self.assertEqual(status["storageUsed"], len(SMALL))

    def test_miss_then_hit(self) -> object:
        return ensureDeferred(self._miss_then_hit())

    async def _ranges(self) -> None:
        await self.h.get("/assets/2")  # cache it
        await sleep(0.05)
        for state in ("hit",):
            r, body = await self.h.get("/assets/2", {"range": "bytes=10-19"})
            self.assertEqual((r.code, body), (206, BIG[10:20]))
            self.assertEqual(header(r, "content-range"), f"bytes 10-19/{len(BIG)}")
            self.assertEqual(header(r, "x-cache"), state)
            r, body = await self.h.get("/assets/2", {"range": "bytes=-5"})
            self.assertEqual((r.code, body), (206, BIG[-5:]))
            r, body = await self.h.get("/assets/2", {"range": f"bytes={len(BIG)}-"})
            self.assertEqual(r.code, 416)
            self.assertEqual(header(r, "content-range"), f"bytes */{len(BIG)}")
            self.assertEqual(json.loads(body)["type"], "range_not_satisfiable")
            r, body = await self.h.get("/assets/2", {"range": "bytes=oops"})
            self.assertEqual((r.code, body), (200, BIG))
            r, body = await self.h.get("/assets/2", {"range": "bytes=0-1,5-6"})
            self.assertEqual((r.code, body), (200, BIG))
            etag = f'"{content_hash(BIG)}"'
            r, body = await self.h.get("/assets/2", {"range": "bytes=0-1", "if-range": etag})
            self.assertEqual((r.code, body), (206, BIG[:2]))
            r, body = await self.h.get("/assets/2", {"range": "bytes=0-1", "if-range": '"other"'})
            self.assertEqual((r.code, body), (200, BIG))
            r, body = await self.h.get("/assets/2", {"if-none-match": etag})
            self.assertEqual((r.code, body), (304, b""))

    def test_ranges_on_a_hit(self) -> object:
        return ensureDeferred(self._ranges())

    async def _pending_range(self) -> None:
        for s in self.h.sims:
            s.sim.configure(rate=2_000_000)
        first = ensureDeferred(self.h.get("/assets/2"))
        await sleep(0.3)
        r, body = await self.h.get("/assets/2", {"range": "bytes=100-199"})
        self.assertEqual((r.code, body), (206, BIG[100:200]))
        self.assertEqual(header(r, "x-cache"), "pending")
        self.assertEqual(r.length, 100)
        r, body = await first
        self.assertEqual(body, BIG)
        self.assertEqual(self.sim_gets("2"), 1)

    def test_range_on_a_pending_download(self) -> object:
        return ensureDeferred(self._pending_range())

    async def _coalescing(self) -> None:
        for s in self.h.sims:
            s.sim.configure(rate=3_000_000)
        gets = [ensureDeferred(self.h.get("/assets/2")) for _ in range(20)]
        await sleep(0.2)
        gets += [ensureDeferred(self.h.get("/assets/2", {"range": f"bytes={n}-"})) for n in (0, 5, 1_000_000)]
        results = await DeferredList(gets, fireOnOneErrback=True)
        for _, (r, body) in results[:20]:
            self.assertEqual(body, BIG)
        for (_, (r, body)), n in zip(results[20:], (0, 5, 1_000_000)):
            self.assertEqual(body, BIG[n:])
        self.assertEqual(self.sim_gets("2"), 1, "one upstream GET for every reader")

    def test_many_readers_one_download(self) -> object:
        return ensureDeferred(self._coalescing())

    async def _head(self) -> None:
        r, body = await self.h.get("/assets/1", method="HEAD")
        self.assertEqual((r.code, body), (200, b""))
        self.assertEqual(header(r, "x-cache"), "miss")
        raw = await self.h.raw(b"HEAD /api/v1/assets/1 HTTP/1.0\r\n\r\n")
        self.assertIn(b"\r\ncontent-length: %d\r\n" % len(SMALL), raw.lower())
        self.assertTrue(raw.endswith(b"\r\n\r\n"), "no body")
        await sleep(0.05)
        self.assertEqual(self.sim_gets("1"), 0, "HEAD starts no download")

    def test_head_starts_no_download(self) -> object:
        return ensureDeferred(self._head())

    async def _errors(self) -> None:
        for path, status, kind in [
            ("/assets/abc", 400, "invalid_object_id"),
            ("/assets/..%2F..%2Fetc%2Fpasswd", 400, "invalid_object_id"),
            ("/assets/1%00", 400, "invalid_object_id"),
            ("/assets/" + "1" * 21, 400, "invalid_object_id"),
            ("/assets/-1", 400, "invalid_object_id"),
            ("/assets/999", 404, "not_found"),
            ("/assets/60", 404, "not_uploaded"),
            ("/assets/50", 421, "not_supported"),
            ("/nothing", 404, "not_found"),
        ]:
            r, body = await self.h.get(path)
            self.assertEqual(r.code, status, path)
            self.assertEqual(json.loads(body)["type"], kind, path)
            self.assertTrue(header(r, "content-type").startswith("application/json"), path)

    def test_errors_are_json(self) -> object:
        return ensureDeferred(self._errors())

    async def _proxy(self) -> None:
        r, body = await self.h.get("/assets/4")
        self.assertEqual((r.code, body), (200, HUGE))
        self.assertEqual(header(r, "x-data-source"), "external")
        self.assertEqual(header(r, "x-cache"), "miss")
        r, body = await self.h.get("/assets/4", {"range": "bytes=1000-1999"})
        self.assertEqual((r.code, body), (206, HUGE[1000:2000]))
        self.assertEqual(header(r, "content-range"), f"bytes 1000-1999/{len(HUGE)}")
        status = json.loads((await self.h.get("/status"))[1])
        self.assertEqual(status["objectsInCache"], 0, "objects above maxCachedItemSize are not cached")

    def test_large_objects_are_proxied(self) -> object:
        return ensureDeferred(self._proxy())

    async def _corrupt(self) -> None:
        for s in self.h.sims:
            s.sim.configure_object("1", corrupt=True)
        r, body = None, b""
        try:
            r, body = await self.h.get("/assets/1")
        except Exception:
            pass  # the connection was cut: the right outcome
        else:
            self.assertNotEqual(body, SMALL)
            self.assertLess(len(body), len(SMALL), "a wrong body never looks complete")
        await sleep(0.1)
        for s in self.h.sims:
            s.sim.clear_knobs("1")
        r, body = await self.h.get("/assets/1")
        self.assertEqual((r.code, body), (200, SMALL), "the next request starts afresh")

    def test_corrupt_source_never_serves_a_complete_wrong_body(self) -> object:
        return ensureDeferred(self._corrupt())

    async def _random_ranges(self) -> None:
        rng = random.Random(7)
        for s in self.h.sims:
            s.sim.configure(rate=5_000_000)
        gets = []
        expected = []
        for i in range(30):
            oid, data = rng.choice([("2", BIG), ("1", SMALL), ("4", HUGE)])
            a = rng.randrange(len(data))
            b = rng.randrange(a, len(data))
            gets.append(ensureDeferred(self.h.get(f"/assets/{oid}", {"range": f"bytes={a}-{b}"})))
            expected.append(data[a : b + 1])
            if i % 10 == 0:
                await sleep(0.05)
        results = await DeferredList(gets, fireOnOneErrback=True)
        for (_, (r, body)), want in zip(results, expected):
            self.assertEqual(r.code, 206)
            self.assertEqual(body, want)

    def test_random_ranges_over_hit_pending_and_proxied(self) -> object:
        return ensureDeferred(self._random_ranges())

    async def _buckets(self) -> None:
        r, body = await self.h.get("/buckets")
        self.assertEqual(json.loads(body), {"allByWorkerId": 0})
        r, body = await self.h.operate("set-buckets", {"buckets": ["0:1"]})
        self.assertEqual(r.code, 200, body)
        r, body = await self.h.get("/buckets")
        self.assertEqual(json.loads(body), {"bucketIds": ["0:1"]})
        r, body = await self.h.get("/assets/50")
        self.assertEqual((r.code, body), (200, b"elsewhere"))
        r, body = await self.h.get("/assets/3")
        self.assertEqual(r.code, 421)
        r, body = await self.h.operate("set-worker", {"workerId": 0})
        r, body = await self.h.operate("set-buckets", {})
        r, body = await self.h.get("/assets/3")
        self.assertEqual((r.code, body), (200, b"hello"))

    def test_operator_bucket_changes_take_effect(self) -> object:
        return ensureDeferred(self._buckets())


class FarRangeTests(TestCase):
    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self.h.start({"9": LONG}))

    async def _far_ahead(self) -> None:
        import jsdistributor.assets

        PROXY_AHEAD_BYTES = 1_000_000
        self.patch(jsdistributor.assets, "PROXY_AHEAD_BYTES", PROXY_AHEAD_BYTES)
        for s in self.h.sims:
            s.sim.configure(rate=1_000_000)
        first = ensureDeferred(self.h.get("/assets/9"))
        await sleep(0.3)
        start = PROXY_AHEAD_BYTES + 1_000_000
        r, body = await self.h.get("/assets/9", {"range": f"bytes={start}-{start + 99}"})
        self.assertEqual((r.code, body), (206, LONG[start : start + 100]))
        self.assertEqual(header(r, "x-cache"), "pending")
        self.assertEqual(header(r, "x-data-source"), "external", "a range far ahead is proxied")
        r, body = await first
        self.assertEqual(body, LONG)
        ranged = [rec for s in self.h.sims for rec in s.sim.requests_for("9", "GET") if rec.range_header]
        self.assertEqual(len(ranged), 1)

    def test_range_far_ahead_of_a_pending_download_is_proxied(self) -> object:
        return ensureDeferred(self._far_ahead())


_ = reactor
