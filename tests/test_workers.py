"""Hit workers (``publicApi.workers``) on a real twistd node: workers serve
hits, misses still download once, stop-api/start-api and shutdown reach
every process, a dead worker is replaced, and workers never outlive the
node."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jsdistributor.jwtauth import sign_operator_request
from jsdistributor.metadata.catalog import write_catalog
from jsdistributor.testing.daemon import Daemon, twistd_argv
from jsdistributor.testing.network import SECRET, build_catalog, free_port, node_config_document
from jsdistributor.testing.storage_sim import start_storage_sim

from .bodies import sleep

DATA = {"1": os.urandom(700_000), "2": os.urandom(150_000), "3": b"three"}
WORKERS = 2


def worker_pids(parent: int) -> list[int]:
    """Pids of the hit workers the process ``parent`` started."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"jsdistributor.workers.process" in cmdline:
            pids.append(int(entry))
    return sorted(pids)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class WorkerNodeTests(TestCase):
    timeout = 120

    async def _start(self, **config: object) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.sims = [await start_storage_sim(reactor, objects=DATA) for _ in range(2)]
        for sim in self.sims:
            self.addCleanup(lambda s=sim: ensureDeferred(s.stop()))
        write_catalog(self.dir / "catalog.yml", build_catalog([s.node_endpoint for s in self.sims], DATA))
        self.port, self.operator_port = free_port(), free_port()
        doc = node_config_document(self.dir, "catalog.yml", self.port, self.operator_port, **config)
        doc["publicApi"]["workers"] = WORKERS
        (self.dir / "config.json").write_text(json.dumps(doc))
        # A new connection per request: the kernel spreads them over the processes.
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.daemon = Daemon(reactor, twistd_argv(self.dir / "config.json"))
        self.addCleanup(lambda: ensureDeferred(self.daemon.stop()))
        await self.daemon.wait_for_port(self.port)
        await self.daemon.wait_for_port(self.operator_port)
        await self._until(lambda: self.daemon.output.count("listening on port") >= WORKERS, "workers listening")

    async def _until(self, check, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}; node output:\n{self.daemon.output[-3000:]}")
            await sleep(0.1)

    def url(self, object_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/assets/{object_id}"

    def gets(self, object_id: str) -> int:
        return sum(len(s.sim.requests_for(object_id, "GET")) for s in self.sims)

    async def fetch(self, object_id: str, headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, dict[str, str], bytes]:
        r = await self.http.get(self.url(object_id), headers=headers, timeout=30)
        body = await treq.content(r)
        return r.code, {k.decode().lower(): v[0].decode() for k, v in r.headers.getAllRawHeaders()}, body

    async def operate(self, route: str) -> int:
        token = sign_operator_request(SECRET, f"/api/v1/{route}", {}, time.time())
        r = await self.http.post(
            f"http://127.0.0.1:{self.operator_port}/api/v1/{route}",
            data=b"{}",
            headers={b"authorization": [f"bearer {token}".encode()], b"content-type": [b"application/json"]},
        )
        await treq.content(r)
        return r.code

    async def metrics(self) -> dict[str, float]:
        r = await self.http.get(f"http://127.0.0.1:{self.operator_port}/metrics")
        text = (await treq.content(r)).decode()
        values = {}
        for line in text.splitlines():
            match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
            if match:
                self.assertNotIn(match.group(1), values, "a series appears twice: Prometheus rejects the scrape")
                values[match.group(1)] = float(match.group(2))
        return values

    async def worker_answers(self) -> dict[str, float]:
        m = await self.metrics()
        return {w: m.get(f'jsdistributor_worker_requests_total{{worker="{w}"}}', 0.0) for w in ("1", "2")}

    async def public_is_open(self) -> bool:
        try:
            r = await self.http.get(f"http://127.0.0.1:{self.port}/api/v1/status", timeout=5)
            await treq.content(r)
            return True
        except Exception:
            return False

    async def _hits_and_misses(self) -> None:
        await self._start()
        # 30 viewers at once ask for an object nobody has: one download.
        answers = await DeferredList([ensureDeferred(self.fetch("1")) for _ in range(30)], consumeErrors=True)
        for ok, answer in answers:
            self.assertTrue(ok, answer)
            code, headers, body = answer
            self.assertEqual(code, 200)
            self.assertEqual(body, DATA["1"], "a miss relayed by a worker arrives whole")
        self.assertEqual(self.gets("1"), 1, "each object is downloaded once per machine")

        # Hits: every process answers some (new connections are spread).
        for _ in range(40):
            code, headers, body = await self.fetch("1")
            self.assertEqual((code, headers["x-cache"], body), (200, "hit", DATA["1"]))
        code, headers, body = await self.fetch("1", {b"range": [b"bytes=1000-1999"]})
        self.assertEqual((code, headers["content-range"], body), (206, "bytes 1000-1999/700000", DATA["1"][1000:2000]))
        code, headers, body = await self.fetch("1", {b"if-none-match": [headers["etag"].encode()]})
        self.assertEqual(code, 304)
        self.assertEqual(self.gets("1"), 1)

        # Workers report every second: both answered some hits themselves,
        # and the node's hit counter includes theirs (40 + the range + the 304).
        async def reported() -> tuple[dict[str, float], float]:
            m = await self.metrics()
            answered = {w: m.get(f'jsdistributor_worker_requests_total{{worker="{w}"}}', 0.0) for w in ("1", "2")}
            return answered, m['jsdistributor_cache_requests_total{result="hit"}']

        deadline = time.monotonic() + 10
        while True:
            answered, hits = await reported()
            if all(n > 0 for n in answered.values()) and hits >= 42:
                break
            self.assertLess(time.monotonic(), deadline, f"after 10 s: answered by the workers {answered}, hits {hits} of 42")
            await sleep(0.2)

        # What only the node answers goes through: errors, status, HEAD of a miss.
        r = await self.http.get(f"http://127.0.0.1:{self.port}/api/v1/assets/999")
        self.assertEqual(r.code, 404)
        self.assertEqual(json.loads(await treq.content(r))["type"], "not_found")
        r = await self.http.get(f"http://127.0.0.1:{self.port}/api/v1/status")
        self.assertEqual(json.loads(await treq.content(r))["objectsInCache"], 1)
        r = await self.http.head(self.url("2"))
        self.assertEqual((r.code, r.headers.getRawHeaders(b"content-length")), (200, [b"150000"]))
        self.assertEqual(self.gets("2"), 0, "HEAD starts no download")

        code = await self.daemon.stop()
        self.assertEqual(code, 0, self.daemon.output[-3000:])

    def test_workers_serve_hits_and_relay_misses_downloaded_once(self) -> object:
        return ensureDeferred(self._hits_and_misses())

    async def _stop_start(self) -> None:
        await self._start()
        await self.fetch("2")
        self.assertEqual(await self.operate("stop-api"), 200)
        for _ in range(10):
            if await self.public_is_open():
                import subprocess

                listeners = subprocess.run(["ss", "-ltnpe", f"sport = :{self.port}"], capture_output=True, text=True).stdout
                self.fail(f"a process accepts connections after stop-api:\n{listeners}\n{self.daemon.output[-4000:]}")
        self.assertEqual(await self.operate("start-api"), 200)
        before = await self.worker_answers()
        for _ in range(30):
            code, headers, body = await self.fetch("2")
            self.assertEqual((code, headers["x-cache"], body), (200, "hit", DATA["2"]))
        deadline = time.monotonic() + 10
        while True:
            after = await self.worker_answers()
            if all(after[w] > before[w] for w in after):
                break
            self.assertLess(time.monotonic(), deadline, f"a worker does not listen again: {before} -> {after}")
            await sleep(0.2)

    def test_stop_api_and_start_api_reach_every_worker(self) -> object:
        return ensureDeferred(self._stop_start())

    async def _worker_dies(self) -> None:
        await self._start()
        pids = worker_pids(self.daemon.process.pid)
        self.assertEqual(len(pids), WORKERS)
        os.kill(pids[0], signal.SIGKILL)
        await self._until(lambda: "hit worker 1 ended" in self.daemon.output or "hit worker 2 ended" in self.daemon.output, "the node to notice")
        await self._until(lambda: len(worker_pids(self.daemon.process.pid)) == WORKERS and pids[0] not in worker_pids(self.daemon.process.pid), "a new worker")
        await self._until(lambda: self.daemon.output.count("listening on port") >= WORKERS + 1, "the new worker listening")
        for _ in range(20):
            code, headers, body = await self.fetch("1")
            self.assertEqual((code, body), (200, DATA["1"]))
        m = await self.metrics()
        self.assertEqual(m.get("jsdistributor_worker_restarts_total"), 1.0)

        # SIGTERM: the node stops its workers and exits 0.
        pids = worker_pids(self.daemon.process.pid)
        code = await self.daemon.stop()
        self.assertEqual(code, 0, self.daemon.output[-3000:])
        self.assertFalse([pid for pid in pids if alive(pid)], "workers outlived the node")
        self.assertFalse(await self.public_is_open())

    def test_a_dead_worker_is_replaced_and_shutdown_ends_them_all(self) -> object:
        return ensureDeferred(self._worker_dies())

    async def _everyone_terminated(self) -> None:
        # systemd's default KillMode signals every process of the unit:
        # the workers leave their stop to the node, which exits 0 and
        # replaces nobody.
        await self._start()
        await self.fetch("1")
        pids = worker_pids(self.daemon.process.pid)
        self.assertEqual(len(pids), WORKERS)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        self.daemon.signal("TERM")
        code = await self.daemon.ended
        self.assertEqual(code, 0, self.daemon.output[-3000:])
        self.assertNotIn("starting it again", self.daemon.output)
        deadline = time.monotonic() + 10
        while [pid for pid in pids if alive(pid)]:
            self.assertLess(time.monotonic(), deadline, "workers outlived the node")
            await sleep(0.1)
        self.assertIn("hit workers stopped", self.daemon.output)

    def test_sigterm_to_every_process_is_one_graceful_stop(self) -> object:
        return ensureDeferred(self._everyone_terminated())

    async def _node_killed(self) -> None:
        await self._start()
        pids = worker_pids(self.daemon.process.pid)
        self.assertEqual(len(pids), WORKERS)
        self.daemon.signal("KILL")
        await self.daemon.ended
        deadline = time.monotonic() + 10
        while [pid for pid in pids if alive(pid)]:
            self.assertLess(time.monotonic(), deadline, "workers outlived a killed node")
            await sleep(0.1)
        self.assertFalse(await self.public_is_open(), "nobody holds the public port")

    def test_workers_exit_when_the_node_is_killed(self) -> object:
        return ensureDeferred(self._node_killed())
