"""The daemon as an operator runs it: ``twistd -n jsdistributor --config``,
its operator API over real sockets, the CLI, and the installed plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jsdistributor.cli import main as cli_main
from jsdistributor.jwtauth import sign_operator_request
from jsdistributor.metadata.catalog import write_catalog
from jsdistributor.testing.daemon import Daemon, twistd_argv
from jsdistributor.testing.network import SECRET, build_catalog, free_port, node_config_document
from jsdistributor.testing.storage_sim import start_storage_sim

ROOT = Path(__file__).resolve().parents[1]
DATA = os.urandom(200_000)


def run(*argv: str, cwd: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, PYTHONPATH=str(ROOT))
    environ.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd or str(ROOT), env=environ, timeout=120)


class CommandLineTests(TestCase):
    def test_twistd_lists_the_plugin(self) -> None:
        out = run(*twistd_argv("x")[:3], "--help")
        self.assertIn("jsdistributor", out.stdout)
        self.assertIn("Joystream distributor node", out.stdout)

    def test_plugin_help_documents_every_option(self) -> None:
        out = run(*twistd_argv("x")[:3], "jsdistributor", "--help")
        self.assertEqual(out.returncode, 0, out.stderr)
        for option in ("--config", "--insecure-dev"):
            self.assertIn(option, out.stdout)

    def test_bad_config_is_one_clear_message_per_problem(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        doc = node_config_document(directory, "catalog.yml", **{"limits.storage": "12X", "publicApi.port": 70000})
        (directory / "config.json").write_text(json.dumps(doc))
        out = run(*twistd_argv(directory / "config.json"))
        self.assertNotEqual(out.returncode, 0)
        text = out.stdout + out.stderr
        self.assertIn("limits.storage: '12X' is not a size like 500G", text)
        self.assertIn("publicApi.port", text)
        self.assertNotIn("Traceback", text)

    def test_weak_secret_needs_insecure_dev(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        doc = node_config_document(directory, "catalog.yml", **{"operatorApi.hmacSecret": "short"})
        (directory / "config.json").write_text(json.dumps(doc))
        out = run(*twistd_argv(directory / "config.json"))
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("at least 16 characters", out.stdout + out.stderr)

    def test_plugin_is_found_in_an_installed_package(self) -> None:
        """A non-editable ``pip install .`` ships twisted/plugins/jsdistributor_plugin.py."""
        target = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, target, True)
        build = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, str(ROOT)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if build.returncode != 0:
            raise SkipTest(f"cannot build the package here: {build.stderr[-500:]}")
        self.assertTrue((Path(target) / "twisted" / "plugins" / "jsdistributor_plugin.py").exists())
        self.assertFalse((Path(target) / "twisted" / "plugins" / "__init__.py").exists())
        probe = (
            "import jsdistributor, sys;"
            "from twisted.plugin import getPlugins;"
            "from twisted.application.service import IServiceMaker;"
            "assert jsdistributor.__file__.startswith(sys.argv[1]), jsdistributor.__file__;"
            "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe, target],
            capture_output=True,
            text=True,
            cwd=tempfile.gettempdir(),
            env=dict(os.environ, PYTHONPATH=target),
            timeout=60,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("'jsdistributor'", out.stdout)


class DaemonTests(TestCase):
    timeout = 120

    async def _start(self, **config: object) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.sim = await start_storage_sim(reactor, objects={"1": DATA, "2": b"two"})
        self.addCleanup(lambda: ensureDeferred(self.sim.stop()))
        write_catalog(self.dir / "catalog.yml", build_catalog([self.sim.node_endpoint], {"1": DATA, "2": b"two"}))
        self.public_port, self.operator_port = free_port(), free_port()
        doc = node_config_document(self.dir, "catalog.yml", self.public_port, self.operator_port, **config)
        self.config_path = self.dir / "config.json"
        self.config_path.write_text(json.dumps(doc))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        await self._launch()

    async def _launch(self) -> None:
        self.daemon = Daemon(reactor, twistd_argv(self.config_path))
        self.addCleanup(lambda: ensureDeferred(self.daemon.stop()))
        await self.daemon.wait_for_port(self.public_port)
        await self.daemon.wait_for_port(self.operator_port)

    def public(self, path: str) -> str:
        return f"http://127.0.0.1:{self.public_port}/api/v1{path}"

    async def operate(self, route: str, body: object = None, token: str | None = None, scheme: str = "bearer") -> tuple[int, dict]:
        req_body = {} if body is None else body
        if token is None:
            token = sign_operator_request(SECRET, f"/api/v1/{route}", req_body, time.time())
        r = await self.http.post(
            f"http://127.0.0.1:{self.operator_port}/api/v1/{route}",
            data=json.dumps(req_body).encode(),
            headers={b"authorization": [f"{scheme} {token}".encode()], b"content-type": [b"application/json"]},
        )
        body_bytes = await treq.content(r)
        return r.code, json.loads(body_bytes) if body_bytes else {}

    async def public_is_open(self) -> bool:
        try:
            r = await self.http.get(self.public("/status"), timeout=5)
            await treq.content(r)
            return True
        except Exception:
            return False

    async def _operator_api(self) -> None:
        await self._start()
        r = await self.http.get(self.public("/status"))
        status = json.loads(await treq.content(r))
        for key in ("id", "version", "workerId", "objectsInCache", "storageLimit", "storageUsed", "uptime",
                    "downloadsInProgress", "nodeEnv", "queryNodeStatus"):
            self.assertIn(key, status)
        self.assertEqual(status["storageLimit"], 1024**3)

        # Authorization failures: each class gives 401 with a JSON body.
        now = time.time()
        bad_tokens = {
            "another url": sign_operator_request(SECRET, "/api/v1/shutdown", {}, now),
            "another body": sign_operator_request(SECRET, "/api/v1/stop-api", {"x": 1}, now),
            "six minutes old": jwt.encode({"reqUrl": "/api/v1/stop-api", "reqBody": {}, "iat": int(now) - 360}, SECRET, algorithm="HS256"),
            "wrong secret": sign_operator_request("another-secret-of-32-characters!", "/api/v1/stop-api", {}, now),
            "alg none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0."
            + jwt.utils.base64url_encode(json.dumps({"reqUrl": "/api/v1/stop-api", "reqBody": {}, "iat": int(now)}).encode()).decode()
            + ".",
            "garbage": "not.a.token",
        }
        for name, token in bad_tokens.items():
            code, body = await self.operate("stop-api", token=token)
            self.assertEqual(code, 401, name)
            self.assertEqual(body["type"], "unauthorized", name)
        self.assertTrue(await self.public_is_open(), "refused requests change nothing")

        # The original CLI's exact form: lowercase scheme, {reqUrl, reqBody}, expiresIn 60.
        original = jwt.encode(
            {"reqUrl": "/api/v1/stop-api", "reqBody": {}, "iat": int(now), "exp": int(now) + 60}, SECRET, algorithm="HS256"
        )
        code, _ = await self.operate("stop-api", token=original)
        self.assertEqual(code, 200)
        self.assertFalse(await self.public_is_open(), "stop-api closes the public port")
        self.assertEqual((await self.operate("stop-api"))[0], 409)
        self.assertEqual(await self.operate("start-api"), (200, {"message": "public API started"}))
        self.assertTrue(await self.public_is_open(), "start-api reopens it")
        self.assertEqual((await self.operate("start-api"))[0], 409)

        self.assertEqual((await self.operate("set-worker", {"workerId": 7}))[0], 200)
        code, body = await self.operate("set-worker", {"workerId": -1})
        self.assertEqual((code, body["type"]), (400, "invalid_body"))
        self.assertIn("workerId", body["message"])
        r = await self.http.get(self.public("/buckets"))
        self.assertEqual(json.loads(await treq.content(r)), {"allByWorkerId": 7})
        self.assertEqual((await self.operate("set-buckets", {"buckets": [1, "0:2"]}))[0], 200)
        r = await self.http.get(self.public("/buckets"))
        self.assertEqual(json.loads(await treq.content(r)), {"bucketIds": ["1", "0:2"]})

        # The CLI against the running node.
        out = await deferToThread(
            cli_main,
            ["node", "set-buckets", "--url", f"http://127.0.0.1:{self.operator_port}", "--secret", SECRET, "--all"],
        )
        self.assertEqual(out, 0)
        r = await self.http.get(self.public("/buckets"))
        self.assertEqual(json.loads(await treq.content(r)), {"allByWorkerId": 7})

        code, _ = await self.operate("shutdown")
        self.assertEqual(code, 200)
        exit_code = await self.daemon.wait()
        self.assertEqual(exit_code, 0, self.daemon.output)
        self.assertNotIn("Traceback", self.daemon.output)
        self.assertNotIn(SECRET, self.daemon.output, "the secret never appears in logs")
        await self.pool.closeCachedConnections()

    def test_operator_api_and_shutdown(self) -> object:
        return ensureDeferred(self._operator_api())

    async def _kill_mid_download(self) -> None:
        await self._start()
        self.sim.sim.configure_object("1", rate=20_000)  # ~10 s for the object
        d = self.http.get(self.public("/assets/1"))
        d.addErrback(lambda f: None)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 1.0, lambda: None)
        self.daemon.kill()
        self.assertEqual(await self.daemon.wait(), -1)
        assets = self.dir / "assets"
        self.assertFalse((assets / "1").exists(), "a partial download is never in place")
        self.sim.sim.clear_knobs("1")
        await self._launch()
        r = await self.http.get(self.public("/assets/1"))
        body = await treq.content(r)
        self.assertEqual((r.code, r.headers.getRawHeaders("x-cache")[0]), (200, "miss"))
        self.assertEqual(body, DATA)
        leftovers = list((assets / ".tmp").glob("*")) if (assets / ".tmp").exists() else []
        self.assertEqual(leftovers, [], "leftover temporaries are removed at start-up")
        self.assertEqual(await self.daemon.stop(), 0, self.daemon.output)
        await self.pool.closeCachedConnections()

    def test_kill_9_mid_download_leaves_nothing_served_as_a_hit(self) -> object:
        return ensureDeferred(self._kill_mid_download())

    async def _sigterm(self) -> None:
        await self._start()
        r = await self.http.get(self.public("/assets/2"))
        self.assertEqual(await treq.content(r), b"two")
        self.assertEqual(await self.daemon.stop(), 0, self.daemon.output)
        state = json.loads((self.dir / "state" / "jsdistributor-cache.json").read_text())
        self.assertIn("2", json.dumps(state), "state saved on SIGTERM")
        await self._launch()
        r = await self.http.get(self.public("/assets/2"))
        self.assertEqual((await treq.content(r), r.headers.getRawHeaders("x-cache")[0]), (b"two", "hit"))
        await self.daemon.stop()
        await self.pool.closeCachedConnections()

    def test_sigterm_saves_state_and_restart_serves_hits(self) -> object:
        return ensureDeferred(self._sigterm())
