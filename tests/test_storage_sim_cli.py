"""``jsdistributor storage-sim`` and the simulator's ``/api/v1/_stats``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import treq
import yaml
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jsdistributor.cache.hashing import content_hash
from jsdistributor.cli import main
from jsdistributor.demo.runner import source_root
from jsdistributor.metadata.catalog import parse_catalog
from jsdistributor.storage_sim_cli import catalog_for_directory
from jsdistributor.testing.storage_sim import CHUNK_SIZE, start_storage_sim

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
DATA = os.urandom(3 * CHUNK_SIZE + 100)


class CatalogForDirectoryTests(SynchronousTestCase):
    def test_objects_named_by_id_only(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "7").write_bytes(PNG)
        (directory / "12").write_bytes(DATA)
        (directory / "0").write_bytes(b"")
        (directory / "notes.txt").write_bytes(b"not an object")
        (directory / "sub").mkdir()
        document = catalog_for_directory(directory, "http://127.0.0.1:9/", "3")
        self.assertEqual(document["storageNodes"], {"3": "http://127.0.0.1:9/"})
        objects = {o["id"]: o for o in document["bags"]["dynamic:channel:1"]["objects"]}
        self.assertEqual(list(objects), ["0", "7", "12"])
        self.assertEqual((objects["12"]["size"], objects["12"]["ipfsHash"]), (len(DATA), content_hash(DATA)))
        self.assertEqual(objects["7"]["mimeType"], "image/png")
        self.assertNotIn("mimeType", objects["12"])
        self.assertEqual(objects["0"]["size"], 0)
        self.assertEqual(parse_catalog(document).object_count(), 3)

    def test_missing_directory_is_a_usage_error(self) -> None:
        out, err = io.StringIO(), io.StringIO()
        code = main(["storage-sim", "--dir", self.mktemp()], out, err)
        self.assertEqual(code, 2)
        self.assertIn("is not a directory", err.getvalue())


class StatsTests(TestCase):
    async def _start(self) -> str:
        running = await start_storage_sim(reactor, objects={"5": DATA})
        self.addCleanup(running.stop)
        self.sim = running.sim
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        return running.url

    async def _json(self, method: str, url: str) -> tuple[int, object]:
        response = await self.http.request(method, url)
        return response.code, json.loads(await treq.content(response))

    async def test_counts_gets_and_heads_not_itself(self) -> None:
        url = await self._start()
        for method in ("GET", "GET", "HEAD"):
            response = await self.http.request(method, url + "/files/5")
            await treq.content(response)
        code, stats = await self._json("GET", url + "/_stats")
        self.assertEqual(code, 200)
        assert isinstance(stats, dict)
        self.assertEqual(stats["gets"], {"5": 2})
        self.assertEqual(stats["heads"], {"5": 1})
        self.assertEqual(stats["counts"], {"GET": 2, "HEAD": 1})
        self.assertEqual(stats["bytesSent"], 2 * len(DATA))
        self.assertEqual(stats["sendMarks"], [])
        self.assertEqual(await self._json("POST", url + "/_stats/reset"), (200, {"reset": True}))
        code, stats = await self._json("GET", url + "/_stats")
        assert isinstance(stats, dict)
        self.assertEqual((stats["gets"], stats["bytesSent"]), ({}, 0))
        self.assertEqual((await self._json("GET", url + "/_stats/reset"))[0], 405)
        self.assertEqual((await self._json("GET", url + "/_stats/other"))[0], 404)

    async def test_send_marks(self) -> None:
        url = await self._start()
        self.sim.send_mark_every = CHUNK_SIZE
        before = reactor.seconds()
        response = await self.http.get(url + "/files/5", headers={b"range": [b"bytes=100-"]})
        self.assertEqual(len(await treq.content(response)), len(DATA) - 100)
        code, stats = await self._json("GET", url + "/_stats")
        assert isinstance(stats, dict)
        (record,) = stats["sendMarks"]
        self.assertEqual((record["objectId"], record["start"]), ("5", 100))
        offsets = [offset for offset, _ in record["marks"]]
        self.assertEqual(offsets, [CHUNK_SIZE, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE, len(DATA)])
        times = [t for _, t in record["marks"]]
        self.assertEqual(times, sorted(times))
        self.assertTrue(before <= times[0] <= reactor.seconds())

    def tearDown(self) -> object:
        pool = getattr(self, "pool", None)
        return pool.closeCachedConnections() if pool is not None else None


class StandaloneTests(SynchronousTestCase):
    def test_serves_until_sigterm(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "1").write_bytes(DATA)
        catalog = directory.parent / "catalog.yml"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = source_root()
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        process = subprocess.Popen(
            [sys.executable, "-m", "jsdistributor", "storage-sim", "--dir", str(directory), "--port", "0",
             "--catalog", str(catalog)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        self.assertIn("storage node simulator serving", line)
        url = yaml.safe_load(catalog.read_text())["storageNodes"]["0"]
        self.assertIn(url, line)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url + "api/v1/files/1", timeout=10) as response:
            self.assertEqual(response.read(), DATA)
        with opener.open(url + "api/v1/_stats", timeout=10) as response:
            self.assertEqual(json.load(response)["gets"], {"1": 1})
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(process.wait(1), 0)
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()
