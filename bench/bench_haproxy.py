"""Scale-out benchmark (a script, not a test): one node vs three nodes
behind HAProxy (the shipped ``etc/haproxy.cfg``), on 127.0.0.1.

    python bench/bench_haproxy.py [--objects 300] [--size 64K] [--capacity 100]
                                  [--requests 3000] [--alpha 0.8] [--duration 10]
                                  [--connections 32] [--wrk-objects 90]

Nodes are separate ``twistd jsdistributor`` processes, each with its own
cache directories and ``limits.storage`` = ``capacity`` objects; they share
one storage-node simulator (in this process) and one static catalog.

1. Cache figures: the same Zipf(``alpha``) trace of ``requests`` requests
   over ``objects`` objects (8 at a time), against one node, three nodes
   behind HAProxy with ``balance uri`` + ``hash-type consistent`` (the
   shipped config), and three nodes with ``balance roundrobin`` (for
   contrast): hit ratio (x-cache: hit) and object downloads from the
   storage node.
2. Throughput (``wrk``, warm cache: all hits, checked by counting the
   storage node's downloads during the run): fresh nodes whose caches hold
   every object; ``wrk-objects`` objects requested in turn by
   ``connections`` connections for ``duration`` seconds: to one node
   directly, through HAProxy to one node, and through HAProxy to three
   nodes.

Needs ``haproxy`` and ``wrk`` (Debian packages of the same names).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from itertools import accumulate
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402

from jsdistributor.metadata.catalog import write_catalog  # noqa: E402
from jsdistributor.sizes import format_size, parse_size  # noqa: E402
from jsdistributor.testing.daemon import Daemon, twistd_argv  # noqa: E402
from jsdistributor.testing.haproxy import find_haproxy, start_haproxy  # noqa: E402
from jsdistributor.testing.network import build_catalog, free_port, node_config_document  # noqa: E402
from jsdistributor.testing.storage_sim import start_storage_sim  # noqa: E402

WRK_SCRIPT = """
local ids = {%s}
local i = math.random(#ids)
request = function()
  i = i %% #ids + 1
  return wrk.format("GET", "/api/v1/assets/" .. ids[i])
end
"""


def zipf_trace(rng: random.Random, objects: list[str], requests: int, alpha: float) -> list[str]:
    ranked = objects[:]
    rng.shuffle(ranked)
    cumulative = list(accumulate(1.0 / (rank + 1) ** alpha for rank in range(len(ranked))))
    return rng.choices(ranked, cum_weights=cumulative, k=requests)


class Cluster:
    """``count`` twistd nodes (optionally behind HAProxy)."""

    def __init__(self, reactor: Any, root: Path, catalog: Path, count: int, storage: int) -> None:
        self.reactor = reactor
        self.root = root
        self.catalog = catalog
        self.count = count
        self.storage = storage
        self.daemons: list[Daemon] = []
        self.ports: list[int] = []
        self.proxy: Any = None

    async def start(self) -> None:
        for n in range(self.count):
            directory = self.root / f"node{n + 1}"
            directory.mkdir(parents=True)
            port = free_port()
            doc = node_config_document(
                directory, str(self.catalog), port, free_port(), storage=format_size(self.storage),
                id=f"node{n + 1}", **{"logs.console.level": "warn"},
            )
            config = directory / "config.json"
            config.write_text(json.dumps(doc))
            daemon = Daemon(self.reactor, twistd_argv(config))
            self.daemons.append(daemon)
            self.ports.append(port)
        for daemon, port in zip(self.daemons, self.ports):
            await daemon.wait_for_port(port)

    async def front(self, balance: str | None = None) -> str:
        servers = [(f"node{n + 1}", "127.0.0.1", port) for n, port in enumerate(self.ports)]
        self.proxy = await start_haproxy(
            self.reactor, self.root / "haproxy", servers, port=free_port(), stats_port=free_port(),
            balance=balance, check="check inter 1s fall 2 rise 1",
        )
        await self.proxy.wait_until_all_up([name for name, _, _ in servers])
        return str(self.proxy.url)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
        for daemon in self.daemons:
            await daemon.stop()


async def replay(http: Any, base: str, trace: list[str], concurrency: int = 8) -> int:
    """Requests ``trace`` in order, ``concurrency`` at a time; the number of hits."""
    semaphore = defer.DeferredSemaphore(concurrency)
    hits = 0

    async def one(object_id: str) -> None:
        nonlocal hits
        response = await http.get(f"{base}/api/v1/assets/{object_id}")
        await treq.content(response)
        if response.code != 200:
            raise RuntimeError(f"{object_id}: HTTP {response.code}")
        if (response.headers.getRawHeaders("x-cache") or [""])[0] == "hit":
            hits += 1

    await defer.gatherResults(
        [semaphore.run(lambda i=i: defer.ensureDeferred(one(i))) for i in trace], consumeErrors=True
    )
    return hits


def wrk(url: str, ids: list[str], duration: int, connections: int, directory: Path) -> dict[str, str]:
    script = directory / "ids.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{i}"' for i in ids))
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, timeout=duration + 60,
    )
    text = out.stdout
    found = {
        "requests/s": re.search(r"Requests/sec:\s+(\S+)", text),
        "transfer/s": re.search(r"Transfer/sec:\s+(\S+)", text),
        "p50": re.search(r"\s50%\s+(\S+)", text),
        "p99": re.search(r"\s99%\s+(\S+)", text),
        "errors": re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text),
    }
    result = {k: (m.group(1) if m else ("0" if k == "errors" else "?")) for k, m in found.items()}
    if out.returncode != 0 or result["requests/s"] == "?":
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    return result


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if find_haproxy() is None or shutil.which("wrk") is None:
        raise SystemExit("needs haproxy and wrk (apt-get install haproxy wrk)")
    size = parse_size(args.size)
    rng = random.Random(1)
    objects = {str(i): rng.randbytes(size) for i in range(1, args.objects + 1)}
    ids = list(objects)
    trace = zipf_trace(rng, ids, args.requests, args.alpha)
    storage = args.capacity * size
    root = Path(tempfile.mkdtemp(prefix="bench-haproxy-"))
    sim = await start_storage_sim(reactor, objects=objects)
    catalog = root / "catalog.yml"
    write_catalog(catalog, build_catalog([sim.node_endpoint], objects))
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 16
    http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    print(f"# {args.objects} objects of {format_size(size)}; each node caches {args.capacity} "
          f"({format_size(storage)}); Zipf alpha {args.alpha}, {args.requests} requests, 8 at a time")
    print(f"# {os.cpu_count()} CPUs; nodes are twistd processes; storage simulator in the bench process")
    print()
    print("| setup | hit ratio | downloads from storage |")
    print("|---|---:|---:|")
    throughput: list[tuple[str, dict[str, str]]] = []
    wrk_ids = ids[: args.wrk_objects]

    for label, count, balance in (
        ("1 node", 1, None),
        ("3 nodes, HAProxy balance uri + hash-type consistent", 3, None),
        ("3 nodes, HAProxy balance roundrobin (contrast)", 3, "roundrobin"),
    ):
        cluster = Cluster(reactor, root / f"ratio-{count}-{balance or 'uri'}", catalog, count, storage)
        await cluster.start()
        try:
            base = f"http://127.0.0.1:{cluster.ports[0]}" if count == 1 else await cluster.front(balance)
            sim.sim.reset_stats()
            hits = await replay(http, base, trace)
            downloads = sum(sim.sim.stats()["gets"].values())
            print(f"| {label} | {hits / len(trace):.1%} | {downloads} |")
        finally:
            await pool.closeCachedConnections()
            await cluster.stop()

    async def measure(label: str, base: str) -> None:
        """wrk on a warm cache; checks nothing was downloaded meanwhile."""
        for _ in range(2):
            await replay(http, base, wrk_ids)
        await pool.closeCachedConnections()
        sim.sim.reset_stats()
        result = await deferToThread(wrk, base, wrk_ids, args.duration, args.connections, root)
        result["downloads"] = str(sum(sim.sim.stats()["gets"].values()))
        throughput.append((label, result))

    # Throughput: caches big enough for every object, so all are hits.
    big = 2 * len(objects) * size
    for count in (1, 3):
        cluster = Cluster(reactor, root / f"throughput-{count}", catalog, count, big)
        await cluster.start()
        try:
            if count == 1:
                await measure("1 node, direct", f"http://127.0.0.1:{cluster.ports[0]}")
                await measure("1 node, through HAProxy", await cluster.front(None))
            else:
                await measure("3 nodes, through HAProxy", await cluster.front(None))
        finally:
            await pool.closeCachedConnections()
            await cluster.stop()
    print()
    print(f"# wrk -t2 -c{args.connections} -d{args.duration}s, {len(wrk_ids)} objects of "
          f"{format_size(size)} in turn, all cache hits")
    print()
    print("| target | requests/s | transfer/s | p50 latency | p99 latency | non-2xx | downloads during the run |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in throughput:
        print(
            f"| {label} | {r['requests/s']} | {r['transfer/s']} | {r['p50']} | {r['p99']} | {r['errors']} "
            f"| {r['downloads']} |"
        )
    await sim.stop()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--size", default="64K")
    parser.add_argument("--capacity", type=int, default=100, help="objects each node can cache")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-objects", type=int, default=90)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
