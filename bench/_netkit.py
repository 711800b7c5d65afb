"""What the reliability benchmarks share: storage-node simulators running in
the benchmark's own reactor (so their knobs can be turned mid-run), the
node as a real ``twistd`` child process, and samplers of its memory and
open descriptors."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jsdistributor.metadata.catalog import write_catalog  # noqa: E402
from jsdistributor.testing.daemon import Daemon, twistd_argv  # noqa: E402
from jsdistributor.testing.network import free_port, node_config_document  # noqa: E402

KiB = 1024
MiB = 1024 * KiB


def sleep(reactor: Any, seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def proc_status(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in kB (VmRSS, VmHWM), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Sampler:
    """Samples the node's VmRSS (KiB) and open descriptors every ``every`` s."""

    def __init__(self, reactor: Any, pid: int, every: float = 0.2) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int]] = []
        self._reactor = reactor
        self._loop = LoopingCall(self._sample)
        self._loop.clock = reactor
        self._every = every

    def start(self) -> None:
        self._loop.start(self._every, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _sample(self) -> None:
        self.samples.append((self._reactor.seconds(), proc_status(self.pid, "VmRSS"), open_fds(self.pid)))

    def window(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]

    @staticmethod
    def peak(samples: list[tuple[float, int, int]]) -> tuple[int, int]:
        if not samples:
            return 0, 0
        return max(s[1] for s in samples), max(s[2] for s in samples)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return "p50 %.3fs, p99 %.3fs, max %.3fs" % (
        statistics.median(values),
        percentile(values, 99),
        max(values),
    )


def write_node_files(
    work: Path, catalog: dict[str, Any], storage: str = "20G", **overrides: Any
) -> tuple[Path, int, int]:
    """catalog.json + config.json for a node on free ports; (config, public, operator)."""
    work.mkdir(parents=True, exist_ok=True)
    write_catalog(work / "catalog.json", catalog)
    public, operator = free_port(), free_port()
    doc = node_config_document(work, "catalog.json", public, operator, storage=storage)
    # Production defaults for the limits, unless overridden.
    doc["limits"] = {"storage": storage}
    doc["logs"] = {"console": {"level": "warn"}}
    for dotted, value in overrides.items():
        target = doc
        *parents, last = dotted.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = value
    path = work / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path, public, operator


async def launch_node(reactor: Any, config: Path, public_port: int) -> Daemon:
    daemon = Daemon(reactor, twistd_argv(config))
    try:
        await daemon.wait_for_port(public_port, timeout=60)
    except BaseException:
        daemon.kill()
        raise
    return daemon
