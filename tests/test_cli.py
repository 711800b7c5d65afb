"""The ``jsdistributor`` command against a real (stdlib) HTTP server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.cli import main
from jsdistributor.jwtauth import verify_operator_request

SECRET = "a-cli-test-secret-of-decent-length"
REPO = Path(__file__).resolve().parent.parent


class RecordingServer:
    """Answers every POST with ``status``/``body`` and records what it got."""

    def __init__(self, status: int = 200, body: bytes = b"", content_type: str = "application/json") -> None:
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                recorder.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": self.rfile.read(length),
                    }
                )
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CliTestCase(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def start_server(self, status: int = 200, body: bytes = b"") -> RecordingServer:
        server = RecordingServer(status, body)
        self.addCleanup(server.close)
        return server

    def write_config(self, text: str, name: str = "config.yml") -> Path:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return path


def node_config(operator_port: int, secret: str = SECRET) -> str:
    return f"""\
id: cli-node
endpoints:
  storageSquid: http://localhost:4352/graphql
directories:
  assets: ./data
  cacheState: ./state
limits:
  storage: 100G
publicApi:
  port: 3334
operatorApi:
  port: {operator_port}
  hmacSecret: {secret}
workerId: 0
"""


class NodeCommandTests(CliTestCase):
    def check_request(self, server: RecordingServer, route: str, body: object) -> None:
        self.assertEqual(len(server.requests), 1)
        request = server.requests[0]
        self.assertEqual(request["path"], route)
        self.assertEqual(json.loads(request["body"]), body)
        self.assertEqual(request["headers"]["content-type"], "application/json")
        authorization = request["headers"]["authorization"]
        self.assertTrue(authorization.startswith("bearer "), authorization)
        payload = verify_operator_request(authorization.encode(), route, body, SECRET, time.time())
        self.assertEqual(payload["exp"] - payload["iat"], 60)

    def test_set_buckets(self) -> None:
        server = self.start_server()
        code, out, err = self.run_cli(
            "node", "set-buckets", "--bucket-ids", "0:1", "0:2", "7", "--url", server.url, "--secret", SECRET
        )
        self.assertEqual((code, out, err), (0, "OK\n", ""))
        self.check_request(server, "/api/v1/set-buckets", {"buckets": ["0:1", "0:2", 7]})

    def test_set_buckets_all(self) -> None:
        server = self.start_server()
        code, _, _ = self.run_cli("node", "set-buckets", "--all", "--url", server.url + "/", "--secret", SECRET)
        self.assertEqual(code, 0)
        self.check_request(server, "/api/v1/set-buckets", {})

    def test_set_buckets_needs_ids_or_all(self) -> None:
        code, _, err = self.run_cli("node", "set-buckets", "--secret", SECRET)
        self.assertEqual(code, 2)
        self.assertIn("one of the arguments --bucket-ids/--bucketIds -a/--all is required", err)
        code, _, err = self.run_cli("node", "set-buckets", "--bucket-ids", "x:1", "--secret", SECRET)
        self.assertEqual(code, 2)
        self.assertIn("'x:1' is not a bucket id", err)

    def test_set_worker(self) -> None:
        server = self.start_server()
        code, out, _ = self.run_cli("node", "set-worker", "--worker-id", "12", "--url", server.url, "--secret", SECRET)
        self.assertEqual((code, out), (0, "OK\n"))
        self.check_request(server, "/api/v1/set-worker", {"workerId": 12})
        code, _, err = self.run_cli("node", "set-worker", "--worker-id", "-1", "--secret", SECRET)
        self.assertEqual(code, 2)
        self.assertIn("is not a worker id", err)

    def test_simple_actions(self) -> None:
        for action, route in [
            ("start-public-api", "/api/v1/start-api"),
            ("stop-public-api", "/api/v1/stop-api"),
            ("shutdown", "/api/v1/shutdown"),
        ]:
            server = self.start_server()
            code, out, _ = self.run_cli("node", action, "--url", server.url, "--secret", SECRET)
            self.assertEqual((code, out), (0, "OK\n"), action)
            self.check_request(server, route, {})

    def test_server_response_printed(self) -> None:
        server = self.start_server(body=b'{"status":"ok"}')
        code, out, _ = self.run_cli("node", "shutdown", "--url", server.url, "--secret", SECRET)
        self.assertEqual((code, out), (0, '{"status":"ok"}\n'))

    def test_secret_and_address_from_config(self) -> None:
        server = self.start_server()
        path = self.write_config(node_config(server.port))
        code, out, err = self.run_cli("node", "set-worker", "-w", "3", "--config", str(path))
        self.assertEqual((code, out, err), (0, "OK\n", ""))
        self.check_request(server, "/api/v1/set-worker", {"workerId": 3})

    def test_url_overrides_config(self) -> None:
        server = self.start_server()
        path = self.write_config(node_config(free_port()))
        code, _, _ = self.run_cli("node", "shutdown", "--config", str(path), "--url", server.url)
        self.assertEqual(code, 0)
        self.check_request(server, "/api/v1/shutdown", {})

    def test_bad_config(self) -> None:
        path = self.write_config("id: x\n")
        code, _, err = self.run_cli("node", "shutdown", "--config", str(path))
        self.assertEqual(code, 2)
        self.assertIn("error: endpoints: required", err)

    def test_no_secret(self) -> None:
        code, _, err = self.run_cli("node", "shutdown")
        self.assertEqual(code, 2)
        self.assertIn("give --secret, or --config", err)

    def test_unreachable(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        code, out, err = self.run_cli("node", "shutdown", "--url", url, "--secret", SECRET)
        self.assertEqual((code, out), (1, ""))
        self.assertIn(f"cannot reach the operator API at {url}: ", err)
        self.assertIn("refused", err.lower())

    def test_bad_url(self) -> None:
        code, _, err = self.run_cli("node", "shutdown", "--url", "nonsense", "--secret", SECRET)
        self.assertEqual(code, 2)
        self.assertEqual(err, "error: --url must be an http:// or https:// URL, not 'nonsense'\n")

    def test_unauthorized(self) -> None:
        server = self.start_server(401, b'{"type":"unauthorized","message":"invalid token: bad signature"}')
        code, out, err = self.run_cli("node", "shutdown", "--url", server.url, "--secret", "wrong")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "error: the node refused: HTTP 401: invalid token: bad signature\n")

    def test_conflict(self) -> None:
        server = self.start_server(409, b'{"type":"conflict","message":"Already stopped"}')
        code, _, err = self.run_cli("node", "stop-public-api", "--url", server.url, "--secret", SECRET)
        self.assertEqual(code, 1)
        self.assertEqual(err, "error: the node refused: HTTP 409: Already stopped\n")

    def test_error_without_json(self) -> None:
        server = self.start_server(500, b"boom")
        code, _, err = self.run_cli("node", "shutdown", "--url", server.url, "--secret", SECRET)
        self.assertEqual(code, 1)
        self.assertEqual(err, "error: the node refused: HTTP 500: boom\n")


class ConfigCommandTests(CliTestCase):
    def test_check_good(self) -> None:
        path = self.write_config(node_config(3335).replace("100G", "1G"))
        code, out, err = self.run_cli("config", "check", str(path))
        self.assertEqual(code, 0)
        effective = yaml.safe_load(out)
        self.assertEqual(effective["operatorApi"]["hmacSecret"], "***")
        self.assertEqual(effective["directories"]["assets"], str(path.parent.absolute() / "data"))
        self.assertEqual(effective["limits"]["queryNodeCacheTTL"], 60)
        self.assertNotIn(SECRET, out + err)
        self.assertIn("warning: limits.storage: 1G is less than 20G", err)

    def test_check_applies_environment(self) -> None:
        path = self.write_config(node_config(3335))
        with mock.patch.dict(os.environ, {"JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE": "300G"}):
            code, out, _ = self.run_cli("config", "check", str(path))
        self.assertEqual(code, 0)
        self.assertEqual(yaml.safe_load(out)["limits"]["storage"], "300G")

    def test_check_bad(self) -> None:
        path = self.write_config(node_config(70000).replace("100G", "12X"))
        code, out, err = self.run_cli("config", "check", str(path))
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err.splitlines(),
            [
                "error: limits.storage: '12X' is not a size like 500G",
                "error: operatorApi.port: 70000 is greater than the maximum of 65535",
            ],
        )

    def test_check_weak_secret(self) -> None:
        path = self.write_config(node_config(3335, secret="weak"))
        code, _, err = self.run_cli("config", "check", str(path))
        self.assertEqual(code, 2)
        self.assertIn("operatorApi.hmacSecret: must be at least 16 characters", err)
        code, _, _ = self.run_cli("config", "check", "--insecure-dev", str(path))
        self.assertEqual(code, 0)

    def test_check_missing_file(self) -> None:
        code, _, err = self.run_cli("config", "check", "/nonexistent/config.yml")
        self.assertEqual(code, 2)
        self.assertEqual(err, "error: /nonexistent/config.yml: no such file\n")

    def test_reference(self) -> None:
        code, out, _ = self.run_cli("config", "reference")
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("# Configuration reference\n"))


class ParserTests(CliTestCase):
    def test_help_and_usage(self) -> None:
        code, out, _ = self.run_cli("--help")
        self.assertEqual(code, 0)
        self.assertIn("node", out)
        self.assertIn("config", out)
        code, _, err = self.run_cli()
        self.assertEqual(code, 2)
        self.assertIn("usage: jsdistributor", err)
        code, _, err = self.run_cli("node", "fly")
        self.assertEqual(code, 2)
        self.assertIn("invalid choice: 'fly'", err)

    def test_python_dash_m(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "jsdistributor", "config", "check", "/nonexistent.yml"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("no such file", result.stderr)
