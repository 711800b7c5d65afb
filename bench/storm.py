"""The timeout storm, full size: every storage node stalls while many
clients keep asking for uncached objects.

    .venv/bin/python bench/storm.py [--clients 500] [--stall 60] [--mode body|silent]

The original node died of heap exhaustion in this situation. Here: two
storage-node simulators (in this process, so they can be told to stall and
to come back), the node as a ``twistd`` child with the production limits
(``outboundRequestsTimeoutMs`` 5000, 100 concurrent downloads, ...), and
``--clients`` client loops, each asking again and again for its own
uncached object while the storage nodes stall (``--mode body``: headers,
then not a byte; ``--mode silent``: not even headers). A probe fetches a
cached object every 0.5 s. After ``--stall`` seconds the storage nodes
answer again and every client asks once more.

Reports: requests and their outcomes during the stall, how long a failing
request took, hit latency during the stall, the node's RSS and open
descriptors (before / peak / after), and the recovery. The CI version is
``tests/test_faults.py`` ``TimeoutStormTests`` (100 clients, short timeouts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _netkit import KiB, Sampler, sleep, summary, write_node_files  # noqa: E402

from jsdistributor.testing.network import build_catalog  # noqa: E402
from jsdistributor.testing.storage_sim import start_storage_sim  # noqa: E402

HIT_ID = "1"


class _Body(Protocol):
    def __init__(self, done: Deferred[tuple[bytes, bool]]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback((b"".join(self.chunks), bool(reason.check(ResponseDone))))


async def get(reactor: Any, agent: Agent, url: str, timeout: float) -> tuple[int | None, bytes, bool, float]:
    """(status or None, body, complete, seconds)."""
    started = reactor.seconds()
    d = agent.request(b"GET", url.encode(), Headers({}))
    timer = reactor.callLater(timeout, d.cancel)
    try:
        response = await d
    except Exception:
        return None, b"", False, reactor.seconds() - started
    finally:
        if timer.active():
            timer.cancel()
    done: Deferred[tuple[bytes, bool]] = Deferred()
    protocol = _Body(done)
    response.deliverBody(protocol)
    guard = reactor.callLater(timeout, lambda: protocol.transport.stopProducing() if protocol.transport else None)
    body, complete = await done
    if guard.active():
        guard.cancel()
    return response.code, body, complete, reactor.seconds() - started


async def main(reactor: Any, args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="storm-"))
    size = args.object_kib * KiB
    objects = {str(i): os.urandom(size) for i in range(2, args.clients + 2)}
    objects[HIT_ID] = os.urandom(1024 * KiB)
    digests = {k: hashlib.sha256(v).digest() for k, v in objects.items()}
    sims = [await start_storage_sim(reactor, objects=objects) for _ in range(2)]
    config, public, _ = write_node_files(work, build_catalog([s.node_endpoint for s in sims], objects))
    from _netkit import launch_node

    daemon = await launch_node(reactor, config, public)
    base = f"http://127.0.0.1:{public}/api/v1/assets/"
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool.maxPersistentPerHost = 0
    agent = Agent(reactor, pool=pool, connectTimeout=30)
    sampler = Sampler(reactor, daemon.process.pid)
    sampler.start()
    try:
        code, body, complete, _ = await get(reactor, agent, base + HIT_ID, 30)
        assert code == 200 and complete and hashlib.sha256(body).digest() == digests[HIT_ID], "warm-up failed"
        await sleep(reactor, 1.0)
        baseline = sampler.samples[-1]
        knobs = {"stall_after": 0} if args.mode == "body" else {"latency": 3600.0}
        for sim in sims:
            sim.sim.configure(**knobs)
        stall_start = reactor.seconds()
        stall_end = stall_start + args.stall
        outcomes: Counter[str] = Counter()
        fail_times: list[float] = []
        wrong = 0
        hit_times: list[float] = []
        hit_failures = 0

        async def client(object_id: str) -> None:
            nonlocal wrong
            while reactor.seconds() < stall_end:
                code, body, complete, took = await get(reactor, agent, base + object_id, args.client_timeout)
                if code == 200 and complete:
                    if hashlib.sha256(body).digest() != digests[object_id]:
                        wrong += 1
                    outcomes["200 complete"] += 1
                else:
                    outcomes[f"{code} {'complete' if complete else 'cut'}" if code else "no response"] += 1
                    fail_times.append(took)
                    await sleep(reactor, 0.1)  # a viewer's player retries

        async def probe() -> None:
            nonlocal hit_failures
            while reactor.seconds() < stall_end:
                code, body, complete, took = await get(reactor, agent, base + HIT_ID, 30)
                if code == 200 and complete and hashlib.sha256(body).digest() == digests[HIT_ID]:
                    hit_times.append(took)
                else:
                    hit_failures += 1
                await sleep(reactor, 0.5)

        loops = [ensureDeferred(client(object_id)) for object_id in objects if object_id != HIT_ID]
        loops.append(ensureDeferred(probe()))
        await DeferredList(loops, consumeErrors=True)
        storm_end = reactor.seconds()
        storm_samples = sampler.window(stall_start, storm_end)
        for sim in sims:
            sim.sim.clear_knobs()
        recovery_start = reactor.seconds()
        results = await DeferredList(
            [ensureDeferred(get(reactor, agent, base + i, 120)) for i in objects if i != HIT_ID], consumeErrors=True
        )
        recovered = sum(
            1
            for (ok, r), object_id in zip(results, [i for i in objects if i != HIT_ID])
            if ok and r[0] == 200 and r[2] and hashlib.sha256(r[1]).digest() == digests[object_id]
        )
        recovery = reactor.seconds() - recovery_start
        await sleep(reactor, 2.0)
        after = sampler.samples[-1]
        peak_rss, peak_fds = Sampler.peak(storm_samples)
        report = {
            "mode": args.mode,
            "clients": args.clients,
            "stall_seconds": args.stall,
            "requests_during_stall": sum(outcomes.values()),
            "outcomes": dict(outcomes),
            "wrong_bodies": wrong,
            "failing_request_seconds": summary(fail_times),
            "hits_during_stall": len(hit_times),
            "hit_failures": hit_failures,
            "hit_latency": summary(hit_times),
            "rss_kib": {"before": baseline[1], "peak": peak_rss, "after": after[1]},
            "fds": {"before": baseline[2], "peak": peak_fds, "after": after[2]},
            "recovered": f"{recovered}/{args.clients} in {recovery:.1f}s",
            "storage_node_max_in_flight": [s.sim.max_in_flight for s in sims],
            "node_alive": daemon.exit_code is None,
        }
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
    finally:
        sampler.stop()
        await daemon.stop()
        for sim in sims:
            await sim.stop()
        await pool.closeCachedConnections()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--stall", type=float, default=60.0, help="seconds the storage nodes stall")
    parser.add_argument("--mode", choices=("body", "silent"), default="body")
    parser.add_argument("--object-kib", type=int, default=256)
    parser.add_argument("--client-timeout", type=float, default=600.0, help="a client gives up after this")
    parser.add_argument("--out", help="also write the JSON report here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: ensureDeferred(main(reactor, arguments)))
