"""Benchmark of the cache bookkeeping (a script, not a test).

    python bench/bench_eviction.py [--entries 1000000] [--state-dir DIR]

Prints: time to fill an ``LruSpPolicy`` with N entries; median/p99 of one
``access`` and one ``pop_victim`` (also with objects in use); time to save
and load the state file with N entries; and the hit ratios of LRU-SP and
plain LRU on a synthetic Zipf trace at a given cache capacity.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from itertools import accumulate
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jsdistributor.cache.eviction import LruPolicy, LruSpPolicy, replay_stats  # noqa: E402
from jsdistributor.cache.state import load_state, save_state, state_file  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def random_size(rng: random.Random) -> int:
    """Log-uniform between 1 KiB and 2 GiB (thumbnails to long videos)."""
    return int(2 ** rng.uniform(10, 31))


def percentiles(samples_ns: list[int]) -> str:
    samples = sorted(samples_ns)
    median = statistics.median(samples) / 1000
    p99 = samples[int(len(samples) * 0.99) - 1] / 1000
    worst = samples[-1] / 1000
    return "median %.2f µs, p99 %.2f µs, max %.1f µs (%d samples)" % (median, p99, worst, len(samples))


def timed(label: str, action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    elapsed = time.perf_counter() - start
    print("%-46s %8.3f s" % (label, elapsed))
    return elapsed


def zipf_trace(rng: random.Random, objects: int, requests: int, alpha: float) -> list[tuple[str, int]]:
    sizes = [random_size(rng) for _ in range(objects)]
    ranks = list(range(objects))
    rng.shuffle(ranks)  # popularity unrelated to id or size
    weights = [1.0 / (rank + 1) ** alpha for rank in ranks]
    cumulative = list(accumulate(weights))
    picks = rng.choices(range(objects), cum_weights=cumulative, k=requests)
    return [(str(i), sizes[i]) for i in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=100_000, help="timed accesses / evictions")
    parser.add_argument("--in-use", type=int, default=200, help="objects in use in the in_use eviction run")
    parser.add_argument("--state-dir", default=None, help="where to write the state file (default: a temp dir)")
    parser.add_argument("--trace-objects", type=int, default=100_000)
    parser.add_argument("--trace-requests", type=int, default=1_000_000)
    parser.add_argument("--zipf-alpha", type=float, default=0.8)
    parser.add_argument("--capacity", type=float, default=0.05, help="cache capacity, fraction of catalogue bytes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    n = args.entries
    print("python %s, %d entries" % (sys.version.split()[0], n))

    # -- fill ------------------------------------------------------------------
    ids = [str(10**9 + i) for i in range(n)]
    sizes = [random_size(rng) for _ in range(n)]
    policy = LruSpPolicy()

    def fill() -> None:
        for i in range(n):
            policy.add(ids[i], sizes[i], float(i) / 100, 1 + (i % 7), "video/mp4" if i % 3 else None)

    timed("fill LruSpPolicy (%d adds)" % n, fill)

    # -- access ----------------------------------------------------------------
    now = n / 100.0
    targets = rng.choices(ids, k=args.samples)
    clock = time.perf_counter_ns
    samples: list[int] = []
    gc.disable()
    for object_id in targets:
        now += 0.01
        t0 = clock()
        policy.access(object_id, now)
        samples.append(clock() - t0)
    gc.enable()
    print("access:                %s" % percentiles(samples))

    # -- state save / load (with the full N entries) ----------------------------
    directory = args.state_dir or tempfile.mkdtemp(prefix="jsd-bench-")
    path = state_file(directory)
    snapshot: list = []
    timed("snapshot list(policy.entries())", lambda: snapshot.extend(policy.entries()))
    timed("save_state (%d entries)" % len(snapshot), lambda: save_state(path, snapshot))
    print("%-46s %8.1f MB" % ("state file size", os.path.getsize(path.path) / 1e6))
    loaded: list = []
    timed("load_state", lambda: loaded.extend(load_state(path) or []))
    assert len(loaded) == len(snapshot)
    restored = LruSpPolicy()
    timed("rebuild policy from loaded entries", lambda: restored.add_entries(loaded))
    del snapshot, loaded, restored
    os.unlink(path.path)
    if args.state_dir is None:
        os.rmdir(directory)

    # -- eviction ----------------------------------------------------------------
    samples = []
    gc.disable()
    for _ in range(args.samples):
        now += 0.01
        t0 = clock()
        policy.pop_victim(now)
        samples.append(clock() - t0)
    gc.enable()
    print("pop_victim:            %s" % percentiles(samples))

    # Objects in use: the heads of every group (the worst case: each pop
    # has to skip all of them).
    per_group = max(1, args.in_use // 24)
    busy: set[str] = set()
    taken: dict[int | None, int] = {}
    for entry in policy.lru_entries():
        group = policy.group_of(entry.object_id)
        if taken.get(group, 0) < per_group:
            taken[group] = taken.get(group, 0) + 1
            busy.add(entry.object_id)
    in_use = busy.__contains__
    samples = []
    gc.disable()
    for _ in range(min(args.samples, len(policy) - len(busy))):
        now += 0.01
        t0 = clock()
        policy.pop_victim(now, in_use)
        samples.append(clock() - t0)
    gc.enable()
    print("pop_victim, %4d in use: %s" % (len(busy), percentiles(samples)))
    del policy

    # -- hit ratio -----------------------------------------------------------------
    trace = zipf_trace(rng, args.trace_objects, args.trace_requests, args.zipf_alpha)
    catalogue = sum({i: s for i, s in trace}.values())
    capacity = int(catalogue * args.capacity)
    print(
        "Zipf trace: %d requests over %d objects (alpha %.2f), capacity %.1f GiB = %.0f%% of %.1f GiB requested"
        % (len(trace), args.trace_objects, args.zipf_alpha, capacity / GiB, args.capacity * 100, catalogue / GiB)
    )
    for name, candidate in (("LRU-SP", LruSpPolicy()), ("LRU", LruPolicy())):
        start = time.perf_counter()
        stats = replay_stats(candidate, trace, capacity)
        elapsed = time.perf_counter() - start
        print(
            "  %-7s hit ratio %.4f, byte hit ratio %.4f  (%.1f s)"
            % (name, stats.hit_ratio, stats.byte_hit_ratio, elapsed)
        )


if __name__ == "__main__":
    main()
