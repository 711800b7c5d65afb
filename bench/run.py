"""The benchmark suite: the node against nginx and a storage simulator, on 127.0.0.1.

    .venv/bin/python bench/run.py [--quick] [--out docs/benchmarks.md]

Starts everything it needs as child processes: a storage-node simulator
(``jsdistributor storage-sim``) at full speed and a second one throttled,
the node (``twistd -n jsdistributor``) with a static catalog, and nginx
(``daemon off; master_process off``) serving the node's own cache files.
Load comes from ``wrk`` and from small socket clients in this file, never
from the node's code. Prints a table, PASS/MISS per goal, and writes it all
to ``docs/benchmarks.md``.

Phases (each with its reference in the same run):

1. cached 100 KiB object, 64 keep-alive connections: node req/s vs nginx;
2. cached 1 GiB object (256 MiB with --quick), 4 connections: throughput vs nginx;
3. miss time to first byte of a never-requested 100 MiB object (fresh ids:
   the catalog holds many copies under different ids) vs the same request
   sent straight to the simulator: added latency p50/p99;
4. 100 concurrent readers of one uncached 1 GiB object (200 MiB with --quick), full speed:
   upstream GETs (the simulator's ``/api/v1/_stats``), per-reader throughput;
5. fan-out latency: 100 readers of an uncached object streamed by the
   throttled simulator. For every MiB boundary ``k`` of the object, lag =
   (when a reader received byte ``k``) - (when the simulator wrote the chunk
   holding byte ``k``; it records this, ``--send-marks``); p50/p99 over all
   readers and boundaries. The upstream is throttled so the node's egress
   (100 x rate) stays well under its capacity: the lag then measures the
   fan-out path (download -> disk -> every reader), not bandwidth;
6. peak RSS of the node during each phase (VmRSS sampled every 20 ms);
7. a second node with ``--workers`` hit workers (``publicApi.workers``,
   default CPU cores - 1): phases 1 and 2 again, against nginx with one
   process and nginx with as many processes as the node, both serving that
   node's cache files; peak RSS of all its processes;
8. eviction bookkeeping at 1M objects (``bench/bench_eviction.py``).

Where a goal is missed, the phase is run again under ``py-spy`` (if
installed: ``pip install py-spy``) and the hottest functions are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from attrs import define, field, frozen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jsdistributor.testing.http import http_get  # noqa: E402  (after the path)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
HOST = "127.0.0.1"

#: Hand-written analysis of the profiles, appended to the report.
FINDINGS = ROOT / "bench" / "findings.md"

# Object ids in the benchmark catalog.
SMALL_ID = "1"
LARGE_ID = "2"
COALESCE_ID = "3"
FANOUT_ID = "4"
FIRST_MISS_ID = 1000

# -- wrk output -------------------------------------------------------------------------

_SIZE_UNITS = {"B": 1, "KB": KiB, "MB": MiB, "GB": GiB, "TB": 1024 * GiB}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@frozen
class WrkResult:
    requests: int
    duration: float  # seconds
    bytes_read: int
    requests_per_sec: float
    transfer_per_sec: float  # bytes
    latency_p50: float | None  # seconds (with --latency)
    latency_p99: float | None
    socket_errors: int
    non_2xx: int


def parse_wrk_size(text: str) -> int:
    """wrk's sizes are binary: ``11.87GB`` is 11.87 GiB."""
    match = re.fullmatch(r"([0-9.]+)([KMGT]?B)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk size: {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_wrk_duration(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """The figures of one wrk run's report (``ValueError`` if it has none)."""
    summary = re.search(r"^\s*(\d+) requests in ([0-9.]+\w+), ([0-9.]+\w+) read\s*$", text, re.M)
    rate = re.search(r"^Requests/sec:\s+([0-9.]+)\s*$", text, re.M)
    transfer = re.search(r"^Transfer/sec:\s+([0-9.]+\w+)\s*$", text, re.M)
    if summary is None or rate is None or transfer is None:
        raise ValueError("no wrk summary in:\n" + text)
    latencies = dict(re.findall(r"^\s+(50|99)%\s+([0-9.]+\w+)\s*$", text, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(summary.group(1)),
        duration=parse_wrk_duration(summary.group(2)),
        bytes_read=parse_wrk_size(summary.group(3)),
        requests_per_sec=float(rate.group(1)),
        transfer_per_sec=float(parse_wrk_size(transfer.group(1))),
        latency_p50=parse_wrk_duration(latencies["50"]) if "50" in latencies else None,
        latency_p99=parse_wrk_duration(latencies["99"]) if "99" in latencies else None,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def run_wrk(url: str, connections: int, seconds: float, threads: int = 1, timeout: str = "10s") -> WrkResult:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", f"--timeout={timeout}", "--latency", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr or result.stdout}")
    return parse_wrk(result.stdout)


# -- small statistics -------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def collapse_py_spy(raw: str, top: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """py-spy ``--format raw`` (collapsed stacks ``a;b;c N``) -> the functions
    with the most samples on top of the stack (self) and anywhere in it
    (inclusive), as fractions of all samples; and the sample count."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            anywhere[frame] += count
    if not total:
        return [], [], 0
    return (
        [(name, n / total) for name, n in own.most_common(top)],
        [(name, n / total) for name, n in anywhere.most_common(top) if not name.startswith(("<module>", "run ("))],
        total,
    )


def _short_frame(frame: str) -> str:
    """``write (twisted/internet/abstract.py:123)`` -> ``write (twisted/internet/abstract.py)``."""
    frame = re.sub(r":\d+\)$", ")", frame.strip())
    name, paren, path = frame.partition(" (")
    if not paren:
        return frame
    for marker in ("site-packages/", "/jsdistributor/", "/lib/python3."):
        if marker in path:
            rest = path.rsplit(marker, 1)[1]
            if marker == "/jsdistributor/":
                rest = "jsdistributor/" + rest
            elif marker == "/lib/python3.":
                rest = rest.split("/", 1)[-1]
            path = rest
            break
    return f"{name} ({path}"


# -- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return {k: v for k, v in env.items() if not k.startswith("JOYSTREAM_DISTRIBUTOR__")}


def _die_with_parent() -> None:  # runs in the child
    """Linux: the child gets SIGTERM if the benchmark dies without cleaning up."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_http(url: str, process: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            if http_get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f}s")
        time.sleep(0.05)


@define
class Processes:
    """Children started by the benchmark; all stopped by ``stop_all``."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(factory=list)

    def start(self, name: str, command: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=cwd,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.children.append((name, process))
        return process

    def stop_all(self) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    print(f"warning: killing {name}", file=sys.stderr)
                    process.kill()
                    process.wait()
        self.children.clear()


def _proc_status(pid: int, key: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * KiB
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread;
    ``phase(name)`` records the peak during a block."""

    def __init__(self, pid: int, interval: float = 0.02, with_children: bool = False) -> None:
        self.pid = pid
        self.interval = interval
        #: Sum the RSS of the process and its children (a node's hit workers).
        self.with_children = with_children
        self.peaks: dict[str, int] = {}
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self, key: str) -> int | None:
        if not self.with_children:
            return _proc_status(self.pid, key)
        values = [_proc_status(pid, key) for pid in [self.pid, *children_of(self.pid)]]
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._read("VmRSS")
            current = self._current
            if rss is not None and current is not None:
                self.peaks[current] = max(self.peaks.get(current, 0), rss)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._current = name
        rss = self._read("VmRSS")
        if rss is not None:
            self.peaks[name] = max(self.peaks.get(name, 0), rss)
        try:
            yield
        finally:
            rss = self._read("VmRSS")
            if rss is not None:
                self.peaks[name] = max(self.peaks.get(name, 0), rss)
            self._current = None

    def high_water_mark(self) -> int | None:
        return self._read("VmHWM")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# -- the data set and the network ------------------------------------------------------------


@frozen
class Sizes:
    small: int
    large: int
    miss: int
    miss_samples: int
    coalesce: int
    readers: int
    fanout: int
    fanout_rate: float  # bytes/s from the throttled simulator
    seconds: float  # each wrk run


def sizes_for(quick: bool) -> Sizes:
    if quick:
        return Sizes(100 * KiB, 256 * MiB, 100 * MiB, 20, 200 * MiB, 100, 24 * MiB, 3 * MiB, 5.0)
    return Sizes(100 * KiB, 1 * GiB, 100 * MiB, 40, 1 * GiB, 100, 48 * MiB, 3 * MiB, 10.0)


def write_random(path: Path, size: int, seed: int) -> None:
    if path.is_file() and path.stat().st_size == size:
        return
    rng = random.Random(seed)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(8 * MiB, left))
            f.write(block)
            left -= len(block)
    os.replace(temporary, path)


def prepare_objects(objects: Path, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """The objects (reused when their sizes match) and their catalog entries."""
    from jsdistributor.metadata.catalog import catalog_entry_for_file

    objects.mkdir(parents=True, exist_ok=True)
    write_random(objects / SMALL_ID, sizes.small, 1)
    write_random(objects / LARGE_ID, sizes.large, 2)
    write_random(objects / COALESCE_ID, sizes.coalesce, 3)
    write_random(objects / FANOUT_ID, sizes.fanout, 4)
    miss_source = objects / "miss-source.bin"
    write_random(miss_source, sizes.miss, 5)
    manifest_path = objects.parent / "hashes.json"
    try:
        cached: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        cached = {}

    def entry(object_id: str, path: Path) -> dict[str, Any]:
        key = f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
        if cached.get(key) is None:
            cached[key] = catalog_entry_for_file(path)
        return {"id": object_id, **cached[key]}

    entries = {i: entry(i, objects / i) for i in (SMALL_ID, LARGE_ID, COALESCE_ID, FANOUT_ID)}
    miss_entry = entry("0", miss_source)
    for n in range(sizes.miss_samples):
        object_id = str(FIRST_MISS_ID + n)
        link = objects / object_id
        if not (link.exists() and os.path.samefile(link, miss_source)):
            link.unlink(missing_ok=True)
            os.link(miss_source, link)
        entries[object_id] = dict(miss_entry, id=object_id)
    manifest_path.write_text(json.dumps(cached))
    return entries


def write_catalog_file(path: Path, entries: dict[str, dict[str, Any]], fast_url: str, slow_url: str) -> None:
    from jsdistributor.metadata.catalog import CatalogBuilder, write_catalog

    builder = CatalogBuilder()
    builder.add_storage_node("0", fast_url)
    builder.add_storage_node("1", slow_url)
    builder.add_distribution_bucket("0:0", worker_id=0)
    builder.add_bag("dynamic:channel:1", ["0"], ["0:0"])
    builder.add_bag("dynamic:channel:2", ["1"], ["0:0"])
    for object_id, entry in entries.items():
        builder.add_object("dynamic:channel:2" if object_id == FANOUT_ID else "dynamic:channel:1", entry)
    write_catalog(path, builder.build())


def node_config(work: Path, public_port: int, operator_port: int, node_dir: str = "node", workers: int = 0) -> dict[str, Any]:
    return {
        "id": "bench-node",
        "endpoints": {"catalog": str(work / "catalog.yml")},
        "directories": {"assets": str(work / node_dir / "assets"), "cacheState": str(work / node_dir / "state")},
        "logs": {"console": {"level": "info"}},
        "limits": {
            "storage": "20G",
            "maxConcurrentStorageNodeDownloads": 100,
            "maxConcurrentOutboundConnections": 300,
            "outboundRequestsTimeoutMs": 10000,
            "pendingDownloadTimeoutSec": 3600,
            "maxCachedItemSize": "20G",
        },
        "intervals": {"saveCacheState": 600, "checkStorageNodeResponseTimes": 600, "cacheCleanup": 86400},
        "publicApi": {"port": public_port, "interface": HOST, "workers": workers},
        "operatorApi": {"port": operator_port, "interface": HOST, "hmacSecret": "bench-secret-of-32-characters!!!"},
        "workerId": 0,
    }


NGINX_CONF = """\
daemon off;
master_process {master};
worker_processes {processes};
pid {work}/nginx{port}.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {work}/nginx-access{port}.log;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    client_body_temp_path {work}/nginx-tmp/body;
    proxy_temp_path {work}/nginx-tmp/proxy;
    fastcgi_temp_path {work}/nginx-tmp/fastcgi;
    uwsgi_temp_path {work}/nginx-tmp/uwsgi;
    scgi_temp_path {work}/nginx-tmp/scgi;
    server {{
        listen {host}:{port};
        location /api/v1/assets/ {{ alias {assets}/; }}
    }}
}}
"""


def twistd_command() -> list[str]:
    script = Path(sys.executable).parent / "twistd"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@define
class Network:
    work: Path
    sizes: Sizes
    processes: Processes = field(factory=Processes)
    fast_port: int = 0
    slow_port: int = 0
    public_port: int = 0
    nginx_port: int = 0
    node: subprocess.Popen[bytes] | None = None

    @property
    def node_url(self) -> str:
        return f"http://{HOST}:{self.public_port}"

    @property
    def nginx_url(self) -> str:
        return f"http://{HOST}:{self.nginx_port}"

    def sim_url(self, port: int) -> str:
        return f"http://{HOST}:{port}"

    def start(self) -> None:
        objects = self.work / "objects"
        print(f"preparing objects in {objects}", flush=True)
        entries = prepare_objects(objects, self.sizes)
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        sim = [sys.executable, "-m", "jsdistributor", "storage-sim", "--dir", str(objects), "--send-marks", str(MiB)]
        self.fast_port, self.slow_port = free_port(), free_port()
        fast = self.processes.start("simulator", [*sim, "--port", str(self.fast_port)], logs / "sim-fast.log")
        slow = self.processes.start(
            "throttled simulator",
            [*sim, "--port", str(self.slow_port), "--rate", str(self.sizes.fanout_rate)],
            logs / "sim-slow.log",
        )
        wait_http(self.sim_url(self.fast_port) + "/api/v1/version", fast, "the simulator")
        wait_http(self.sim_url(self.slow_port) + "/api/v1/version", slow, "the throttled simulator")
        write_catalog_file(
            self.work / "catalog.yml", entries, self.sim_url(self.fast_port) + "/", self.sim_url(self.slow_port) + "/"
        )
        self.node, self.public_port = self.start_node("node", "node", 0)
        self.nginx_port = self.start_nginx(1)

    def start_node(self, name: str, node_dir: str, workers: int) -> tuple[subprocess.Popen[bytes], int]:
        """A node under twistd (with ``workers`` hit workers); its process and public port."""
        logs = self.work / "logs"
        shutil.rmtree(self.work / node_dir, ignore_errors=True)
        port = free_port()
        config = self.work / f"{name}.json"
        config.write_text(json.dumps(node_config(self.work, port, free_port(), node_dir, workers), indent=2))
        process = self.processes.start(
            name,
            [*twistd_command(), "--pidfile=", f"--logfile={logs / (name + '.log')}", "-n", "jsdistributor",
             "--config", str(config)],
            logs / f"{name}-stdout.log",
            cwd=self.work,
        )  # fmt: skip
        wait_http(f"http://{HOST}:{port}/api/v1/status", process, f"the {name}")
        return process, port

    def start_nginx(self, processes: int, node_dir: str = "node") -> int:
        """nginx serving ``node_dir``'s cache files with ``processes`` worker
        processes (1: no master process); its port."""
        logs = self.work / "logs"
        port = free_port()
        (self.work / "nginx-tmp").mkdir(exist_ok=True)
        conf = self.work / f"nginx{port}.conf"
        conf.write_text(
            NGINX_CONF.format(
                work=self.work, host=HOST, port=port, assets=self.work / node_dir / "assets",
                master="on" if processes > 1 else "off", processes=processes,
            )
        )  # fmt: skip
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        log = logs / f"nginx{port}.log"
        process = self.processes.start(
            f"nginx ({processes} processes)",
            [nginx, "-p", str(self.work), "-c", str(conf), "-e", str(self.work / "nginx-error.log")],
            log,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + log.read_text(errors="replace"))
            time.sleep(0.05)
        return port

    def sim_stats(self, port: int) -> dict[str, Any]:
        return json.loads(http_get(self.sim_url(port) + "/api/v1/_stats")[2])

    def reset_sim_stats(self) -> None:
        for port in (self.fast_port, self.slow_port):
            http_get(self.sim_url(port) + "/api/v1/_stats/reset", method="POST")

    def node_status(self, url: str | None = None) -> dict[str, Any]:
        return json.loads(http_get((url or self.node_url) + "/api/v1/status")[2])

    def wait_downloads_done(self, timeout: float = 300.0, url: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while self.node_status(url)["downloadsInProgress"]:
            if time.monotonic() > deadline:
                raise RuntimeError("downloads still in progress after %.0fs" % timeout)
            time.sleep(0.01)

    def cache(self, object_id: str, url: str | None = None) -> None:
        """Fetch an object through the node (at ``url``) and wait until it is cached."""
        url = url or self.node_url
        status, headers, body = http_get(f"{url}/api/v1/assets/{object_id}", timeout=600)
        if status != 200:
            raise RuntimeError(f"caching {object_id}: HTTP {status}")
        self.wait_downloads_done(url=url)
        status, headers, _ = http_get(f"{url}/api/v1/assets/{object_id}", method="HEAD")
        if headers.get("x-cache") != "hit":
            raise RuntimeError(f"object {object_id} is not a hit after download: {headers.get('x-cache')}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


# -- socket clients ------------------------------------------------------------------------------


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode("ascii")


def time_to_first_byte(port: int, path: str) -> tuple[float, int, dict[str, str]]:
    """Seconds from connecting to the first body byte of ``GET path``
    (new connection), the status and the headers; the connection is then
    closed."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(_request(path))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed before the body of {path}: {data[:200]!r}")
            data += chunk
            end = data.find(b"\r\n\r\n")
            if end >= 0 and len(data) > end + 4:
                elapsed = time.perf_counter() - started
                break
    head = data[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return elapsed, status, headers


def round_trip(port: int, path: str, method: str) -> float:
    """Seconds for a whole bodiless exchange (``HEAD``) on a new connection."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode("ascii"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return time.perf_counter() - started


@define
class Reader:
    sock: socket.socket
    started: float = 0.0
    head: bytes = b""
    status: int = 0
    length: int = -1
    body: int = 0
    next_mark: int = 0
    first_byte: float | None = None
    done: float | None = None
    marks: list[tuple[int, float]] = field(factory=list)
    cache: str = ""


def read_concurrently(port: int, path: str, count: int, mark_every: int, timeout: float) -> list[Reader]:
    """``count`` readers GET ``path`` at once, each on its own connection,
    reading as fast as they can; each records when its body passed every
    ``mark_every`` bytes (``time.time()``, the simulator's clock)."""
    readers = [Reader(socket.create_connection((HOST, port), timeout=30)) for _ in range(count)]
    selector = selectors.DefaultSelector()
    request = _request(path)
    for reader in readers:
        reader.sock.setblocking(False)
        reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for reader in readers:
        reader.started = time.time()
        reader.sock.sendall(request)
        selector.register(reader.sock, selectors.EVENT_READ, reader)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    open_readers = count
    deadline = time.monotonic() + timeout
    try:
        while open_readers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{open_readers} readers unfinished after {timeout:.0f}s")
            for key, _ in selector.select(1.0):
                reader: Reader = key.data
                try:
                    n = reader.sock.recv_into(buffer)
                except BlockingIOError:
                    continue
                now = time.time()
                if n == 0:
                    selector.unregister(reader.sock)
                    open_readers -= 1
                    continue
                if reader.length < 0:
                    reader.head += bytes(view[:n])
                    end = reader.head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    lines = reader.head[:end].decode("latin-1").split("\r\n")
                    reader.status = int(lines[0].split()[1])
                    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                    reader.length = int(headers.get("content-length", "0"))
                    reader.cache = headers.get("x-cache", "")
                    n = len(reader.head) - end - 4
                    reader.head = b""
                if n > 0 and reader.first_byte is None:
                    reader.first_byte = now
                reader.body += n
                while reader.body > reader.next_mark and reader.next_mark < reader.length:
                    reader.marks.append((reader.next_mark, now))
                    reader.next_mark += mark_every
                if reader.body >= reader.length >= 0:
                    reader.done = now
                    selector.unregister(reader.sock)
                    open_readers -= 1
    finally:
        selector.close()
        for reader in readers:
            reader.sock.close()
    return readers


# -- the phases -------------------------------------------------------------------------------


@define
class Results:
    rows: list[tuple[str, str, str, str]] = field(factory=list)  # what, node, reference, ratio/extra
    goals: list[tuple[str, str, bool]] = field(factory=list)  # goal, measured, passed
    notes: list[str] = field(factory=list)
    profiles: list[tuple[str, str]] = field(factory=list)  # phase, markdown
    eviction: str = ""

    def row(self, what: str, node: str, reference: str = "", extra: str = "") -> None:
        self.rows.append((what, node, reference, extra))
        print(f"  {what:<44} {node:>16} {reference:>16}  {extra}", flush=True)

    def goal(self, text: str, measured: str, passed: bool) -> None:
        self.goals.append((text, measured, passed))


def _rate(n: float) -> str:
    return f"{n:,.0f} req/s"


def _bandwidth(n: float) -> str:
    return f"{n / MiB:,.0f} MiB/s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def phase_small(net: Network, results: Results, rss: RssSampler, profile: Callable[..., None]) -> None:
    net.cache(SMALL_ID)
    path = f"/api/v1/assets/{SMALL_ID}"
    run_wrk(net.node_url + path, 64, 2)  # warm-up
    with rss.phase("small hits"):
        node = run_wrk(net.node_url + path, 64, net.sizes.seconds)
    nginx = run_wrk(net.nginx_url + path, 64, net.sizes.seconds)
    ratio = node.requests_per_sec / nginx.requests_per_sec
    results.row("cached 100 KiB, 64 conns: requests/s", _rate(node.requests_per_sec), _rate(nginx.requests_per_sec),
                f"{ratio:.0%} of nginx")  # fmt: skip
    results.row("  latency p50 / p99", f"{_ms(node.latency_p50 or 0)} / {_ms(node.latency_p99 or 0)}",
                f"{_ms(nginx.latency_p50 or 0)} / {_ms(nginx.latency_p99 or 0)}")  # fmt: skip
    _check_errors(results, "small hits", node)
    passed = ratio >= 0.25
    results.goal("small hits >= 25% of nginx req/s (one process)", f"{ratio:.0%}", passed)
    if not passed:
        profile("small hits", lambda: run_wrk(net.node_url + path, 64, net.sizes.seconds))


def phase_workers(net: Network, results: Results, workers: int) -> None:
    """The node with ``workers`` hit workers (``publicApi.workers``): small
    and large hits against the same nginx as the other phases (one process)
    and against nginx with as many processes as the node has."""
    node_process, port = net.start_node("node-workers", "node-workers", workers)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 30
    log = net.work / "logs" / "node-workers.log"
    while log.read_text(errors="replace").count("listening on port") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("the hit workers did not start: see " + str(log))
        time.sleep(0.1)
    # References serving this node's cache files: nginx as in the other
    # phases (one process), and nginx with as many processes as the node.
    nginx_1 = f"http://{HOST}:{net.start_nginx(1, node_dir='node-workers')}"
    nginx_n = f"http://{HOST}:{net.start_nginx(workers + 1, node_dir='node-workers')}"
    processes = f"node + {workers} hit worker{'s' if workers > 1 else ''}"
    rss = RssSampler(node_process.pid, with_children=True)
    try:
        net.cache(SMALL_ID, url)
        path = f"/api/v1/assets/{SMALL_ID}"
        run_wrk(url + path, 64, 2)  # warm-up
        with rss.phase("small hits"):
            node = run_wrk(url + path, 64, net.sizes.seconds)
        nginx = run_wrk(nginx_1 + path, 64, net.sizes.seconds)
        nginx_same = run_wrk(nginx_n + path, 64, net.sizes.seconds)
        ratio = node.requests_per_sec / nginx.requests_per_sec
        results.row(f"cached 100 KiB, 64 conns, {processes}: requests/s", _rate(node.requests_per_sec),
                    _rate(nginx.requests_per_sec), f"{ratio:.0%} of nginx")  # fmt: skip
        results.row(f"  vs nginx with {workers + 1} worker processes", _rate(node.requests_per_sec),
                    _rate(nginx_same.requests_per_sec),
                    f"{node.requests_per_sec / nginx_same.requests_per_sec:.0%} of nginx")  # fmt: skip
        _check_errors(results, f"small hits, {processes}", node)
        results.goal(f"small hits >= 25% of nginx req/s ({processes})", f"{ratio:.0%}", ratio >= 0.25)

        net.cache(LARGE_ID, url)
        path = f"/api/v1/assets/{LARGE_ID}"
        with rss.phase("large hits"):
            large = run_wrk(url + path, 4, net.sizes.seconds, timeout="120s")
        nginx_large = run_wrk(nginx_1 + path, 4, net.sizes.seconds, timeout="120s")
        ratio = large.transfer_per_sec / nginx_large.transfer_per_sec
        results.row(f"cached large, 4 conns, {processes}: throughput", _bandwidth(large.transfer_per_sec),
                    _bandwidth(nginx_large.transfer_per_sec), f"{ratio:.0%} of nginx")  # fmt: skip
        _check_errors(results, f"large hits, {processes}", large)
        peak = max(rss.peaks.values())
        results.row(f"peak RSS, {processes} (all processes)", f"{peak / MiB:.0f} MiB")
    finally:
        rss.stop()


def phase_large(net: Network, results: Results, rss: RssSampler, profile: Callable[..., None]) -> None:
    net.cache(LARGE_ID)
    path = f"/api/v1/assets/{LARGE_ID}"
    label = f"{net.sizes.large // MiB} MiB" if net.sizes.large < GiB else f"{net.sizes.large // GiB} GiB"
    with rss.phase("large hits"):
        node = run_wrk(net.node_url + path, 4, net.sizes.seconds, timeout="120s")
    nginx = run_wrk(net.nginx_url + path, 4, net.sizes.seconds, timeout="120s")
    ratio = node.transfer_per_sec / nginx.transfer_per_sec
    results.row(f"cached {label}, 4 conns: throughput", _bandwidth(node.transfer_per_sec),
                _bandwidth(nginx.transfer_per_sec), f"{ratio:.0%} of nginx")  # fmt: skip
    _check_errors(results, "large hits", node)
    passed = ratio >= 0.5
    results.goal("large-object throughput >= 50% of nginx", f"{ratio:.0%}", passed)
    if not passed:
        profile("large hits", lambda: run_wrk(net.node_url + path, 4, net.sizes.seconds, timeout="120s"))


def _check_errors(results: Results, phase: str, wrk: WrkResult) -> None:
    if wrk.socket_errors or wrk.non_2xx:
        results.notes.append(f"{phase}: wrk saw {wrk.socket_errors} socket errors, {wrk.non_2xx} non-2xx responses")


def phase_miss(net: Network, results: Results, rss: RssSampler) -> None:
    node_samples: list[float] = []
    direct_samples: list[float] = []
    head_samples: list[float] = []
    net.reset_sim_stats()
    with rss.phase("misses"):
        for n in range(net.sizes.miss_samples):
            object_id = str(FIRST_MISS_ID + n)
            seconds, status, _ = time_to_first_byte(net.fast_port, f"/api/v1/files/{object_id}")
            if status != 200:
                raise RuntimeError(f"simulator answered {status} for {object_id}")
            direct_samples.append(seconds)
            head_samples.append(round_trip(net.fast_port, f"/api/v1/files/{object_id}", "HEAD"))
            seconds, status, headers = time_to_first_byte(net.public_port, f"/api/v1/assets/{object_id}")
            if status != 200 or headers.get("x-cache") != "miss":
                raise RuntimeError(f"node answered {status} x-cache {headers.get('x-cache')} for {object_id}")
            node_samples.append(seconds)
            net.wait_downloads_done()
    p50 = percentile(node_samples, 50) - percentile(direct_samples, 50)
    p99 = percentile(node_samples, 99) - percentile(direct_samples, 99)
    results.row(f"miss TTFB, {net.sizes.miss // MiB} MiB, p50 ({len(node_samples)} samples)",
                _ms(percentile(node_samples, 50)), _ms(percentile(direct_samples, 50)), f"+{_ms(p50)}")  # fmt: skip
    results.row("miss TTFB p99", _ms(percentile(node_samples, 99)), _ms(percentile(direct_samples, 99)),
                f"+{_ms(p99)}")  # fmt: skip
    stats = net.sim_stats(net.fast_port)
    ids = [str(FIRST_MISS_ID + n) for n in range(net.sizes.miss_samples)]
    heads = sum(stats["heads"].get(i, 0) for i in ids) - len(ids)  # less the benchmark's own HEADs
    gets = sum(stats["gets"].get(i, 0) for i in ids) - len(ids)  # less the direct samples
    results.row("  node's upstream requests per miss", f"{heads / len(ids):g} HEAD + {gets / len(ids):g} GET", "",
                f"a HEAD to the simulator: p50 {_ms(percentile(head_samples, 50))}")  # fmt: skip
    results.goal("miss TTFB overhead <= 5 ms p50", f"+{_ms(p50)} (p99 +{_ms(p99)})", p50 <= 0.005)


def _readers_summary(readers: list[Reader], size: int) -> tuple[list[float], int]:
    bad = [r for r in readers if r.status != 200 or r.body != size or r.done is None]
    rates = [size / (r.done - r.started) for r in readers if r.done is not None and r.done > r.started]
    return rates, len(bad)


def phase_coalesce(net: Network, results: Results, rss: RssSampler) -> None:
    size = net.sizes.coalesce
    net.reset_sim_stats()
    with rss.phase("100 readers, full speed"):
        readers = read_concurrently(net.public_port, f"/api/v1/assets/{COALESCE_ID}", net.sizes.readers, MiB, 600)
    net.wait_downloads_done()
    stats = net.sim_stats(net.fast_port)
    gets = stats["gets"].get(COALESCE_ID, 0)
    rates, bad = _readers_summary(readers, size)
    first = min(r.started for r in readers)
    last = max(r.done or 0 for r in readers)
    upstream_end = _sent_times(stats, COALESCE_ID).get(size, float("nan"))
    tails = [r.done - upstream_end for r in readers if r.done is not None]
    caches = Counter(r.cache for r in readers)
    results.row(f"{len(readers)} readers of one {size // MiB} MiB miss: upstream GETs", str(gets), "1",
                ", ".join(f"{n} {k}" for k, n in sorted(caches.items())))  # fmt: skip
    results.row("  per-reader throughput p50 / min", f"{_bandwidth(percentile(rates, 50))} / "
                f"{_bandwidth(min(rates))}", "", f"all {_bandwidth(len(readers) * size / (last - first))}")  # fmt: skip
    results.row("  last byte: upstream's last byte -> reader, p99", _ms(percentile(tails, 99)), "",
                "readers share the node's egress")  # fmt: skip
    if bad:
        results.notes.append(f"full-speed readers: {bad} of {len(readers)} did not get the whole object")
    results.goal("100 readers of one miss -> 1 upstream GET", str(gets), gets == 1 and not bad)


def _sent_times(stats: dict[str, Any], object_id: str) -> dict[int, float]:
    """Offset -> when the simulator first wrote it (the end offset: the last byte)."""
    sent: dict[int, float] = {}
    for record in stats["sendMarks"]:
        if record["objectId"] == object_id:
            for offset, t in record["marks"]:
                sent.setdefault(offset, t)
    return sent


def phase_fanout(net: Network, results: Results, rss: RssSampler) -> None:
    size = net.sizes.fanout
    net.reset_sim_stats()
    timeout = size / net.sizes.fanout_rate * 3 + 60
    with rss.phase("100 readers, fan-out"):
        readers = read_concurrently(net.public_port, f"/api/v1/assets/{FANOUT_ID}", net.sizes.readers, MiB, timeout)
    net.wait_downloads_done()
    stats = net.sim_stats(net.slow_port)
    gets = stats["gets"].get(FANOUT_ID, 0)
    sent = _sent_times(stats, FANOUT_ID)
    # Offset 0 is every reader's time to first byte (100 responses started
    # at once), reported apart; the lag is the steady stream after it.
    lags = [t - sent[offset] for r in readers for offset, t in r.marks if offset and offset in sent]
    firsts = [r.marks[0][1] - sent[0] for r in readers if r.marks and r.marks[0][0] == 0 and 0 in sent]
    rates, bad = _readers_summary(readers, size)
    upstream_end = sent.get(size, float("nan"))
    tails = [r.done - upstream_end for r in readers if r.done is not None]
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    results.row(f"fan-out lag, {len(readers)} readers, upstream {net.sizes.fanout_rate / MiB:g} MiB/s: p50",
                _ms(p50), "", f"{len(lags)} samples, upstream GETs {gets}")  # fmt: skip
    results.row("  fan-out lag p99 / max", f"{_ms(p99)} / {_ms(max(lags, default=float('nan')))}", "")
    results.row("  first byte: upstream's first byte -> reader, p50 / max",
                f"{_ms(percentile(firsts, 50))} / {_ms(max(firsts, default=float('nan')))}", "",
                "100 responses start at once")  # fmt: skip
    results.row("  last byte: upstream's last byte -> reader, p50 / p99",
                f"{_ms(percentile(tails, 50))} / {_ms(percentile(tails, 99))}", "", "includes hash check")  # fmt: skip
    if bad:
        results.notes.append(f"fan-out readers: {bad} of {len(readers)} did not get the whole object")
    results.goal("fan-out lag p99 <= 50 ms", _ms(p99), p99 <= 0.050 and not bad)


def phase_eviction(results: Results, quick: bool) -> None:
    command = [sys.executable, str(ROOT / "bench" / "bench_eviction.py"), "--entries", "1000000"]
    if quick:
        command += ["--samples", "20000", "--trace-objects", "20000", "--trace-requests", "200000"]
    print("eviction bookkeeping: " + " ".join(command[1:]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=child_env())
    results.eviction = "$ python " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command[1:])) + "\n"
    results.eviction += result.stdout + (result.stderr if result.returncode else "")
    for line in result.stdout.splitlines():
        if line.startswith(("access:", "pop_victim:", "fill ", "save_state", "load_state")):
            print("  " + line, flush=True)


# -- profiling ----------------------------------------------------------------------------------


def make_profiler(net: Network, results: Results, work: Path, enabled: bool) -> Callable[[str, Callable[[], Any]], None]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    def profile(phase: str, load: Callable[[], Any]) -> None:
        if not enabled:
            return
        if not os.access(py_spy, os.X_OK):
            results.notes.append(f"{phase}: missed its goal; install py-spy (pip install py-spy) for a profile")
            return
        assert net.node is not None
        out = work / f"profile-{phase.replace(' ', '-')}.txt"
        seconds = max(3, int(net.sizes.seconds))
        print(f"  profiling the node during {phase} ({seconds}s, py-spy)", flush=True)
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(net.node.pid), "--duration", str(seconds), "--rate", "200",
             "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)
        load()
        try:
            _, err = spy.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode != 0 or not out.exists():
            results.notes.append(f"{phase}: py-spy failed: {err.decode(errors='replace').strip()[:300]}")
            return
        own, inclusive, samples = collapse_py_spy(out.read_text())
        lines = [f"{samples} samples of the node's thread, `py-spy record --rate 200 --format raw`.", "",
                 "| self | function (top of stack) |", "|---:|---|"]  # fmt: skip
        lines += [f"| {share:.0%} | `{name}` |" for name, share in own]
        lines += ["", "| inclusive | function (anywhere in the stack) |", "|---:|---|"]
        lines += [f"| {share:.0%} | `{name}` |" for name, share in inclusive]
        results.profiles.append((phase, "\n".join(lines)))
        for name, share in own[:6]:
            print(f"    {share:5.0%}  {name}", flush=True)

    return profile


# -- the report ------------------------------------------------------------------------------------


def machine_facts() -> list[str]:
    memory = "?"
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * KiB
        memory = f"{total / GiB:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for tool, flag in (("nginx", "-v"), ("wrk", "-v")):
        try:
            out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
            text = (out.stdout + out.stderr).strip().splitlines()
            versions.append(text[0] if text else tool)
        except OSError:
            versions.append(f"{tool}: not found")
    import twisted

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"nproc: {os.cpu_count()}, CPU: {cpu}, load average before the run: {load}",
        f"memory: {memory}",
        f"Python {platform.python_version()} ({platform.python_implementation()}), Twisted {twisted.__version__}, "
        f"{platform.system()} {platform.release()}",
        "; ".join(versions),
    ]


def render_markdown(command: str, facts: list[str], results: Results, rss: dict[str, int], hwm: int | None,
                    sizes: Sizes, elapsed: float) -> str:  # fmt: skip
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` (do not edit by hand; run it again). Everything runs on one machine",
        "on 127.0.0.1: the node under `twistd -n jsdistributor`, storage-node simulators",
        "(`jsdistributor storage-sim`), nginx as the file-serving reference (one worker process,",
        "`sendfile on`, access log on, serving the node's own cache files), load from `wrk` and from",
        "the small socket clients in `bench/run.py`. The node logs every request (access log, `info`).",
        "",
        "```sh",
        command,
        "```",
        "",
        "Machine: " + "; ".join(facts[:2]) + ".  ",
        facts[2] + ".  ",
        facts[3] + f". Run took {elapsed:.0f} s.",
        "",
        "## Results",
        "",
        "| measure | node | reference | |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {what.strip()} | {node} | {ref} | {extra} |" for what, node, ref, extra in results.rows]
    lines += ["", "Peak RSS of the node process (VmRSS sampled every 20 ms):", "", "| phase | peak RSS |", "|---|---:|"]
    lines += [f"| {phase} | {peak / MiB:.0f} MiB |" for phase, peak in rss.items()]
    if hwm is not None:
        lines.append(f"| whole run (VmHWM) | {hwm / MiB:.0f} MiB |")
    lines += ["", "## Goals", "", "| goal | measured | |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {'PASS' if passed else '**MISS**'} |" for goal, measured, passed in results.goals]
    lines += [
        "",
        "## Definitions",
        "",
        f"- **Cached small / large**: the object is fetched once through the node first; then `wrk -t1 -c64`"
        f" (small, {sizes.small // KiB} KiB) or `-c4` (large) for {sizes.seconds:g} s each against the node and"
        " against nginx serving the same file from the node's cache directory. Throughput is wrk's"
        " `Transfer/sec`.",
        f"- **Miss TTFB**: {sizes.miss_samples} samples, each a never-requested id (the catalog lists the same"
        f" {sizes.miss // MiB} MiB file under {sizes.miss_samples} ids), new connection, time from connect to the"
        " first body byte; the reference is the same request sent straight to the simulator, interleaved with"
        " the node's samples. Overhead = node percentile - direct percentile. After each sample the"
        " benchmark waits for the node's download to finish, so samples do not overlap.",
        f"- **100 readers, full speed**: {sizes.readers} connections request one uncached"
        f" {sizes.coalesce // MiB} MiB object at once; upstream GETs from the simulator's `/api/v1/_stats`;"
        " per-reader throughput = size / (last byte - request sent).",
        f"- **Fan-out lag**: {sizes.readers} readers of an uncached {sizes.fanout // MiB} MiB object whose"
        f" simulator is throttled to {sizes.fanout_rate / MiB:g} MiB/s (egress {sizes.readers} x that). The"
        " simulator records when it wrote the chunk holding each MiB boundary k of the object; each reader"
        " records when its body passed k; lag = reader time - simulator time (same machine, same clock),"
        " p50/p99 over every reader and every boundary k >= 1 MiB. Boundary 0 is each reader's first byte:"
        " the node starts 100 responses at once then, so it is reported apart (`first byte`), as is the"
        " last byte (the simulator's end of body -> each reader's last byte; the node holds the last byte"
        " back until the content hash is verified).",
        "- **RSS**: the node process's resident set, sampled from `/proc/PID/status` during each phase.",
        "- **Hit workers**: a second node with `publicApi.workers` set (`--workers`, default CPU cores - 1),"
        " its own cache; the small and large hit measures are repeated against it, against nginx with one"
        " process (`master_process off`) and, for small hits, nginx with as many worker processes as the node"
        " has processes, all serving that node's cache files. Its RSS row sums the node and its workers.",
    ]
    if results.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in results.notes]
    if results.profiles:
        lines += ["", "## Profiles of the phases that missed their goal", ""]
        for phase, text in results.profiles:
            lines += [f"### {phase}", "", text, ""]
    if results.eviction:
        lines += ["", "## Eviction bookkeeping at 1M objects", "", "```", results.eviction.rstrip(), "```"]
    if FINDINGS.is_file():
        lines += ["", FINDINGS.read_text("utf-8").rstrip()]
    scale_out = _scale_out_figures()
    if scale_out:
        lines += ["", "## Scale-out behind HAProxy (from docs/scale-out.md)", "", scale_out]
    return "\n".join(lines).rstrip() + "\n"


def _scale_out_figures() -> str:
    """The measured section of docs/scale-out.md (``bench/bench_haproxy.py``
    writes its figures there; it starts several nodes and takes a minute, so
    it is run on its own)."""
    doc = ROOT / "docs" / "scale-out.md"
    if not doc.is_file():
        return ""
    text = doc.read_text("utf-8")
    start = text.find("## Measured")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    section = text[start:] if end < 0 else text[start:end]
    return section.split("\n", 1)[1].strip()


# -- main ---------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the node against nginx and a storage simulator on 127.0.0.1; "
        "prints a table and writes docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller objects, fewer samples, shorter runs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="the Markdown report to write")
    parser.add_argument("--workdir", help="where objects, caches and logs go (default: .bench/ in the checkout)")
    parser.add_argument("--no-profile", action="store_true", help="do not run py-spy on missed goals")
    parser.add_argument("--skip-eviction", action="store_true", help="skip the 1M-object eviction benchmark")
    parser.add_argument(
        "--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), metavar="N",
        help="hit workers of the second node measured (publicApi.workers; default: CPU cores - 1; 0: skip)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        print(f"error: {' and '.join(missing)} not installed (apt-get install wrk nginx-light)", file=sys.stderr)
        return 2
    sizes = sizes_for(args.quick)
    work = Path(args.workdir or ROOT / ".bench").absolute()
    work.mkdir(parents=True, exist_ok=True)
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    started = time.monotonic()
    facts = machine_facts()
    if os.getloadavg()[0] > 0.5:
        print(f"warning: the machine is busy (load {os.getloadavg()[0]:.2f}): figures will be low", file=sys.stderr)
    net = Network(work, sizes)
    results = Results()
    rss: RssSampler | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        net.start()
        assert net.node is not None
        rss = RssSampler(net.node.pid)
        profile = make_profiler(net, results, work, not args.no_profile)
        print(f"  {'measure':<44} {'node':>16} {'reference':>16}", flush=True)
        phase_small(net, results, rss, profile)
        phase_large(net, results, rss, profile)
        phase_miss(net, results, rss)
        phase_coalesce(net, results, rss)
        phase_fanout(net, results, rss)
        if args.workers > 0:
            phase_workers(net, results, args.workers)
        peak = max(rss.peaks.values())
        results.goal("node RSS <= 150 MiB (peak over the phases)", f"{peak / MiB:.0f} MiB", peak <= 150 * MiB)
        hwm = rss.high_water_mark()
        rss_peaks = dict(rss.peaks)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if rss is not None:
            rss.stop()
        net.processes.stop_all()
        for node_dir in ("node", "node-workers"):  # the nodes' caches: gigabytes, throw-away
            shutil.rmtree(work / node_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    if not args.skip_eviction:
        phase_eviction(results, args.quick)
    print()
    for goal, measured, passed in results.goals:
        print(f"  {'PASS' if passed else 'MISS'}  {goal}: {measured}")
    for note in results.notes:
        print(f"  note: {note}")
    report = render_markdown(command, facts, results, rss_peaks, hwm, sizes, time.monotonic() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
