"""Faults: storage nodes misbehaving, the metadata source failing, the
disk failing, the process being killed, and a storm of stalled storage
nodes. In-process nodes on real sockets unless a test says "twistd".

The promise every storage fault is checked against: a viewer gets the right
bytes (the node fails over to the other storage node) or a visibly cut
connection / an error status -- never a complete-looking wrong body; the
node keeps serving other objects meanwhile; and the next request for the
object succeeds once a healthy source exists.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsdistributor.cache.hashing import content_hash
from jsdistributor.testing.faulty_store import FaultyStore

from .faultkit import Client, Outcome, assert_never_complete_and_wrong, prefer, sleep
from .nodeharness import NodeHarness

FAILOVER = os.urandom(300_000)  # one storage node faulty, the other healthy
ALL_BAD = os.urandom(300_000)  # every storage node faulty
HIT = os.urandom(50_000)  # cached before the fault
OTHER = os.urandom(50_000)  # a healthy miss during the fault
SLOW = os.urandom(30_000)
OBJECTS = {"1": FAILOVER, "3": ALL_BAD, "5": HIT, "6": OTHER, "7": SLOW}

#: Short timeouts so a stalled source is given up on within a second.
FAST = {"limits.outboundRequestsTimeoutMs": 1000}


class StorageFaultTests(TestCase):
    """Each storage-node fault, on one storage node then on both."""

    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.client = Client()
        self.addCleanup(self.client.close)
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(self.h.start(OBJECTS, **FAST))

    def url(self, object_id: str) -> str:
        return f"{self.h.public}/assets/{object_id}"

    async def get(self, object_id: str, headers: dict[str, str] | None = None) -> Outcome:
        return await self.client.fetch(self.url(object_id), headers)

    def gets(self, object_id: str) -> int:
        return sum(len(s.sim.requests_for(object_id, "GET")) for s in self.h.sims)

    async def _scenario(self, knobs: dict[str, Any], *, whole_sim: bool = False, stop_sim: bool = False) -> None:
        bad, good = self.h.sims
        assert self.h.node is not None
        prefer(self.h.node, bad.url, [good.url])
        warm = await self.get("5")
        self.assertEqual((warm.code, warm.body), (200, HIT))

        def break_(sim: Any, object_id: str) -> None:
            if whole_sim:
                sim.sim.configure(**knobs)
            else:
                sim.sim.configure_object(object_id, **knobs)

        # 1. One faulty storage node (ranked first), one healthy.
        if stop_sim:
            await bad.stop()
        else:
            break_(bad, "1")
        faulty = ensureDeferred(self.get("1"))
        await sleep(0.05)
        started = time.monotonic()
        hit, other = await DeferredList([ensureDeferred(self.get("5")), ensureDeferred(self.get("6"))])
        self.assertEqual((hit[1].code, hit[1].body), (200, HIT), "hits are served during the fault")
        self.assertEqual(hit[1].header("x-cache"), "hit")
        self.assertEqual((other[1].code, other[1].body), (200, OTHER), "other objects are served during the fault")
        self.assertLess(time.monotonic() - started, 5.0)
        first = await faulty
        assert_never_complete_and_wrong(self, first, FAILOVER, f"failover {knobs}")
        await sleep(0.1)
        again = await self.get("1")
        self.assertEqual((again.code, again.complete), (200, True), f"after failover {knobs}: {again.error}")
        self.assertTrue(again.body == FAILOVER, "the object is right once a healthy source exists")

        # 2. Every storage node faulty: cut or an error, never a wrong body.
        if not stop_sim:
            break_(good, "3")
            break_(bad, "3")
        else:
            await good.stop()
        outcome = await self.get("3")
        assert_never_complete_and_wrong(self, outcome, ALL_BAD, f"all faulty {knobs}")
        if outcome.code == 200 and outcome.complete:
            self.fail(f"{knobs}: every source is faulty but a complete body arrived")
        if outcome.code is not None and outcome.code >= 400:
            self.assertIn(outcome.code, (502, 503))
            self.assertEqual(json.loads(outcome.body)["type"] in ("download_failed", "no_source"), True)
        hit = await self.get("5")
        self.assertEqual((hit.code, hit.body), (200, HIT), "hits still served after a failed download")

        # 3. Healthy again: the next request succeeds.
        for sim in self.h.sims:
            sim.sim.clear_knobs()
            if not sim.running:
                await sim.start()
        await sleep(0.1)
        healed = await self.get("3")
        self.assertEqual((healed.code, healed.complete), (200, True), f"healed {knobs}: {healed.error}")
        self.assertTrue(healed.body == ALL_BAD)

    def test_connection_refused(self) -> object:
        return ensureDeferred(self._scenario({}, stop_sim=True))

    def test_connections_dropped_on_accept(self) -> object:
        return ensureDeferred(self._scenario({"refuse": True}, whole_sim=True))

    def test_reset_mid_body(self) -> object:
        return ensureDeferred(self._scenario({"reset_after": 100_000}))

    def test_stall_mid_body(self) -> object:
        return ensureDeferred(self._scenario({"stall_after": 100_000}))

    def test_stall_before_headers(self) -> object:
        return ensureDeferred(self._scenario({"latency": 30.0}))

    def test_more_bytes_than_the_object(self) -> object:
        return ensureDeferred(self._scenario({"extra_bytes": 1000}))

    def test_fewer_bytes_than_the_object(self) -> object:
        return ensureDeferred(self._scenario({"truncate_to": 100_000}))

    def test_wrong_bytes(self) -> object:
        return ensureDeferred(self._scenario({"corrupt": True}))

    def test_get_404_after_head_200(self) -> object:
        return ensureDeferred(self._scenario({"fail_status": 404}))

    def test_get_500_after_head_200(self) -> object:
        return ensureDeferred(self._scenario({"fail_status": 500}))

    async def _slow(self) -> None:
        for sim in self.h.sims:
            sim.sim.configure_object("7", rate=10 * 1024)  # 10 KiB/s: ~3 s for the object
        slow = ensureDeferred(self.get("7"))
        await sleep(0.3)
        started = time.monotonic()
        hit = await self.get("5")
        self.assertEqual((hit.code, hit.body), (200, HIT))
        other = await self.get("6")
        self.assertEqual((other.code, other.body), (200, OTHER))
        self.assertLess(time.monotonic() - started, 2.0, "a slow source slows nobody else")
        outcome = await slow
        self.assertEqual((outcome.code, outcome.complete), (200, True), outcome.error)
        self.assertTrue(outcome.body == SLOW, "a slow source is slow, not wrong")
        self.assertEqual(self.gets("7"), 1, "a slow but steady source is not given up on")

    def test_very_slow_source(self) -> object:
        return ensureDeferred(self._slow())

    async def _proxy_stall(self) -> None:
        # A range far ahead of nothing: objects above maxCachedItemSize are
        # proxied; a proxied body that stalls must end, not hang forever.
        for sim in self.h.sims:
            sim.sim.configure_object("1", stall_after=50_000)
        self.h.node.assets.max_cached_item_size = 1000  # type: ignore[union-attr]
        started = time.monotonic()
        outcome = await self.get("1")
        self.assertEqual(outcome.code, 200)
        self.assertFalse(outcome.complete, "a stalled proxy is cut, visibly")
        self.assertLess(time.monotonic() - started, 10.0)
        ranged = await self.get("1", {"range": "bytes=10-20"})
        self.assertEqual((ranged.code, ranged.body), (206, FAILOVER[10:21]), "a range before the stall is served")

    def test_stalled_proxy_is_cut_off(self) -> object:
        return ensureDeferred(self._proxy_stall())


class MetadataFaultTests(TestCase):
    """The storage squid (a real GraphQL server) failing in every way: cached
    objects keep being served, uncached ones get a JSON 503, ``/status``
    says the source is unreachable, and all is well once it answers again."""

    timeout = 60

    async def _start(self) -> None:
        from jsdistributor.metadata.catalog import parse_catalog
        from jsdistributor.testing.graphql_server import GraphQLResource, start_graphql_server, stop_graphql_server
        from jsdistributor.testing.network import build_catalog
        from jsdistributor.metadata.dataset import Dataset

        self.resource = GraphQLResource.for_dialect("squid", Dataset(), reactor)
        self.port, url = await start_graphql_server(reactor, "squid", resource=self.resource)
        self.addCleanup(lambda: stop_graphql_server(self.port) if self.port is not None else None)
        self.h = NodeHarness(Path(self.mktemp()))
        self.client = Client()
        self.addCleanup(self.client.close)
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        objects = {str(i): os.urandom(20_000) for i in range(1, 20)}
        self.objects = objects
        await self.h.start(objects, **FAST, endpoints={"storageSquid": url})
        self.resource.dataset = parse_catalog(build_catalog([s.node_endpoint for s in self.h.sims], objects))

    async def get(self, object_id: str) -> Outcome:
        return await self.client.fetch(f"{self.h.public}/assets/{object_id}")

    async def status(self) -> dict[str, Any]:
        outcome = await self.client.fetch(f"{self.h.public}/status")
        self.assertEqual(outcome.code, 200)
        return json.loads(outcome.body)  # type: ignore[no-any-return]

    async def _modes(self) -> None:
        from jsdistributor.testing.graphql_server import stop_graphql_server

        await self._start()
        first = await self.get("1")
        self.assertEqual((first.code, first.body), (200, self.objects["1"]))
        self.assertEqual((await self.status())["queryNodeStatus"]["status"], "ok")
        uncached = iter(range(2, 20))
        metadata = self.h.node.metadata  # type: ignore[union-attr]
        for mode, delay in [("graphql_error", 0), ("http_500", 0), ("garbage", 0), ("stall", 0), (None, 3.0), ("down", 0)]:
            if mode == "down":
                await stop_graphql_server(self.port)
                self.port = None
            else:
                self.resource.fail_mode = mode
                self.resource.response_delay = delay
            what = mode or f"{delay}s slow"
            _forget_status(metadata)
            started = time.monotonic()
            hit = await self.get("1")
            self.assertEqual((hit.code, hit.body, hit.header("x-cache")), (200, self.objects["1"], "hit"), what)
            self.assertLess(time.monotonic() - started, 1.0, f"{what}: a hit never waits for the metadata source")
            object_id = str(next(uncached))
            started = time.monotonic()
            miss = await self.get(object_id)
            self.assertEqual(miss.code, 503, f"{what}: {miss.body[:200]!r}")
            self.assertTrue((miss.header("content-type") or "").startswith("application/json"), what)
            body = json.loads(miss.body)
            self.assertEqual(body["type"], "metadata_unavailable", what)
            self.assertNotIn("Traceback", body["message"])
            self.assertLess(time.monotonic() - started, 5.0, f"{what}: bounded by the outbound timeout")
            status = await self.status()
            self.assertEqual(status["queryNodeStatus"]["status"], "unreachable", what)
            self.assertTrue(status["queryNodeStatus"]["error"], what)

    def test_metadata_source_failing_in_every_way(self) -> object:
        return ensureDeferred(self._modes())

    async def _recovery(self) -> None:
        await self._start()
        self.resource.fail_mode = "http_500"
        miss = await self.get("2")
        self.assertEqual(miss.code, 503)
        self.resource.fail_mode = None
        _forget_status(self.h.node.metadata)  # type: ignore[union-attr]
        again = await self.get("2")
        self.assertEqual((again.code, again.body), (200, self.objects["2"]), "recovers by itself")
        self.assertEqual((await self.status())["queryNodeStatus"]["status"], "ok")
        self.resource.response_delay = 0.4  # slow, but within the 1 s timeout
        slow = await self.get("3")
        self.assertEqual((slow.code, slow.body), (200, self.objects["3"]), "a slow source is waited for")

    def test_recovers_when_the_source_answers_again(self) -> object:
        return ensureDeferred(self._recovery())


def _forget_status(metadata: Any) -> None:
    """``/status`` answers are reused for 5 s; a test changing the source's
    health does not wait that long."""
    inner = getattr(metadata, "inner", metadata)
    inner._status.cache.clear()


class DiskFaultTests(TestCase):
    """The cache's disk failing under a download (a ``FaultyStore`` swapped
    in before the in-process node starts): the download fails cleanly, its
    readers are cut, no partial file stays, and the node serves on."""

    timeout = 60

    def setUp(self) -> object:
        self.h = NodeHarness(Path(self.mktemp()))
        self.client = Client()
        self.addCleanup(self.client.close)
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))

        def prepare(node: Any) -> None:
            self.store = FaultyStore(node.cache.store)
            node.cache.store = self.store

        return ensureDeferred(self.h.start(OBJECTS, prepare=prepare, **FAST))

    async def get(self, object_id: str) -> Outcome:
        return await self.client.fetch(f"{self.h.public}/assets/{object_id}")

    def leftovers(self) -> list[str]:
        assets = Path(self.h.config.directories.assets)
        return sorted(p.name for p in assets.rglob("*") if p.is_file())

    async def _write_error(self, code: int) -> None:
        warm = await self.get("5")
        self.assertEqual(warm.body, HIT)
        await sleep(0.05)
        self.store.errno = code
        self.store.fail_write_after_bytes = self.store.bytes_written + 100_000
        for sim in self.h.sims:
            sim.sim.configure_object("1", rate=1_000_000)  # several readers join mid-way
        readers = [ensureDeferred(self.get("1")) for _ in range(3)]
        outcomes = [o for _, o in await DeferredList(readers)]
        for outcome in outcomes:
            assert_never_complete_and_wrong(self, outcome, FAILOVER, errno.errorcode[code])
            self.assertFalse(outcome.code == 200 and outcome.complete, "a failed write never ends in a whole body")
            if outcome.code is not None and outcome.code != 200:
                self.assertIn(outcome.code, (502, 503))
        self.assertEqual(self.leftovers(), ["5"], "no partial file stays")
        self.assertGreater(self.store.failures, 0)
        hit = await self.get("5")
        self.assertEqual((hit.code, hit.body), (200, HIT), "the node serves on")
        status = json.loads((await self.client.fetch(f"{self.h.public}/status")).body)
        self.assertEqual(status["downloadsInProgress"], 0)
        self.assertEqual(status["storageUsed"], len(HIT), "the failed download's reservation is given back")
        self.store.fail_write_after_bytes = None  # space freed
        again = await self.get("1")
        self.assertEqual((again.code, again.complete), (200, True))
        self.assertTrue(again.body == FAILOVER)
        self.assertEqual(self.leftovers(), ["1", "5"])

    def test_disk_full_while_writing(self) -> object:
        return ensureDeferred(self._write_error(errno.ENOSPC))

    def test_io_error_while_writing(self) -> object:
        return ensureDeferred(self._write_error(errno.EIO))

    async def _commit_error(self) -> None:
        self.store.fail_commit = True
        outcome = await self.get("6")
        assert_never_complete_and_wrong(self, outcome, OTHER, "commit")
        self.assertFalse(outcome.code == 200 and outcome.complete, "the last byte waits for the commit")
        self.assertEqual(self.leftovers(), [])
        self.store.fail_commit = False
        again = await self.get("6")
        self.assertEqual((again.code, again.body), (200, OTHER))

    def test_commit_fails(self) -> object:
        return ensureDeferred(self._commit_error())

    async def _vanished(self) -> None:
        for object_id, data in (("5", HIT), ("6", OTHER)):
            first = await self.get(object_id)
            self.assertEqual(first.body, data)
        await sleep(0.05)
        assets = Path(self.h.config.directories.assets)
        (assets / "5").unlink()  # deleted behind the node's back
        (assets / "6").write_bytes(OTHER[:1000])  # truncated behind its back
        for object_id, data in (("5", HIT), ("6", OTHER)):
            outcome = await self.get(object_id)
            self.assertEqual((outcome.code, outcome.complete), (200, True), object_id)
            self.assertTrue(outcome.body == data, f"object {object_id} is fetched again, not served broken")
            self.assertEqual(outcome.header("x-cache"), "miss", object_id)
            await sleep(0.05)
            hit = await self.get(object_id)
            self.assertEqual((hit.body == data, hit.header("x-cache")), (True, "hit"))

    def test_cached_file_missing_or_truncated_is_fetched_again(self) -> object:
        return ensureDeferred(self._vanished())

    async def _joins_during_commit(self) -> None:
        from twisted.internet.task import deferLater

        assert self.h.node is not None
        cache = self.h.node.cache

        def slow_commit(work: Any) -> Any:
            work()  # renamed into place at once, but the download is seen done only later
            return deferLater(reactor, 0.5, lambda: None)

        cache._run_blocking = slow_commit  # type: ignore[method-assign]
        first = ensureDeferred(self.get("6"))
        for _ in range(50):
            await sleep(0.02)
            pending = cache.pending_for("6")
            if pending is not None and pending.written == len(OTHER):
                break
        self.assertIsNotNone(cache.pending_for("6"), "the download still looks pending")
        joined = await self.get("6")
        self.assertEqual((joined.code, joined.complete), (200, True), joined.error)
        self.assertTrue(joined.body == OTHER, "a reader joining while the commit runs gets every byte")
        self.assertTrue((await first).body == OTHER)

    def test_a_reader_joining_while_the_commit_runs(self) -> object:
        return ensureDeferred(self._joins_during_commit())


class _DaemonCase(TestCase):
    """A twistd-started node with one storage-node simulator."""

    timeout = 120

    async def _start_network(self, objects: dict[str, bytes], catalog: str = "catalog.yml", **config: Any) -> None:
        from jsdistributor.metadata.catalog import write_catalog
        from jsdistributor.testing.network import build_catalog, free_port, node_config_document
        from jsdistributor.testing.storage_sim import start_storage_sim

        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.objects = objects
        self.sim = await start_storage_sim(reactor, objects=objects)
        self.addCleanup(lambda: ensureDeferred(self.sim.stop()))
        write_catalog(self.dir / catalog, build_catalog([self.sim.node_endpoint], objects))
        self.public_port, self.operator_port = free_port(), free_port()
        doc = node_config_document(self.dir, catalog, self.public_port, self.operator_port, **config)
        self.config_path = self.dir / "config.json"
        self.config_path.write_text(json.dumps(doc))
        self.client = Client()
        self.addCleanup(self.client.close)

    async def _launch(self) -> Any:
        from jsdistributor.testing.daemon import Daemon, twistd_argv

        self.daemon = Daemon(reactor, twistd_argv(self.config_path))
        daemon = self.daemon
        self.addCleanup(lambda: ensureDeferred(daemon.stop()))
        await self.daemon.wait_for_port(self.public_port)
        return self.daemon

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.public_port}/api/v1{path}"

    async def get(self, object_id: str, headers: dict[str, str] | None = None) -> Outcome:
        return await self.client.fetch(self.url(f"/assets/{object_id}"), headers)

    @property
    def assets(self) -> Path:
        return self.dir / "assets"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"


class ProcessTests(_DaemonCase):
    """twistd: start-up errors, kill -9 at awkward moments, SIGTERM."""

    async def _assets_under_a_file(self) -> None:
        import subprocess

        from jsdistributor.testing.daemon import twistd_argv

        await self._start_network({"1": b"x"})
        blocker = self.dir / "a-regular-file"
        blocker.write_text("not a directory")
        doc = json.loads(self.config_path.read_text())
        doc["directories"]["assets"] = str(blocker / "assets")
        self.config_path.write_text(json.dumps(doc))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out = await _in_thread(
            lambda: subprocess.run(twistd_argv(self.config_path), capture_output=True, text=True, env=env, timeout=60)
        )
        text = out.stdout + out.stderr
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("directories.assets: cannot create", text)
        self.assertIn(str(blocker / "assets"), text)
        self.assertNotIn("Traceback", text)

    def test_uncreatable_assets_directory_is_a_clear_startup_error(self) -> object:
        return ensureDeferred(self._assets_under_a_file())

    async def _read_only_assets(self) -> None:
        import subprocess

        from jsdistributor.testing.daemon import twistd_argv

        if os.geteuid() == 0:
            self.skipTest("running as root: chmod cannot make a directory unwritable for root "
                          "(the regular-file variant above covers the start-up error)")
        await self._start_network({"1": b"x"})
        self.assets.mkdir()
        self.assets.chmod(0o500)
        self.addCleanup(self.assets.chmod, 0o700)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out = await _in_thread(
            lambda: subprocess.run(twistd_argv(self.config_path), capture_output=True, text=True, env=env, timeout=60)
        )
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("is not writable", out.stdout + out.stderr)

    def test_read_only_assets_directory_is_a_clear_startup_error(self) -> object:
        return ensureDeferred(self._read_only_assets())

    async def _kill_during_state_save(self) -> None:
        from jsdistributor.cache.state import load_state

        data = os.urandom(1000)
        # A large state: 20,000 small cached objects (adopted from the disk
        # at start-up), so one save takes long enough to be caught in the act.
        small = {str(i): b"%d" % i for i in range(100, 20_100)}
        await self._start_network({"1": data, **small}, catalog="catalog.json", **{"intervals.saveCacheState": 1})
        self.assets.mkdir()
        for object_id, content in small.items():
            (self.assets / object_id).write_bytes(content)
        caught = False
        for attempt in range(6):
            await self._launch()
            await self.daemon.wait_for_port(self.public_port)
            tmp = await _in_thread(lambda: _kill_when_file_appears(self.daemon, self.state_dir, ".tmp", 8.0))
            await self.daemon.wait()
            leftovers = list(self.state_dir.glob("*.tmp"))
            caught = caught or bool(leftovers and tmp)
            state = self.state_dir / "jsdistributor-cache.json"
            if state.exists():
                entries = load_state(state)  # whole: the old file or the new one, never half of one
                self.assertIsNotNone(entries)
            if caught:
                break
        self.assertTrue(caught, "no kill landed during a state save (the test could not do its job)")
        await self._launch()
        hit = await self.get("12345")
        self.assertEqual((hit.code, hit.body, hit.header("x-cache")), (200, b"12345", "hit"))
        miss = await self.get("1")
        self.assertEqual((miss.code, miss.body), (200, data))
        self.assertEqual(list(self.state_dir.glob("*.tmp")), [], "a crashed save's leftovers are removed")
        self.assertEqual(await self.daemon.stop(), 0, self.daemon.output[-3000:])

    def test_kill_9_during_a_state_save(self) -> object:
        return ensureDeferred(self._kill_during_state_save())

    async def _corrupt_state(self) -> None:
        data = os.urandom(5000)
        await self._start_network({"1": data})
        await self._launch()
        self.assertEqual((await self.get("1")).body, data)
        self.assertEqual(await self.daemon.stop(), 0)
        state = self.state_dir / "jsdistributor-cache.json"
        text = state.read_text()
        state.write_text(text[: len(text) // 2])  # as a non-atomic writer killed mid-way would leave it
        await self._launch()
        hit = await self.get("1")
        self.assertEqual((hit.code, hit.body, hit.header("x-cache")), (200, data, "hit"))
        self.assertEqual(await self.daemon.stop(), 0)
        self.assertIn("cache state is corrupt", self.daemon.output)
        self.assertIn("rebuilding it from the files", self.daemon.output)

    def test_a_truncated_state_file_is_rebuilt_with_a_warning(self) -> object:
        return ensureDeferred(self._corrupt_state())

    async def _kill_during_eviction(self) -> None:
        import random

        objects = {str(i): os.urandom(50_000 + i) for i in range(1, 41)}
        await self._start_network(objects, storage="600K")
        rng = random.Random(11)
        evictions = 0
        for round_ in range(3):
            await self._launch()
            order = list(objects)
            rng.shuffle(order)
            fetches = [ensureDeferred(self.get(i)) for i in order]
            await sleep(rng.uniform(0.05, 0.4))
            self.daemon.kill()
            await self.daemon.wait()
            results = await DeferredList(fetches, consumeErrors=True)
            for (ok, outcome), object_id in zip(results, order):
                if ok:
                    assert_never_complete_and_wrong(self, outcome, objects[object_id], f"round {round_} {object_id}")
            evictions += self.daemon.output.count("evicted object")
            for path in self.assets.iterdir():
                if path.is_file():
                    self.assertTrue(path.read_bytes() == objects[path.name], f"{path.name} on disk is whole and right")
        self.assertGreater(evictions, 0, "the kills landed while objects were being evicted")
        await self._launch()
        for object_id, data in objects.items():
            outcome = await self.get(object_id)
            self.assertEqual((outcome.code, outcome.complete), (200, True), object_id)
            self.assertTrue(outcome.body == data, f"object {object_id} after the kills")
        status = json.loads((await self.client.fetch(self.url("/status"))).body)
        self.assertLessEqual(status["storageUsed"], 600 * 1024)
        self.assertEqual([p.name for p in (self.assets / ".tmp").iterdir()], [])
        self.assertEqual(await self.daemon.stop(), 0)

    def test_kill_9_during_downloads_and_evictions(self) -> object:
        return ensureDeferred(self._kill_during_eviction())

    async def _sigterm(self) -> None:
        big = os.urandom(30_000_000)
        pending = os.urandom(2_000_000)
        await self._start_network({"1": big, "2": pending})
        await self._launch()
        warm = await self.get("1")
        self.assertEqual(warm.body == big, True)
        self.sim.sim.configure_object("2", rate=200_000)  # a download that takes 10 s
        port = self.public_port
        finishing = _in_thread(lambda: _slow_read(port, "/api/v1/assets/1", 15_000_000))  # ~2 s
        too_slow = _in_thread(lambda: _slow_read(port, "/api/v1/assets/1", 1_000_000))  # ~30 s
        downloading = ensureDeferred(self.get("2"))
        await sleep(0.5)
        started = time.monotonic()
        self.daemon.signal("TERM")
        code = await self.daemon.wait()
        took = time.monotonic() - started
        self.assertEqual(code, 0, self.daemon.output[-3000:])
        got, complete = await finishing
        self.assertTrue(complete and got == len(big), f"an in-flight hit finishes within the grace period ({got})")
        got, complete = await too_slow
        self.assertFalse(complete, "a response slower than the grace period is cut, not waited for")
        outcome = await downloading
        self.assertFalse(outcome.code == 200 and outcome.complete, "a pending download is abandoned")
        from jsdistributor.node import STOP_GRACE_SECONDS

        self.assertLess(took, STOP_GRACE_SECONDS + 4.0, "the stop is bounded")
        self.assertGreater(took, 1.0, "in-flight responses were waited for")
        self.assertIn("cache state saved", self.daemon.output)
        self.assertNotIn("Traceback", self.daemon.output)
        self.assertFalse((self.assets / "2").exists())
        self.assertEqual(list((self.assets / ".tmp").iterdir()), [])

    def test_sigterm_finishes_in_flight_hits_and_abandons_downloads(self) -> object:
        return ensureDeferred(self._sigterm())


def _in_thread(fn: Any) -> Any:
    from twisted.internet.threads import deferToThread

    return deferToThread(fn)


def _kill_when_file_appears(daemon: Any, directory: Path, suffix: str, within: float) -> bool:
    """SIGKILL the daemon the moment a file ending in ``suffix`` shows up in
    ``directory`` (True), or after ``within`` seconds (False)."""
    import signal

    deadline = time.monotonic() + within
    pid = daemon.process.pid
    while time.monotonic() < deadline:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            names = []
        if any(n.endswith(suffix) for n in names):
            os.kill(pid, signal.SIGKILL)
            return True
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)
    return False


def _slow_read(port: int, path: str, rate: int) -> tuple[int, bool]:
    """GET ``path`` reading about ``rate`` bytes a second with a small
    receive buffer; (body bytes, whether the body was complete)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(40)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return 0, False
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
        got = len(body)
        step = 32 * 1024
        started = time.monotonic()
        try:
            while got < length:
                chunk = s.recv(step)
                if not chunk:
                    break
                got += len(chunk)
                ahead = got / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except (ConnectionResetError, socket.timeout):
            pass
        return got, got == length


class TimeoutStormTests(TestCase):
    """The original node died of heap exhaustion when storage nodes stopped
    answering under load. Here (CI scale; ``bench/storm.py`` is the full
    size): every storage node stalls while 100 clients ask for 100 uncached
    objects. Requests end within their timeouts with clear errors, hits keep
    being served quickly, memory and descriptors stay bounded, and the node
    recovers by itself when the storage nodes answer again."""

    timeout = 90

    CLIENTS = 100
    PENDING_TIMEOUT = 8

    def setUp(self) -> object:
        self.objects = {str(i): os.urandom(20_000) for i in range(1, self.CLIENTS + 1)}
        self.objects["999"] = HIT
        self.h = NodeHarness(Path(self.mktemp()))
        self.client = Client()
        self.addCleanup(self.client.close)
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        return ensureDeferred(
            self.h.start(self.objects, **FAST, **{"limits.pendingDownloadTimeoutSec": self.PENDING_TIMEOUT})
        )

    async def _storm(self) -> None:
        from .faultkit import vm_rss_kib

        url = f"{self.h.public}/assets/"
        warm = await self.client.fetch(url + "999")
        self.assertEqual(warm.body, HIT)
        fds_before = len(os.listdir("/proc/self/fd"))
        rss_before = vm_rss_kib()
        for sim in self.h.sims:
            sim.sim.configure(stall_after=0)  # headers, then nothing
        started = time.monotonic()
        ended: dict[str, float] = {}

        async def one(object_id: str) -> Outcome:
            outcome = await self.client.fetch(url + object_id)
            ended[object_id] = time.monotonic() - started
            return outcome

        storm = [ensureDeferred(one(str(i))) for i in range(1, self.CLIENTS + 1)]
        hit_latencies = []
        peak_fds = peak_rss = 0
        while len(ended) < self.CLIENTS and time.monotonic() - started < 60:
            t0 = time.monotonic()
            hit = await self.client.fetch(url + "999")
            hit_latencies.append(time.monotonic() - t0)
            self.assertEqual((hit.code, hit.body == HIT), (200, True), "hits are served during the storm")
            peak_fds = max(peak_fds, len(os.listdir("/proc/self/fd")))
            peak_rss = max(peak_rss, vm_rss_kib())
            await sleep(0.2)
        results = await DeferredList(storm, fireOnOneErrback=True)
        kinds: dict[str, int] = {}
        for (_, outcome), object_id in zip(results, range(1, self.CLIENTS + 1)):
            assert_never_complete_and_wrong(self, outcome, self.objects[str(object_id)], f"storm {object_id}")
            self.assertFalse(outcome.code == 200 and outcome.complete, "no storage node sent a byte")
            self.assertEqual(outcome.code, 502, f"a clear error status, not {outcome.code}")
            kind = json.loads(outcome.body)["type"]
            kinds[kind] = kinds.get(kind, 0) + 1
        self.assertEqual(set(kinds), {"download_failed"})
        slowest = max(ended.values())
        self.assertLess(slowest, self.PENDING_TIMEOUT + 3, "every request ended within pendingDownloadTimeoutSec")
        self.assertLess(max(hit_latencies), 1.0, f"hits stay fast (max {max(hit_latencies):.3f}s)")
        self.assertLess(peak_rss - rss_before, 64 * 1024, "memory stays bounded (< 64 MiB growth)")
        self.assertLess(peak_fds - fds_before, 3 * self.CLIENTS + 50, "descriptors stay bounded")
        # The storage nodes come back: the node recovers by itself.
        for sim in self.h.sims:
            sim.sim.clear_knobs()
        for object_id in ("1", "50", str(self.CLIENTS)):
            outcome = await self.client.fetch(url + object_id)
            self.assertEqual((outcome.code, outcome.complete), (200, True), outcome.error)
            self.assertTrue(outcome.body == self.objects[object_id])
        await sleep(0.5)
        status = json.loads((await self.client.fetch(f"{self.h.public}/status")).body)
        self.assertEqual(status["downloadsInProgress"], 0)
        self.assertLess(len(os.listdir("/proc/self/fd")) - fds_before, 20, "no descriptor leaked")
        self.storm_figures = {
            "slowest": slowest,
            "hit_max": max(hit_latencies),
            "rss_growth_kib": peak_rss - rss_before,
            "peak_fds": peak_fds - fds_before,
        }

    def test_every_storage_node_stalls_under_load(self) -> object:
        return ensureDeferred(self._storm())


class ProxyStreamTests(SynchronousTestCase):
    """``ProxyStream`` timers and window handling, on a Clock."""

    def make(self, window: Any, offset: int = 0, expected_hash: str | None = None, length: int | None = None) -> Any:
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from jsdistributor.proxy import ProxyStream

        self.clock = Clock()
        self.consumer = StringTransport()
        self.aborted: list[bool] = []
        stream = ProxyStream(
            self.consumer, window, offset, expected_hash, lambda: self.aborted.append(True),
            reactor=self.clock, idle_timeout=5.0, send_timeout=60.0, upstream_length=length,
        )
        self.upstream = _UpstreamTransport()
        stream.makeConnection(self.upstream)
        return stream

    def test_stops_reading_once_the_window_is_in(self) -> None:
        from jsdistributor.ranges import ByteRange

        data = os.urandom(10_000)
        stream = self.make(ByteRange(100, 200, len(data)), offset=0, length=len(data))  # Range ignored: 200
        stream.dataReceived(data[:4096])
        self.assertEqual(self.consumer.value(), data[100:200])
        self.successResultOf(stream.done)
        self.assertTrue(self.upstream.stopped, "the rest of the object is not read")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_body_ending_at_the_window_is_left_to_end(self) -> None:
        from jsdistributor.ranges import ByteRange

        data = os.urandom(1000)
        stream = self.make(ByteRange(100, 200, len(data)), offset=100, length=100)
        stream.dataReceived(data[100:200])
        self.successResultOf(stream.done)
        self.assertFalse(self.upstream.stopped, "the connection can be reused")

    def test_upstream_silence_cuts_the_client(self) -> None:
        from jsdistributor.proxy import ProxyFailed
        from jsdistributor.ranges import ByteRange

        stream = self.make(ByteRange(0, 1000, 1000), expected_hash=content_hash(b"x" * 1000))
        stream.dataReceived(b"x" * 500)
        self.clock.advance(4.9)
        stream.dataReceived(b"x" * 100)
        self.clock.advance(4.9)
        self.assertNoResult(stream.done)
        self.clock.advance(0.2)
        self.failureResultOf(stream.done, ProxyFailed)
        self.assertEqual(self.aborted, [True])
        self.assertTrue(self.upstream.stopped)

    def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(self) -> None:
        from jsdistributor.proxy import ProxyFailed
        from jsdistributor.ranges import ByteRange

        stream = self.make(ByteRange(0, 1000, 1000))
        stream.dataReceived(b"x" * 100)
        stream.pauseProducing()
        self.assertTrue(self.upstream.paused)
        self.clock.advance(30)  # upstream silence while paused is ours, not its fault
        self.assertNoResult(stream.done)
        stream.resumeProducing()
        stream.pauseProducing()
        self.clock.advance(59)
        self.assertNoResult(stream.done)
        self.clock.advance(2)
        self.failureResultOf(stream.done, ProxyFailed)
        self.assertTrue(self.upstream.stopped, "its upstream connection is given back")


class _UpstreamTransport:
    def __init__(self) -> None:
        self.stopped = self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class StartOverTests(SynchronousTestCase):
    """A source sending wrong bytes: the download starts over from byte 0 on
    the next source (``reopen_temp``); readers given unverified bytes are cut."""

    def test_hash_mismatch_starts_over_elsewhere(self) -> None:
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from twisted.python.filepath import FilePath

        from jsdistributor.cache.pending import PendingDownload, State
        from jsdistributor.cache.readers import ReaderAborted, StreamReader
        from jsdistributor.model import DataObject

        from .test_pending import A, B, DATA, FileTemp, Upstream, slot

        clock = Clock()
        directory = FilePath(self.mktemp())
        directory.makedirs()
        temps: list[FileTemp] = []

        def new_temp() -> FileTemp:
            sub = directory.child(str(len(temps)))
            sub.makedirs()
            temps.append(FileTemp(sub))
            return temps[-1]

        upstream = Upstream([A, B])
        failed: list[str] = []
        p = PendingDownload(
            obj=DataObject("7", len(DATA), content_hash(DATA), True, (A, B)),
            reactor=clock,
            temp=None,
            reopen_temp=new_temp,
            find_sources=upstream.find_sources,
            fetch=upstream.fetch,
            acquire_slot=slot,
            idle_timeout=5.0,
            total_timeout=100.0,
            on_source_failed=lambda endpoint: failed.append(endpoint.url),
        )
        result = p.start()
        self.assertEqual(len(temps), 1, "the temporary is opened once the slot is ours")
        bad = upstream.answer()
        corrupt = bytes([DATA[0] ^ 0xFF]) + DATA[1:]
        bad.send(corrupt[:100_000])
        consumer = StringTransport()
        aborted: list[bool] = []
        path = temps[0].path.path
        reader = StreamReader(clock, consumer, lambda: open(path, "rb"), 0, len(DATA), p, 30.0,
                              abort=lambda: aborted.append(True))
        reader.start()
        bad.send(corrupt[100_000:])
        bad.finish()
        self.failureResultOf(reader.done, ReaderAborted)
        self.assertEqual(aborted, [True], "a reader given unverified bytes is cut")
        self.assertEqual(failed, [A.url])
        self.assertTrue(temps[0].discarded)
        self.assertEqual([(u, o) for u, o, _ in upstream.fetches], [(A.url, 0), (B.url, 0)], "from byte 0")
        good = upstream.answer()
        good.send(DATA)
        good.finish()
        self.assertTrue(self.successResultOf(result))
        self.assertEqual(p.state, State.COMPLETED)
        self.assertEqual(temps[1].final.getContent(), DATA)
