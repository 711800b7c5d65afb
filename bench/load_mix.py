"""Load: many concurrent connections fetching a mix of hits, pending
downloads and misses, with every body that can be checked checked.

    .venv/bin/python bench/load_mix.py [--connections 1000] [--seconds 60]
    .venv/bin/python bench/load_mix.py --soak [--soak-minutes 10]

Three storage-node simulators run in this process (two fast ones holding
the hit set and the miss pool, one throttled to ``--slow-rate`` holding the
pending set, so those downloads last the whole run); the node runs as a
``twistd`` child with production limits. ``wrk`` (``--wrk``, default
``/usr/bin/wrk``) drives ``--connections`` keep-alive connections with a Lua
script choosing, per request: a cached object (60%), an object of the miss
pool (25%: the first request for an id is a miss, the next ones are pending
then hits), or an 8 KiB range near the start of a pending object (15%).
Its ``response`` hook counts 5xx, other non-2xx and bodies whose length
differs from their ``Content-Length``. wrk cannot compare bodies, so a
checker (``--checkers`` threads here) samples the same mix meanwhile and
compares every body with the SHA-256 of the source bytes.

At the end: every upstream object must have been fetched exactly once (the
simulators' GET counts), no wrong body, no 5xx; the node's VmRSS is sampled
throughout. ``--soak`` runs at a lower rate (``--soak-connections``, each
pausing ``--soak-delay-ms`` between requests) for ``--soak-minutes`` and
records RSS and open descriptors every 10 s.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import task, threads
from twisted.internet.defer import ensureDeferred

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _netkit import KiB, MiB, Sampler, launch_node, sleep, write_node_files  # noqa: E402

from jsdistributor.cache.hashing import content_hash  # noqa: E402
from jsdistributor.metadata.catalog import CatalogBuilder  # noqa: E402
from jsdistributor.testing.storage_sim import start_storage_sim  # noqa: E402

HITS = range(1, 201)  # 100 KiB each, cached before the run
POOL = range(1001, 7001)  # 64 KiB each, never requested before the run
PENDING = range(9001, 9021)  # 16 MiB each on the throttled simulator
RANGE_SPAN = 8 * KiB
RANGE_WINDOW = 128 * KiB

LUA = r"""
local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  s5xx = 0
  other = 0
  badlen = 0
  responses = 0
end

request = function()
  local r = math.random()
  local headers = {}
  local path
  if r < HIT_SHARE then
    path = "/api/v1/assets/" .. math.random(HIT_LO, HIT_HI)
  elseif r < HIT_SHARE + POOL_SHARE then
    path = "/api/v1/assets/" .. math.random(POOL_LO, POOL_HI)
  else
    local start = math.random(0, RANGE_WINDOW - RANGE_SPAN)
    path = "/api/v1/assets/" .. math.random(PENDING_LO, PENDING_HI)
    headers["Range"] = "bytes=" .. start .. "-" .. (start + RANGE_SPAN - 1)
  end
  return wrk.format("GET", path, headers)
end

response = function(status, headers, body)
  responses = responses + 1
  if status >= 500 then
    s5xx = s5xx + 1
  elseif status >= 300 then
    other = other + 1
  end
  local length = headers["Content-Length"] or headers["content-length"]
  if length ~= nil and tonumber(length) ~= #body then
    badlen = badlen + 1
  end
end

DELAY

done = function(summary, latency, requests)
  local t5, to, tb, tr = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    t5 = t5 + thread:get("s5xx")
    to = to + thread:get("other")
    tb = tb + thread:get("badlen")
    tr = tr + thread:get("responses")
  end
  io.write(string.format("LUA-COUNTS responses=%d s5xx=%d other=%d badlen=%d\n", tr, t5, to, tb))
end
"""


def write_objects(directory: Path, ids: range, size: int, seed: int) -> dict[str, str]:
    """Random files named by id; returns id -> sha256 hex."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    digests = {}
    for object_id in ids:
        data = rng.randbytes(size)
        (directory / str(object_id)).write_bytes(data)
        digests[str(object_id)] = hashlib.sha256(data).hexdigest()
    return digests


def catalog(fast_urls: list[str], slow_url: str, files: Path) -> dict[str, Any]:
    builder = CatalogBuilder()
    for i, url in enumerate(fast_urls):
        builder.add_storage_node(str(i), url)
    builder.add_storage_node("9", slow_url)
    builder.add_distribution_bucket("0:0", worker_id=0)
    builder.add_bag("dynamic:channel:1", [str(i) for i in range(len(fast_urls))], ["0:0"])
    builder.add_bag("dynamic:channel:2", ["9"], ["0:0"])
    for ids, bag in ((HITS, "dynamic:channel:1"), (POOL, "dynamic:channel:1"), (PENDING, "dynamic:channel:2")):
        for object_id in ids:
            data = (files / str(object_id)).read_bytes()
            builder.add_object(bag, {"id": str(object_id), "size": len(data), "ipfsHash": content_hash(data)})
    return builder.build()


class Checker:
    """Threads fetching the same mix with a plain HTTP client and comparing
    every body with the source's SHA-256 (ranges: with the source's slice)."""

    def __init__(self, port: int, files: Path, digests: dict[str, str], hit_share: float, pool_share: float) -> None:
        self.port = port
        self.files = files
        self.digests = digests
        self.hit_share = hit_share
        self.pool_share = pool_share
        self.counts: Counter[str] = Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._slices: dict[str, bytes] = {}

    def _pending_prefix(self, object_id: str) -> bytes:
        if object_id not in self._slices:
            with open(self.files / object_id, "rb") as f:
                self._slices[object_id] = f.read(RANGE_WINDOW)
        return self._slices[object_id]

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            r = rng.random()
            headers = {}
            if r < self.hit_share:
                object_id, start = str(rng.choice(HITS)), None
            elif r < self.hit_share + self.pool_share:
                object_id, start = str(rng.choice(POOL)), None
            else:
                object_id = str(rng.choice(PENDING))
                start = rng.randrange(0, RANGE_WINDOW - RANGE_SPAN)
                headers["Range"] = f"bytes={start}-{start + RANGE_SPAN - 1}"
            try:
                outcome = self._fetch(object_id, headers)
            except (OSError, http.client.HTTPException) as e:
                outcome = f"error {type(e).__name__}"
            else:
                status, body, complete = outcome
                if status >= 500:
                    outcome = "5xx"
                elif not complete:
                    outcome = "cut"
                elif start is None and status == 200:
                    ok = hashlib.sha256(body).hexdigest() == self.digests[object_id]
                    outcome = "ok" if ok else "WRONG"
                elif start is not None and status == 206:
                    ok = body == self._pending_prefix(object_id)[start : start + RANGE_SPAN]
                    outcome = "ok" if ok else "WRONG"
                else:
                    outcome = f"status {status}"
            with self._lock:
                self.counts[outcome] += 1

    def _fetch(self, object_id: str, headers: dict[str, str]) -> tuple[int, bytes, bool]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", f"/api/v1/assets/{object_id}", headers=headers)
            response = connection.getresponse()
            length = response.getheader("content-length")
            try:
                body = response.read()
            except http.client.IncompleteRead as e:
                return response.status, e.partial, False
            complete = length is None or int(length) == len(body)
            return response.status, body, complete
        finally:
            connection.close()


def run_wrk(args: argparse.Namespace, script: Path, url: str, connections: int, seconds: float) -> dict[str, Any]:
    command = [args.wrk, "-t", str(args.threads), "-c", str(connections), "-d", f"{seconds:.0f}s",
               "--timeout", "20s", "-s", str(script), "--latency", url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    text = out.stdout + out.stderr
    counts = dict(re.findall(r"(\w+)=(\d+)", text.split("LUA-COUNTS", 1)[1])) if "LUA-COUNTS" in text else {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+\w+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)", text, re.M))
    return {
        "command": " ".join(command),
        "requests_per_second": float(rps.group(1)) if rps else None,
        "transfer_per_second": transfer.group(1) if transfer else None,
        "latency_percentiles": latency,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()))) if errors else {},
        "lua": {k: int(v) for k, v in counts.items()},
        "raw": text,
    }


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="load-mix-"))
    files = work / "objects"
    print(f"preparing objects in {files} ...", flush=True)
    digests = write_objects(files, HITS, 100 * KiB, 1)
    digests.update(write_objects(files, POOL, 64 * KiB, 2))
    digests.update(write_objects(files, PENDING, args.pending_mib * MiB, 3))
    fast = [await start_storage_sim(reactor, directory=files) for _ in range(2)]
    slow = await start_storage_sim(reactor, directory=files)
    slow.sim.configure(rate=args.slow_rate)
    config, public, _ = write_node_files(work / "node", catalog([s.node_endpoint for s in fast], slow.node_endpoint, files))
    daemon = await launch_node(reactor, config, public)
    sampler = Sampler(reactor, daemon.process.pid, every=0.2 if not args.soak else 10.0)
    sampler.start()
    report: dict[str, Any] = {"mode": "soak" if args.soak else "mix"}
    try:
        print("warming the hit set ...", flush=True)
        checker = Checker(public, files, digests, 0.60, 0.25)

        def warm() -> None:
            for object_id in HITS:
                status, body, complete = checker._fetch(str(object_id), {})
                assert status == 200 and complete and hashlib.sha256(body).hexdigest() == digests[str(object_id)]

        await threads.deferToThread(warm)
        await sleep(reactor, 1.0)
        for sim in (*fast, slow):
            sim.sim.reset_stats()
        before = sampler.samples[-1]
        if args.soak:
            connections, seconds, delay = args.soak_connections, args.soak_minutes * 60, args.soak_delay_ms
        else:
            connections, seconds, delay = args.connections, args.seconds, 0
        lua = (
            LUA.replace("HIT_SHARE", "0.60").replace("POOL_SHARE", "0.25")
            .replace("HIT_LO", str(HITS.start)).replace("HIT_HI", str(HITS.stop - 1))
            .replace("POOL_LO", str(POOL.start)).replace("POOL_HI", str(POOL.stop - 1))
            .replace("PENDING_LO", str(PENDING.start)).replace("PENDING_HI", str(PENDING.stop - 1))
            .replace("RANGE_WINDOW", str(RANGE_WINDOW)).replace("RANGE_SPAN", str(RANGE_SPAN))
            .replace("DELAY", f"delay = function() return {delay} end" if delay else "")
        )
        script = work / "mix.lua"
        script.write_text(lua)
        started = reactor.seconds()
        checkers = [threading.Thread(target=checker.run, args=(seed,), daemon=True) for seed in range(args.checkers)]
        for thread in checkers:
            thread.start()
        print(f"wrk: {connections} connections for {seconds:.0f}s ...", flush=True)
        wrk = await threads.deferToThread(run_wrk, args, script, f"http://127.0.0.1:{public}", connections, seconds)
        checker.stop.set()
        await threads.deferToThread(lambda: [t.join(60) for t in checkers])
        ended = reactor.seconds()
        gets: Counter[str] = Counter()
        ranged: Counter[str] = Counter()
        for sim in (*fast, slow):
            for record in sim.sim.requests:
                if record.method == "GET" and record.object_id is not None:
                    (ranged if record.range_header else gets)[record.object_id] += 1
        fetched_twice = {k: v for k, v in gets.items() if v > 1}
        window = sampler.window(started, ended)
        peak_rss, peak_fds = Sampler.peak(window)
        report.update(
            {
                "connections": connections,
                "seconds": seconds,
                "wrk": {k: v for k, v in wrk.items() if k != "raw"},
                "checker": dict(checker.counts),
                "upstream_objects_fetched": len(gets),
                "upstream_objects_fetched_more_than_once": fetched_twice,
                "upstream_range_gets": sum(ranged.values()),
                "node_rss_kib": {"before": before[1], "peak": peak_rss, "after": sampler.samples[-1][1]},
                "node_fds": {"before": before[2], "peak": peak_fds, "after": sampler.samples[-1][2]},
                "node_alive": daemon.exit_code is None,
                "node_log_lines": _log_summary(daemon.output),
            }
        )
        if args.soak:
            report["timeline"] = [
                {"t": round(t - started), "rss_kib": rss, "fds": fds} for t, rss, fds in sampler.samples if t >= started
            ]
        text = json.dumps(report, indent=2)
        print(wrk["raw"])
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    finally:
        sampler.stop()
        await daemon.stop()
        for sim in (*fast, slow):
            await sim.stop()


def _log_summary(output: str, keep: int = 8) -> dict[str, Any]:
    """How many lines the node logged (at warn and above) and the kinds."""
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("\t")]
    kinds: Counter[str] = Counter(re.sub(r"\d+", "N", line.split("] ", 1)[-1])[:90] for line in lines)
    return {"count": len(lines), "most_common": kinds.most_common(keep)}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--checkers", type=int, default=4, help="body-checking client threads")
    parser.add_argument("--pending-mib", type=int, default=16, help="size of each pending object")
    parser.add_argument("--slow-rate", type=float, default=128 * KiB, help="bytes/s of the throttled simulator")
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--soak-minutes", type=float, default=10)
    parser.add_argument("--soak-connections", type=int, default=50)
    parser.add_argument("--soak-delay-ms", type=int, default=100)
    parser.add_argument("--wrk", default="/usr/bin/wrk")
    parser.add_argument("--work", help="working directory (default: a new temporary one)")
    parser.add_argument("--out", help="also write the JSON report here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: ensureDeferred(main(reactor, arguments)))
