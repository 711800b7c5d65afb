"""Logging: level filtering, the rotating JSON-lines file (size, period,
maxFiles, gzip) on a Clock, the access log's fields, secrets, and the
console level of a twistd-started node."""

from __future__ import annotations

import calendar
import gzip
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import treq
from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogLevel, LogPublisher, Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jsdistributor.config import parse_config
from jsdistributor.jwtauth import sign_operator_request
from jsdistributor.logs import (
    LEVEL_NAMES,
    LevelPredicate,
    Redactor,
    RotatingJsonLog,
    configure_logging,
    console_observer,
    event_as_json_line,
    period_label,
    twistd_console_output,
    winston_level,
)
from jsdistributor.metadata.catalog import write_catalog
from jsdistributor.testing.daemon import Daemon, twistd_argv
from jsdistributor.testing.network import SECRET, build_catalog, free_port, node_config_document
from jsdistributor.testing.storage_sim import start_storage_sim

from .nodeharness import NodeHarness, sleep

#: 2024-03-01 10:00:00 UTC
T0 = float(calendar.timegm((2024, 3, 1, 10, 0, 0)))
DAY = 86400.0


def event(level: LogLevel = LogLevel.info, namespace: str = "test", **fields: Any) -> dict[str, Any]:
    return {"log_level": level, "log_namespace": namespace, "log_time": T0, "log_format": "x", **fields}


class LevelTests(SynchronousTestCase):
    def test_winston_levels(self) -> None:
        self.assertEqual(winston_level(event(LogLevel.critical)), "error")
        self.assertEqual(winston_level(event(LogLevel.error)), "error")
        self.assertEqual(winston_level(event(LogLevel.warn)), "warn")
        self.assertEqual(winston_level(event(LogLevel.info)), "info")
        self.assertEqual(winston_level(event(LogLevel.info, "jsdistributor.access")), "http")
        self.assertEqual(winston_level(event(LogLevel.debug)), "debug")
        chatter = event(LogLevel.info, "twisted.web.client._HTTP11ClientFactory", log_format="Starting factory {factory!r}")
        self.assertEqual(winston_level(chatter), "verbose")
        amp = event(LogLevel.info, "twisted.protocols.amp", log_format="{cls} connection lost (HOST:{host} PEER:{peer})")
        self.assertEqual(winston_level(amp), "verbose", "the node's AMP link to each hit worker is chatter too")

    def test_filtering(self) -> None:
        kinds = {
            "error": event(LogLevel.error),
            "warn": event(LogLevel.warn),
            "info": event(LogLevel.info),
            "http": event(LogLevel.info, "jsdistributor.access"),
            "debug": event(LogLevel.debug),
        }
        expected = {
            "error": {"error"},
            "warn": {"error", "warn"},
            "info": {"error", "warn", "info"},
            "http": {"error", "warn", "info", "http"},
            "verbose": {"error", "warn", "info", "http"},
            "debug": {"error", "warn", "info", "http", "debug"},
            "silly": {"error", "warn", "info", "http", "debug"},
        }
        self.assertEqual(set(expected), set(LEVEL_NAMES))
        for level, shown in expected.items():
            predicate = LevelPredicate(level)
            passed = {kind for kind, e in kinds.items() if predicate(e).name != "no"}
            self.assertEqual(passed, shown, level)

    def test_console_lines_filtered_and_redacted(self) -> None:
        lines: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                lines.append(text)

            def flush(self) -> None:
                pass

        observer = console_observer(Out(), "warn", Redactor(["s3cret-value"]))
        self.assertTrue(ILogObserver.providedBy(observer))
        publisher = LogPublisher(observer)
        logger = Logger(namespace="t", observer=publisher)
        logger.info("hidden {x}", x=1)
        logger.debug("hidden too")
        logger.warn("shown {secret}", secret="s3cret-value")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("shown ***", lines[0])
        self.assertIn("[t#warn]", lines[0])
        off = console_observer(Out(), None)
        off(event(LogLevel.error))
        self.assertEqual(len(lines), 1, "console off writes nothing")


class RedactorTests(SynchronousTestCase):
    def test_secret_and_jwts(self) -> None:
        token = sign_operator_request(SECRET, "/api/v1/stop-api", {}, T0)
        redact = Redactor([SECRET])
        text = redact(f"secret={SECRET} bearer {token} end")
        self.assertEqual(text, "secret=*** bearer *** end")
        self.assertEqual(redact("nothing to hide"), "nothing to hide")

    @settings(deadline=None, max_examples=200)
    @given(st.text(max_size=40), st.text(max_size=40))
    def test_secret_never_left(self, before: str, after: str) -> None:
        secret = "0123456789abcdef-secret"
        self.assertNotIn(secret, Redactor([secret])(before + secret + after))


class JsonLineTests(SynchronousTestCase):
    def test_fields_are_keys(self) -> None:
        e = event(
            LogLevel.info,
            "jsdistributor.access",
            log_format="{method} {path} {status}",
            method="GET",
            path="/api/v1/assets/1",
            status=200,
            bytes=5,
            duration=1.5,
            cache="hit",
            client="127.0.0.1",
            log_logger=object(),
            odd=object(),
            blob=b"raw",
        )
        record = json.loads(event_as_json_line(e))
        self.assertEqual(record["time"], "2024-03-01T10:00:00.000Z")
        self.assertEqual(record["level"], "http")
        self.assertEqual(record["namespace"], "jsdistributor.access")
        self.assertEqual(record["message"], "GET /api/v1/assets/1 200")
        for key, expected in {"method": "GET", "status": 200, "bytes": 5, "duration": 1.5, "cache": "hit",
                              "client": "127.0.0.1", "blob": "raw"}.items():
            self.assertEqual(record[key], expected, key)
        self.assertIsInstance(record["odd"], str)
        self.assertNotIn("log_logger", record)

    def test_failure_gives_a_traceback(self) -> None:
        from twisted.python.failure import Failure

        try:
            1 / 0
        except ZeroDivisionError:
            f = Failure()
        record = json.loads(event_as_json_line(event(LogLevel.critical, log_failure=f)))
        self.assertEqual(record["level"], "error")
        self.assertIn("ZeroDivisionError", record["error"])


class Jobs:
    """A run_in_background that holds the jobs until ``run``."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], None]] = []

    def __call__(self, job: Callable[[], None]) -> None:
        self.jobs.append(job)

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job in jobs:
            job()


class RotatingJsonLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.clock = Clock()
        self.clock.advance(T0)

    def open(self, **kwargs: Any) -> RotatingJsonLog:
        f = RotatingJsonLog(str(self.dir), self.clock, **kwargs)
        self.addCleanup(lambda: None if f.closed else f.close())
        return f

    def files(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir())

    def line(self, n: int, width: int = 40) -> bytes:
        return json.dumps({"n": n}).encode().ljust(width - 1) + b"\n"

    def test_rotation_by_size(self) -> None:
        f = self.open(max_size=100)
        for n in range(5):
            f.write(self.line(n))  # 40 bytes: two fit in 100
        self.assertEqual(
            self.files(),
            ["jsdistributor.2024-03-01.1.log", "jsdistributor.2024-03-01.2.log", "jsdistributor.log"],
        )
        contents = [(self.dir / name).read_bytes() for name in self.files()]
        self.assertEqual(contents, [self.line(0) + self.line(1), self.line(2) + self.line(3), self.line(4)])
        for content in contents:
            self.assertLessEqual(len(content), 100)

    def test_a_line_above_max_size_is_written_whole(self) -> None:
        f = self.open(max_size=50)
        f.write(self.line(0, 120))
        f.write(self.line(1, 120))
        self.assertEqual((self.dir / "jsdistributor.log").read_bytes(), self.line(1, 120))
        self.assertEqual((self.dir / "jsdistributor.2024-03-01.1.log").read_bytes(), self.line(0, 120))

    def test_rotation_by_day(self) -> None:
        f = self.open()  # daily by default, as the original node
        f.write(self.line(0))
        self.clock.advance(13 * 3600)  # 2024-03-01 23:00
        f.write(self.line(1))
        self.assertEqual(self.files(), ["jsdistributor.log"])
        self.clock.advance(3600)  # 2024-03-02 00:00
        f.write(self.line(2))
        self.assertEqual(self.files(), ["jsdistributor.2024-03-01.1.log", "jsdistributor.log"])
        self.assertEqual((self.dir / "jsdistributor.2024-03-01.1.log").read_bytes(), self.line(0) + self.line(1))
        self.assertEqual((self.dir / "jsdistributor.log").read_bytes(), self.line(2))
        self.clock.advance(3 * DAY)  # quiet days: one rotation at the next line
        f.write(self.line(3))
        self.assertEqual(
            self.files(), ["jsdistributor.2024-03-01.1.log", "jsdistributor.2024-03-02.1.log", "jsdistributor.log"]
        )

    def test_rotation_by_hour(self) -> None:
        f = self.open(frequency="hourly", max_size=1000)
        f.write(self.line(0))
        self.clock.advance(3599)
        f.write(self.line(1))
        self.clock.advance(1)
        f.write(self.line(2))
        self.assertEqual(self.files(), ["jsdistributor.2024-03-01-10.1.log", "jsdistributor.log"])

    def test_period_labels(self) -> None:
        self.assertEqual(period_label("yearly", T0), "2024")
        self.assertEqual(period_label("monthly", T0), "2024-03")
        self.assertEqual(period_label("daily", T0), "2024-03-01")
        self.assertEqual(period_label("hourly", T0), "2024-03-01-10")
        self.assertEqual(period_label(None, T0), "2024-03-01")

    def test_nothing_written_nothing_rotated(self) -> None:
        f = self.open(max_size=100)
        self.clock.advance(2 * DAY)
        f.write(self.line(0))
        f.rotate()
        f.rotate()
        self.assertEqual(self.files(), ["jsdistributor.2024-03-03.1.log", "jsdistributor.log"])

    def test_max_files_prunes_the_oldest(self) -> None:
        f = self.open(max_size=40, max_files=3)
        for n in range(6):
            f.write(self.line(n))
        # The current file counts: two rotated files are kept, the newest.
        self.assertEqual(
            self.files(),
            ["jsdistributor.2024-03-01.4.log", "jsdistributor.2024-03-01.5.log", "jsdistributor.log"],
        )
        self.assertEqual((self.dir / "jsdistributor.2024-03-01.5.log").read_bytes(), self.line(4))
        self.assertEqual((self.dir / "jsdistributor.log").read_bytes(), self.line(5))

    def test_max_files_across_periods(self) -> None:
        f = self.open(max_files=2)
        for n in range(4):
            f.write(self.line(n))
            self.clock.advance(DAY)
        self.assertEqual(self.files(), ["jsdistributor.2024-03-03.1.log", "jsdistributor.log"])

    def test_archive_gzips_rotated_files_in_the_background(self) -> None:
        jobs = Jobs()
        f = self.open(max_size=40, archive=True, max_files=2, run_in_background=jobs)
        f.write(self.line(0))
        f.write(self.line(1))
        self.assertEqual(self.files(), ["jsdistributor.2024-03-01.1.log", "jsdistributor.log"], "not yet")
        jobs.run()
        self.assertEqual(self.files(), ["jsdistributor.2024-03-01.1.log.gz", "jsdistributor.log"])
        with gzip.open(self.dir / "jsdistributor.2024-03-01.1.log.gz") as g:
            self.assertEqual(g.read(), self.line(0))
        f.write(self.line(2))
        f.write(self.line(3))
        jobs.run()
        # Numbering continues past compressed files; pruning counts them.
        self.assertEqual(self.files(), ["jsdistributor.2024-03-01.3.log.gz", "jsdistributor.log"])
        with gzip.open(self.dir / "jsdistributor.2024-03-01.3.log.gz") as g:
            self.assertEqual(g.read(), self.line(2))

    def test_reopening_appends(self) -> None:
        f = self.open(max_size=100)
        f.write(self.line(0))
        f.close()
        now = time.time()
        self.clock.advance(now - self.clock.seconds())
        again = self.open(max_size=100)
        self.assertEqual(again.size, 40)
        again.write(self.line(1))
        self.assertEqual((self.dir / "jsdistributor.log").read_bytes(), self.line(0) + self.line(1))
        again.write(self.line(2))
        self.assertEqual(len(self.files()), 2)

    def test_file_of_an_earlier_period_is_rotated_first(self) -> None:
        self.dir.mkdir(parents=True)
        old = self.dir / "jsdistributor.log"
        old.write_bytes(self.line(0))
        os.utime(old, (T0 - 2 * DAY, T0 - 2 * DAY))
        f = self.open()
        f.write(self.line(1))
        self.assertEqual(self.files(), ["jsdistributor.2024-02-28.1.log", "jsdistributor.log"])

    def test_bad_settings(self) -> None:
        self.assertRaises(ValueError, RotatingJsonLog, str(self.dir), self.clock, frequency="weekly")
        self.assertRaises(ValueError, RotatingJsonLog, str(self.dir), self.clock, max_files=0)


def config_with_file_log(directory: Path, **file: Any) -> Any:
    doc = node_config_document(directory, "catalog.yml", **{"logs.file": {"path": "logs", **file}})
    return parse_config(doc, directory, {})


class ConfigureLoggingTests(SynchronousTestCase):
    def test_json_lines_at_the_file_level(self) -> None:
        directory = Path(self.mktemp())
        clock = Clock()
        clock.advance(T0)
        publisher = LogPublisher()
        outputs = configure_logging(
            config_with_file_log(directory, level="info", maxSize="1K", maxFiles=3, archive=True),
            clock,
            publisher=publisher,
            run_in_background=lambda job: job(),
        )
        self.addCleanup(outputs.close)
        self.assertIsNone(outputs.console, "not under twistd: no console observer")
        assert outputs.file is not None
        self.assertEqual(outputs.file.max_size, 1024)
        logger = Logger(namespace="jsdistributor.test", observer=publisher)
        for n in range(60):
            logger.info("event {n} with the {secret}", n=n, secret=SECRET)
            logger.debug("debug {n}", n=n)
        logger.warn("a token: {token}", token=sign_operator_request(SECRET, "/api/v1/shutdown", {}, T0))
        outputs.close()
        def oldest_first(name: str) -> tuple[int, int]:
            parts = name.split(".")
            return (1, 0) if name == "jsdistributor.log" else (0, int(parts[2]))

        names = sorted((p.name for p in (directory / "logs").iterdir()), key=oldest_first)
        self.assertEqual(len(names), 3, names)
        self.assertTrue(all(n.endswith(".log.gz") for n in names if n != "jsdistributor.log"), names)
        records = []
        for name in names:
            path = directory / "logs" / name
            data = gzip.open(path).read() if name.endswith(".gz") else path.read_bytes()
            self.assertLessEqual(len(data), 1024)
            self.assertNotIn(SECRET.encode(), data)
            self.assertNotIn(b"eyJ", data)
            records += [json.loads(line) for line in data.splitlines()]
        self.assertTrue(all(r["level"] in ("info", "warn") for r in records), "no debug at level info")
        self.assertEqual(records[-1]["message"], "a token: ***")
        numbered = [r["n"] for r in records if "n" in r]
        self.assertEqual(numbered, sorted(numbered), "in order across files")
        self.assertEqual(numbered[-1], 59)

    def test_console_output_follows_twistd_options(self) -> None:
        import sys

        self.assertIsNone(twistd_console_output(None))
        self.assertIs(twistd_console_output({"nodaemon": True, "logfile": "-"}), sys.stdout)
        self.assertIs(twistd_console_output({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIsNone(twistd_console_output({"nodaemon": True, "syslog": True}))
        self.assertIsNone(twistd_console_output({"nodaemon": True, "logger": "x.y"}))
        self.assertIsNone(twistd_console_output({"nodaemon": False, "logfile": "-"}), "twistd refuses this")
        path = Path(self.mktemp()).absolute()
        path.mkdir()
        f = twistd_console_output({"nodaemon": False, "logfile": str(path / "twistd.log")})
        self.addCleanup(f.close)
        self.assertEqual(f.path, str(path / "twistd.log"))


class NodeLogTests(TestCase):
    """An in-process node writing its JSON log file."""

    timeout = 60

    async def _start(self) -> None:
        self.h = NodeHarness(Path(self.mktemp()).absolute())
        self.addCleanup(lambda: ensureDeferred(self.h.stop()))
        await self.h.start({"1": b"x" * 300_000}, sims=1, **{"logs.file": {"path": "logs", "level": "debug"}})
        self.outputs = configure_logging(self.h.config, reactor, publisher=globalLogPublisher)
        self.addCleanup(self.outputs.close)

    def records(self) -> list[dict[str, Any]]:
        assert self.outputs.file is not None
        self.outputs.file.flush()
        return [json.loads(line) for line in Path(self.outputs.file.path).read_text().splitlines()]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["namespace"] == "jsdistributor.access"]

    async def _access_events_and_secrets(self) -> None:
        await self._start()
        r, body = await self.h.get("/assets/1?token=let-me-in&x=1")
        self.assertEqual(r.code, 200)
        token = sign_operator_request(SECRET, "/api/v1/set-worker", {"workerId": 3}, time.time())
        r, _ = await self.h.operate("set-worker", {"workerId": 3}, token=token)
        self.assertEqual(r.code, 200)
        r, _ = await self.h.operate("stop-api", token="garbage.not.jwt")
        self.assertEqual(r.code, 401)
        await sleep(0.05)
        events = self.access()
        asset = [e for e in events if e["path"].startswith("/api/v1/assets/1")]
        self.assertEqual(len(asset), 1, events)
        e = asset[0]
        self.assertEqual(e["level"], "http")
        self.assertEqual(e["method"], "GET")
        self.assertEqual(e["path"], "/api/v1/assets/1?token=***&x=1")
        self.assertEqual(e["status"], 200)
        self.assertEqual(e["bytes"], 300_000)
        self.assertEqual(e["cache"], "miss")
        self.assertEqual(e["client"], "127.0.0.1")
        self.assertEqual(e["api"], "public")
        self.assertIsInstance(e["duration"], float)
        self.assertGreaterEqual(e["duration"], 0.0)
        self.assertFalse(e["aborted"])
        operator = [(x["path"], x["status"]) for x in events if x["api"] == "operator"]
        self.assertEqual(operator, [("/api/v1/set-worker", 200), ("/api/v1/stop-api", 401)])
        text = Path(self.outputs.file.path).read_text()  # type: ignore[union-attr]
        self.assertNotIn(SECRET, text)
        self.assertNotIn(token, text)
        self.assertNotIn("let-me-in", text)
        self.assertNotIn("garbage.not.jwt", text)  # not even a bad token
        self.assertIn("worker id set to 3", text)

    def test_access_events_and_no_secrets(self) -> Any:
        return ensureDeferred(self._access_events_and_secrets())

    async def _aborted(self) -> None:
        await self._start()
        self.h.sims[0].sim.configure(rate=200_000)  # 1.5 s for the object
        port = self.h.public_port

        def read_a_little_then_close() -> int:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /api/v1/assets/1 HTTP/1.1\r\nHost: x\r\n\r\n")
                return len(s.recv(1000))

        self.assertGreater(await deferToThread(read_a_little_then_close), 0)
        for _ in range(50):
            await sleep(0.05)
            aborted = [e for e in self.access() if e.get("aborted")]
            if aborted:
                break
        self.assertEqual(len(aborted), 1, self.access())
        self.assertEqual((aborted[0]["status"], aborted[0]["cache"]), (200, "miss"))
        self.assertLess(aborted[0]["bytes"], 300_000)
        self.assertIn(" aborted", aborted[0]["message"])
        for _ in range(60):  # let the download finish before the node stops
            if not self.h.node.cache.pending:  # type: ignore[union-attr]
                break
            await sleep(0.05)

    def test_aborted_request_logged(self) -> Any:
        return ensureDeferred(self._aborted())


class TwistdConsoleLevelTests(TestCase):
    """``logs.console.level`` applies to a twistd-started node's output."""

    timeout = 60

    async def run_node(self, level: str) -> str:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        sim = await start_storage_sim(reactor, objects={"1": b"one"})
        self.addCleanup(lambda: ensureDeferred(sim.stop()))
        write_catalog(directory / "catalog.yml", build_catalog([sim.node_endpoint], {"1": b"one"}))
        public = free_port()
        doc = node_config_document(directory, "catalog.yml", public, free_port(), **{"logs.console.level": level})
        (directory / "config.json").write_text(json.dumps(doc))
        daemon = Daemon(reactor, twistd_argv(directory / "config.json"))
        self.addCleanup(lambda: ensureDeferred(daemon.stop()))
        await daemon.wait_for_port(public)
        pool = HTTPConnectionPool(reactor, persistent=False)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = await http.get(f"http://127.0.0.1:{public}/api/v1/status")
        await treq.content(response)
        self.assertEqual(await daemon.stop(), 0, daemon.output)
        return daemon.output

    async def _levels(self) -> None:
        debug = await self.run_node("debug")
        self.assertIn("log outputs: console at debug", debug)  # a debug line
        self.assertIn("jsdistributor.access#info] public 127.0.0.1 GET /api/v1/status 200", debug)
        self.assertIn("starting: node test-node", debug)  # info
        self.assertIn("limits.storage: 1G is less than 20G", debug)  # a warning
        warn = await self.run_node("warn")
        self.assertNotIn("log outputs:", warn)
        self.assertNotIn("GET /api/v1/status", warn)
        self.assertNotIn("starting: node test-node", warn)
        self.assertNotIn("starting up", warn)  # twistd's own info line
        self.assertIn("limits.storage: 1G is less than 20G", warn)
        info = await self.run_node("info")
        self.assertIn("starting: node test-node", info)
        self.assertNotIn("GET /api/v1/status", info, "the access log is http, below info")

    def test_console_levels(self) -> Any:
        return ensureDeferred(self._levels())
