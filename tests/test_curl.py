"""Real clients: curl against a twistd-started node with simulated storage
nodes -- full, ranged and resumed (``-C -``) downloads, byte-identical to
the source; a client that gives up mid-body disturbs nobody."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from jsdistributor.metadata.catalog import write_catalog
from jsdistributor.testing.daemon import Daemon, twistd_argv
from jsdistributor.testing.network import build_catalog, free_port, node_config_document
from jsdistributor.testing.storage_sim import start_storage_sim

DATA = {"1": os.urandom(3_000_000), "2": os.urandom(2_000_000), "3": os.urandom(500_000)}


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60)


class CurlTests(TestCase):
    timeout = 120
    #: publicApi.workers of the node under test.
    workers = 0

    async def _start(self) -> None:
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.sims = [await start_storage_sim(reactor, objects=DATA) for _ in range(2)]
        for sim in self.sims:
            self.addCleanup(lambda s=sim: ensureDeferred(s.stop()))
        write_catalog(self.dir / "catalog.yml", build_catalog([s.node_endpoint for s in self.sims], DATA))
        self.port = free_port()
        doc = node_config_document(self.dir, "catalog.yml", self.port, free_port(), **{"publicApi.workers": self.workers})
        (self.dir / "config.json").write_text(json.dumps(doc))
        self.daemon = Daemon(reactor, twistd_argv(self.dir / "config.json"))
        self.addCleanup(lambda: ensureDeferred(self.daemon.stop()))
        await self.daemon.wait_for_port(self.port)
        for _ in range(200):
            if self.daemon.output.count("listening on port") >= self.workers:
                break
            await deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("the hit workers did not start:\n" + self.daemon.output[-3000:])

    def url(self, object_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/assets/{object_id}"

    def gets(self, object_id: str) -> int:
        return sum(len(s.sim.requests_for(object_id, "GET")) for s in self.sims)

    async def _full_ranged_resumed(self) -> None:
        await self._start()
        out = self.dir / "full"
        done = await deferToThread(curl, "-D", str(self.dir / "headers"), "-o", str(out), self.url("1"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(out.read_bytes(), DATA["1"], "a miss, byte-identical")
        self.assertIn(b"x-cache: miss", (self.dir / "headers").read_bytes().lower())

        done = await deferToThread(curl, "-r", "1000-1999", self.url("1"))
        self.assertEqual(done.stdout, DATA["1"][1000:2000], "a ranged hit")

        partial = self.dir / "resumed"
        partial.write_bytes(DATA["1"][:1_234_567])
        done = await deferToThread(curl, "-C", "-", "-o", str(partial), self.url("1"))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(partial.read_bytes(), DATA["1"], "curl -C - resumes to the whole object")

        done = await deferToThread(curl, "-I", self.url("2"))
        self.assertIn(b"content-length: %d" % len(DATA["2"]), done.stdout.lower())
        self.assertEqual(self.gets("2"), 0, "HEAD starts no download")

        done = await deferToThread(curl, "-C", "1999990", "-o", "-", self.url("2"))
        self.assertEqual(done.stdout, DATA["2"][1999990:], "a resumed miss")
        self.assertEqual(self.gets("1"), 1)

    def test_full_ranged_and_resumed_downloads(self) -> object:
        return ensureDeferred(self._full_ranged_resumed())

    async def _quitter(self) -> None:
        await self._start()
        for sim in self.sims:
            sim.sim.configure(rate=1_000_000)  # ~0.5 s for object 3... and longer for 1
        quitter = deferToThread(curl, "--max-time", "0.5", "-o", os.devnull, self.url("1"))
        stayers = [deferToThread(curl, self.url("1")) for _ in range(3)]
        results = await DeferredList([quitter, *stayers])
        self.assertNotEqual(results[0][1].returncode, 0, "the quitter was cut by its own timeout")
        for ok, done in results[1:]:
            self.assertEqual(done.stdout, DATA["1"], "the others got every byte")
        self.assertEqual(self.gets("1"), 1, "one download for everybody")
        code = await self.daemon.stop()
        self.assertEqual(code, 0)

    def test_a_client_quitting_mid_body_disturbs_nobody(self) -> object:
        return ensureDeferred(self._quitter())


class CurlThroughWorkersTests(CurlTests):
    """The same, against a node with two hit workers: connections land on
    any of the three processes (hits served by workers with sendfile,
    misses relayed to the node)."""

    workers = 2
