"""Smoke tests of ``bench/run.py``'s pure helpers (the benchmark itself is
not a test: ``python bench/run.py [--quick]``)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

MiB = 1024 * 1024
GiB = 1024 * MiB


def _load() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    spec = importlib.util.spec_from_file_location("jsd_bench_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs classes need their module registered
    spec.loader.exec_module(module)
    return module


bench = _load()

# Captured from wrk 4.1.0 against nginx.
SMALL = """\
Running 1s test @ http://127.0.0.1:41625/api/v1/assets/1
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.42ms  811.33us   6.36ms   71.89%
    Req/Sec    23.70k     3.14k   28.42k    70.00%
  Latency Distribution
     50%    2.49ms
     75%    2.78ms
     90%    3.23ms
     99%    4.68ms
  23575 requests in 1.00s, 2.25GB read
Requests/sec:  23517.22
Transfer/sec:      2.25GB
"""

ERRORS = """\
Running 1s test @ http://127.0.0.1:41625/api/v1/assets/2
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    56.52us   80.39us   2.36ms   99.21%
    Req/Sec    74.77k     5.59k   80.54k    72.73%
  81430 requests in 1.10s, 23.92MB read
  Socket errors: connect 0, read 3, write 0, timeout 12
  Non-2xx or 3xx responses: 81430
Requests/sec:  74035.28
Transfer/sec:     21.75MB
"""


class WrkParserTests(SynchronousTestCase):
    def test_summary_and_latency_distribution(self) -> None:
        result = bench.parse_wrk(SMALL)
        self.assertEqual(result.requests, 23575)
        self.assertEqual(result.duration, 1.0)
        self.assertEqual(result.bytes_read, int(2.25 * GiB))
        self.assertEqual(result.requests_per_sec, 23517.22)
        self.assertEqual(result.transfer_per_sec, float(int(2.25 * GiB)))
        self.assertApproximates(result.latency_p50, 0.00249, 1e-9)
        self.assertApproximates(result.latency_p99, 0.00468, 1e-9)
        self.assertEqual((result.socket_errors, result.non_2xx), (0, 0))

    def test_errors_and_no_distribution(self) -> None:
        result = bench.parse_wrk(ERRORS)
        self.assertEqual((result.requests, result.duration), (81430, 1.1))
        self.assertEqual(result.bytes_read, int(23.92 * MiB))
        self.assertEqual((result.latency_p50, result.latency_p99), (None, None))
        self.assertEqual((result.socket_errors, result.non_2xx), (15, 81430))

    def test_units(self) -> None:
        self.assertEqual(bench.parse_wrk_size("512B"), 512)
        self.assertEqual(bench.parse_wrk_size("1.50KB"), 1536)
        self.assertEqual(bench.parse_wrk_duration("56.52us"), 56.52e-6)
        self.assertEqual(bench.parse_wrk_duration("2m"), 120.0)
        self.assertRaises(ValueError, bench.parse_wrk_size, "12 parsecs")

    def test_not_a_report(self) -> None:
        self.assertRaises(ValueError, bench.parse_wrk, "unable to connect to 127.0.0.1:1 Connection refused\n")


class HelperTests(SynchronousTestCase):
    def test_percentile_nearest_rank(self) -> None:
        values = list(range(1, 101))
        self.assertEqual(bench.percentile(values, 50), 50)
        self.assertEqual(bench.percentile(values, 99), 99)
        self.assertEqual(bench.percentile([7.0], 99), 7.0)
        self.assertEqual(bench.percentile([3, 1, 2], 100), 3)

    def test_collapse_py_spy(self) -> None:
        raw = (
            "<module> (twistd:8);run (/v/lib/python3.11/site-packages/twisted/app.py:12);"
            "write (/v/lib/python3.11/site-packages/twisted/internet/abstract.py:351) 3\n"
            "<module> (twistd:8);run (/v/lib/python3.11/site-packages/twisted/app.py:12);"
            "_pump (/work/main/jsdistributor/cache/readers.py:170) 1\n"
            "garbage line\n"
        )
        own, inclusive, total = bench.collapse_py_spy(raw)
        self.assertEqual(total, 4)
        self.assertEqual(own[0], ("write (twisted/internet/abstract.py)", 0.75))
        self.assertEqual(own[1], ("_pump (jsdistributor/cache/readers.py)", 0.25))
        self.assertIn(("write (twisted/internet/abstract.py)", 0.75), inclusive)

    def test_help(self) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as raised:
            bench.main(["--help"])
        self.assertEqual(raised.exception.code, 0)
        self.assertIn("--quick", out.getvalue())
