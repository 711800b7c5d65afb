"""Runs the demo network: two storage-node simulators and the node, each a
child process of ``jsdistributor demo``, until Ctrl-C or SIGTERM.

The node is a real ``twistd -n jsdistributor --config etc/demo.yml
--insecure-dev``; what the command line changes (``--dir``, the ports) it
passes as ``JOYSTREAM_DISTRIBUTOR__*`` environment overrides, the node's
documented override mechanism, so ``etc/demo.yml`` stays the default.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Sequence

from attrs import define, field, frozen

from ..metadata.catalog import CatalogBuilder, write_catalog
from .samples import VIDEO_ID, Sample, generate_samples, parse_large_sizes

if TYPE_CHECKING:
    from ..cli import Console

HOST = "127.0.0.1"
DEMO_CONFIG = Path("etc") / "demo.yml"
BAG = "dynamic:channel:1"
DISTRIBUTION_BUCKET = "0:0"
STORAGE_NODES = 2
#: Seconds each process gets to come up, and to stop before it is killed.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
#: How long the printed operator token stays valid.
TOKEN_SECONDS = 3600

#: Used when no etc/demo.yml is at hand (a pip-installed package).
FALLBACK_CONFIG: dict[str, Any] = {
    "id": "demo-node",
    "endpoints": {"catalog": "catalog.yml"},
    "directories": {"assets": "node/assets", "cacheState": "node/state"},
    "logs": {"console": {"level": "info"}},
    "limits": {"storage": "2G", "maxCachedItemSize": "1G", "pendingDownloadTimeoutSec": 600},
    "publicApi": {"port": 3334, "interface": HOST},
    "operatorApi": {"port": 3335, "interface": HOST, "hmacSecret": "demo-only-secret-do-not-use"},
    "workerId": 0,
}

EXIT_OK, EXIT_FAILED = 0, 1


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived."""


class ChildFailed(Exception):
    """A child process exited or never became ready."""


@frozen
class DemoOptions:
    directory: Path
    public_port: int
    operator_port: int
    config: Path | None
    large: tuple[int, ...]
    use_ffmpeg: bool
    keep_cache: bool
    show_logs: bool


@define
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def source_root() -> Path | None:
    """The checkout the package runs from (the directory holding
    ``twisted/plugins/jsdistributor_plugin.py``), if any."""
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "twisted" / "plugins" / "jsdistributor_plugin.py").is_file() else None


def find_demo_config() -> Path | None:
    for base in (Path.cwd(), source_root()):
        if base is not None and (base / DEMO_CONFIG).is_file():
            return base / DEMO_CONFIG
    return None


def child_environment(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment for a child: the checkout on PYTHONPATH (so twistd
    finds the plugin without an install), unbuffered output, ``overrides``."""
    env = dict(os.environ)
    root = source_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides or {})
    return env


def twistd_command() -> list[str]:
    """How to run ``twistd`` with this interpreter."""
    script = Path(sys.executable).parent / "twistd"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if the demo dies without cleaning up."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def http_ready(url: str, timeout: float = 1.0) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            response.read()
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """Starts children, watches them, stops them all (newest first)."""

    def __init__(self, log_dir: Path, show_logs: bool) -> None:
        self.children: list[Child] = []
        self._log_dir = log_dir
        self._show_logs = show_logs
        self.stop_requested = threading.Event()

    def request_stop(self, signum: int, frame: object) -> None:
        self.stop_requested.set()

    def check(self) -> None:
        if self.stop_requested.is_set():
            raise Interrupted()
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                # Ctrl-C reaches the whole process group: a child may stop
                # a moment before our own handler runs.
                if self.stop_requested.wait(0.5):
                    raise Interrupted()
                raise ChildFailed(f"{child.name} exited with status {code}")

    def spawn(self, name: str, command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> Child:
        log_path: Path | None = None
        log: IO[bytes] | None = None
        if not self._show_logs:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self._log_dir / f"{name}.log"
            log = log_path.open("wb")
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log if log is not None else None,
            stderr=subprocess.STDOUT if log is not None else None,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            # Ctrl-C reaches the demo alone, which stops each child once
            # (a node that got both SIGINT and SIGTERM logged a stop error).
            start_new_session=True,
        )
        child = Child(name, process, log_path, log)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, url: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not http_ready(url):
            self.check()
            if time.monotonic() > deadline:
                raise ChildFailed(f"{child.name} did not answer {url} within {timeout:.0f}s")
            self.stop_requested.wait(0.1)

    def stop_all(self) -> list[str]:
        """SIGTERM each child (newest first), wait, kill the stubborn;
        returns the names of children that had to be killed."""
        killed = []
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
                    killed.append(child.name)
            child.close_log()
        return killed


def build_demo_catalog(storage_urls: Sequence[str], samples: Sequence[Sample]) -> dict[str, Any]:
    """Every storage node holds every sample; one bag in bucket 0:0 (worker 0)."""
    builder = CatalogBuilder()
    ids = [str(i) for i in range(len(storage_urls))]
    for bucket_id, url in zip(ids, storage_urls):
        builder.add_storage_node(bucket_id, url)
    builder.add_distribution_bucket(DISTRIBUTION_BUCKET, worker_id=0)
    builder.add_bag(BAG, ids, [DISTRIBUTION_BUCKET])
    for sample in samples:
        builder.add_object(BAG, sample.catalog_entry())
    return builder.build()


def node_overrides(options: DemoOptions, catalog: Path) -> dict[str, str]:
    prefix = "JOYSTREAM_DISTRIBUTOR__"
    node_dir = options.directory / "node"
    return {
        prefix + "ENDPOINTS__CATALOG": str(catalog.resolve()),
        prefix + "DIRECTORIES__ASSETS": str((node_dir / "assets").resolve()),
        prefix + "DIRECTORIES__CACHE_STATE": str((node_dir / "state").resolve()),
        prefix + "PUBLIC_API__PORT": str(options.public_port),
        prefix + "PUBLIC_API__INTERFACE": HOST,
        prefix + "OPERATOR_API__PORT": str(options.operator_port),
        prefix + "OPERATOR_API__INTERFACE": HOST,
    }


def _free_port() -> int:
    from ..testing.network import free_port

    return free_port()


def run_demo(options: DemoOptions, console: Console) -> int:
    directory = options.directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    config_path = options.config
    if config_path is None:
        config_path = directory / "demo.yml"
        config_path.write_text(json.dumps(FALLBACK_CONFIG, indent=2) + "\n", encoding="utf-8")
    config_path = config_path.absolute()

    from ..config import ConfigError, load_config

    try:
        secret = _operator_secret(load_config(config_path, {}))
    except ConfigError as e:
        for problem in e.problems:
            console.complain(f"error: {problem}")
        return EXIT_FAILED

    ffmpeg = shutil.which("ffmpeg") if options.use_ffmpeg else None
    started = time.monotonic()
    samples = generate_samples(directory, options.large, ffmpeg, say=console.say)
    if time.monotonic() - started > 1:
        console.say(f"sample set ready in {time.monotonic() - started:.1f}s")
    if not options.keep_cache:
        shutil.rmtree(directory / "node", ignore_errors=True)

    supervisor = Supervisor(directory / "logs", options.show_logs)
    previous = {sig: signal.signal(sig, supervisor.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = EXIT_OK
    killed: list[str] = []
    try:
        _start_network(options, directory, config_path, samples, supervisor, secret, console)
        while True:
            supervisor.check()
            supervisor.stop_requested.wait(0.5)
    except Interrupted:
        console.say("stopping the demo network")
    except ChildFailed as e:
        console.complain(f"error: {e}")
        for child in supervisor.children:
            if child.process.poll() is not None and child.log_tail():
                console.complain(f"--- last lines of {child.log_path}:\n{child.log_tail()}")
        status = EXIT_FAILED
    finally:
        # A second Ctrl-C while stopping must not leave children behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        killed = supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if killed:
        console.complain(f"warning: had to kill {', '.join(killed)}")
    if status == EXIT_OK:
        console.say("stopped")
    return status


def _operator_secret(config: Any) -> str | None:
    return config.operator_api.hmac_secret if config.operator_api is not None else None


def _start_network(
    options: DemoOptions,
    directory: Path,
    config_path: Path,
    samples: Sequence[Sample],
    supervisor: Supervisor,
    secret: str | None,
    console: Console,
) -> None:
    env = child_environment()
    sim_urls = []
    for i in range(STORAGE_NODES):
        port = _free_port()
        child = supervisor.spawn(
            f"storage-{i}",
            [sys.executable, "-m", "jsdistributor", "storage-sim", "--dir", str(directory / "objects"),
             "--port", str(port), "--interface", HOST],
            env,
        )  # fmt: skip
        supervisor.wait_ready(child, f"http://{HOST}:{port}/api/v1/version")
        sim_urls.append(f"http://{HOST}:{port}/")
    catalog = directory / "catalog.yml"
    write_catalog(catalog, build_demo_catalog(sim_urls, samples))

    node = supervisor.spawn(
        "node",
        [*twistd_command(), "--pidfile=", "-n", "jsdistributor", "--config", str(config_path), "--insecure-dev"],
        child_environment(node_overrides(options, catalog)),
        cwd=directory,
    )
    public = f"http://{HOST}:{options.public_port}"
    supervisor.wait_ready(node, f"{public}/api/v1/status")
    console.say(describe_network(options, public, sim_urls, samples, config_path, secret, directory))
    _flush(console)


def describe_network(
    options: DemoOptions,
    public: str,
    sim_urls: Sequence[str],
    samples: Sequence[Sample],
    config_path: Path,
    secret: str | None,
    directory: Path,
) -> str:
    ids = ",".join(s.id for s in samples)
    video = next((s.id for s in samples if s.id == VIDEO_ID), samples[0].id if samples else "1")
    operator = f"http://{HOST}:{options.operator_port}"
    lines = [
        "",
        "jsdistributor demo network is up (Ctrl-C stops it)",
        "",
        f"  demo page      {public}/demo?ids={ids}",
        f"  node status    {public}/api/v1/status",
        f"  a video        {public}/api/v1/assets/{video}",
        "  objects        " + ", ".join(f"{s.id} {s.name}" for s in samples),
        "  storage nodes  " + "  ".join(sim_urls),
        f"  logs           {directory / 'logs'}",
        "",
        "  operator API (JWT-signed requests):",
        f"    jsdistributor node set-buckets --config {_shown(config_path)} --url {operator} --bucket-ids 0:0",
    ]
    if secret is not None:
        from ..jwtauth import sign_operator_request

        body = {"buckets": ["0:0"]}
        token = sign_operator_request(secret, "/api/v1/set-buckets", body, time.time(), expires_in=TOKEN_SECONDS)
        lines += [
            f"    curl -X POST {operator}/api/v1/set-buckets -H 'authorization: bearer {token}' \\",
            f"         -H 'content-type: application/json' -d '{json.dumps(body, separators=(',', ':'))}'",
            f"    (the token is valid for {TOKEN_SECONDS // 60} minutes, for exactly this request)",
        ]
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _flush(console: Console) -> None:
    for stream in (console.stdout, console.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass


def options_from_args(args: Any) -> DemoOptions:
    """``DemoOptions`` from the parsed command line (``ValueError`` when bad)."""
    config = Path(args.config) if args.config is not None else find_demo_config()
    if config is not None and not config.is_file():
        raise ValueError(f"--config {config}: no such file")
    for name in ("public_port", "operator_port"):
        port = getattr(args, name)
        if not 0 < port < 65536:
            raise ValueError(f"--{name.replace('_', '-')} {port} is not a TCP port")
    if args.public_port == args.operator_port:
        raise ValueError("--public-port and --operator-port must differ")
    return DemoOptions(
        directory=Path(args.dir),
        public_port=args.public_port,
        operator_port=args.operator_port,
        config=config,
        large=tuple(parse_large_sizes(args.large_objects)),
        use_ffmpeg=not args.no_ffmpeg,
        keep_cache=args.keep_cache,
        show_logs=args.show_logs,
    )

