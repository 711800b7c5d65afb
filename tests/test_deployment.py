"""Running it as a service: the systemd unit, ``config check`` as an
operator uses it, and a non-editable ``pip install .`` giving working
``twistd jsdistributor`` and ``jsdistributor`` commands whose version is
the package's."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import yaml
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jsdistributor.metadata.catalog import write_catalog
from jsdistributor.testing.network import SECRET, build_catalog, free_port, node_config_document

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "etc" / "jsdistributor.service"


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values...]}}``: systemd allows a key several times."""
    entries: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            entries.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert section is not None and sep, f"not an INI line: {raw!r}"
        entries[section].setdefault(key.strip(), []).append(value.strip())
    return entries


class SystemdUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.text = UNIT.read_text("utf-8")
        self.unit = unit_entries(self.text)
        self.service = {k: v[-1] for k, v in self.unit["Service"].items()}

    def test_parses_as_ini(self) -> None:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(self.text)
        self.assertEqual(parser.sections(), ["Unit", "Service", "Install"])
        self.assertEqual(parser["Install"]["WantedBy"], "multi-user.target")

    def test_runs_the_twistd_plugin_in_the_foreground(self) -> None:
        from twisted.plugins.jsdistributor_plugin import jsdistributor as plugin

        argv = shlex.split(self.service["ExecStart"])
        self.assertEqual(argv[0], "/opt/jsdistributor/bin/twistd")
        self.assertIn("-n", argv[: argv.index(plugin.tapname)], "twistd options come before the plugin")
        self.assertIn("--pidfile=", argv)
        self.assertEqual(argv[argv.index(plugin.tapname) + 1 :], ["--config", "/etc/jsdistributor/config.yml"])
        self.assertEqual(self.service["KillSignal"], "SIGTERM")
        self.assertEqual(self.service["KillMode"], "mixed", "SIGTERM to the node alone: it stops its hit workers")
        self.assertEqual(self.service["Restart"], "on-failure")
        self.assertTrue(self.service["TimeoutStopSec"].isdigit())

    def test_hardening(self) -> None:
        s = self.service
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
            "LimitNOFILE": "65536",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        }.items():
            self.assertEqual(s.get(key), value, key)
        self.assertTrue(s.get("User") or s.get("DynamicUser") == "yes", "not root")
        writable = s["ReadWritePaths"].split()
        self.assertIn("/var/lib/jsdistributor", writable)
        self.assertEqual(s["StateDirectory"], "jsdistributor")

    def test_systemd_analyze_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            raise SkipTest(f"no twistd next to {sys.executable} to stand for /opt/jsdistributor/bin/twistd")
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        copy = directory / "jsdistributor.service"
        # verify checks that ExecStart's program exists: point it at ours.
        copy.write_text(self.text.replace("/opt/jsdistributor/bin/twistd", str(twistd)))
        out = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0 and "Failed to" in out.stderr and "bus" in out.stderr.lower():
            raise SkipTest(f"systemd-analyze cannot run here: {out.stderr.strip()}")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn("Unknown key", out.stderr)
        self.assertNotIn("Unknown lvalue", out.stderr)


class ConfigCheckTests(SynchronousTestCase):
    def test_effective_values_after_environment_secrets_masked(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        doc = node_config_document(directory, "catalog.yml", 3334, 3335)
        doc["operatorApi"]["hmacSecret"] = "file-secret-of-enough-length"
        (directory / "config.yml").write_text(yaml.safe_dump(doc))
        env_secret = "environment-secret-0123456789"
        environ = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE="300G",
            JOYSTREAM_DISTRIBUTOR__OPERATOR_API__HMAC_SECRET=env_secret,
            JOYSTREAM_DISTRIBUTOR__LOGS__FILE__PATH="logs",
        )
        out = subprocess.run(
            [sys.executable, "-m", "jsdistributor", "config", "check", str(directory / "config.yml")],
            capture_output=True, text=True, env=environ, timeout=60,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        effective = yaml.safe_load(out.stdout)
        self.assertEqual(effective["limits"]["storage"], "300G")
        self.assertEqual(effective["operatorApi"]["hmacSecret"], "***")
        self.assertEqual(effective["logs"]["file"]["path"], str(directory / "logs"))
        self.assertEqual(effective["logs"]["file"]["level"], "debug", "defaults are filled in")
        for secret in (env_secret, "file-secret-of-enough-length"):
            self.assertNotIn(secret, out.stdout + out.stderr)


class InstalledPackageTests(TestCase):
    """``pip install .`` (not editable) into a folder; its commands run
    from elsewhere, never seeing the source tree."""

    timeout = 180

    def test_installed_commands_and_version(self) -> object:
        return deferToThread(self._installed)

    def _installed(self) -> None:
        target = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, target, True)
        build = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target / "lib"), str(ROOT)],
            capture_output=True, text=True, timeout=300,
        )
        if build.returncode != 0:
            raise SkipTest(f"cannot build the package here: {build.stderr[-500:]}")
        installed = metadata.Distribution.at(next((target / "lib").glob("jsdistributor-*.dist-info"))).version
        env = dict(os.environ, PYTHONPATH=str(target / "lib"))
        work = target / "run"
        work.mkdir()

        # The console script.
        script = target / "lib" / "bin" / "jsdistributor"
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True, env=env, cwd=work, timeout=60)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, f"jsdistributor {installed}"), out.stderr)

        # twistd jsdistributor, and /status's version.
        write_catalog(work / "catalog.yml", build_catalog(["http://127.0.0.1:9/"], {"1": b"one"}))
        public = free_port()
        doc = node_config_document(work, "catalog.yml", public, free_port())
        (work / "config.json").write_text(json.dumps(doc))
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        process = subprocess.Popen(
            [*twistd, "-n", "--pidfile=", "jsdistributor", "--config", str(work / "config.json")],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            status = None
            deadline = time.monotonic() + 30
            while status is None and time.monotonic() < deadline and process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{public}/api/v1/status", timeout=2) as r:
                        status = json.load(r)
                except OSError:
                    time.sleep(0.1)
        finally:
            process.terminate()
            output = process.communicate(timeout=30)[0].decode("utf-8", "replace")
        self.assertIsNotNone(status, output)
        assert status is not None
        self.assertEqual(status["version"], installed)
        self.assertEqual(process.returncode, 0, output)
        self.assertTrue(self._module_file(env, work).startswith(str(target / "lib")), "the installed copy ran")
        self.assertNotIn(SECRET, output)

    def _module_file(self, env: dict[str, str], cwd: Path) -> str:
        out = subprocess.run(
            [sys.executable, "-c", "import jsdistributor; print(jsdistributor.__file__)"],
            capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
        )
        return out.stdout.strip()


class VersionTests(TestCase):
    """/status reports the installed package's version (when installed)."""

    timeout = 60

    def test_status_version_is_the_package_version(self) -> object:
        try:
            expected = metadata.version("jsdistributor")
        except metadata.PackageNotFoundError:
            raise SkipTest("jsdistributor is not installed (no package metadata); see InstalledPackageTests")
        from twisted.internet.defer import ensureDeferred

        from .nodeharness import NodeHarness

        harness = NodeHarness(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(harness.stop()))

        async def check() -> None:
            await harness.start({"1": b"one"}, sims=1)
            response, body = await harness.get("/status")
            self.assertEqual(json.loads(body)["version"], expected)

        return ensureDeferred(check())
