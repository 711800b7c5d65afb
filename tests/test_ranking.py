"""Response-time ranking of storage nodes (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.storage.ranking import ResponseTimes

PENALTY = 10.0

urls = st.sampled_from([f"http://node{i}:3333/api/v1" for i in range(6)])
# A probe: a time in seconds (below the penalty) or None for a failure.
probes = st.one_of(st.none(), st.floats(min_value=0.0, max_value=PENALTY * 0.99, allow_nan=False))
histories = st.dictionaries(urls, st.lists(probes, max_size=25), max_size=6)


def _times(history: dict[str, list[float | None]]) -> ResponseTimes:
    times = ResponseTimes(window=10, failure_penalty=PENALTY)
    for url, results in history.items():
        for result in results:
            if result is None:
                times.record_failure(url)
            else:
                times.record(url, result)
    return times


class ResponseTimesTests(SynchronousTestCase):
    def test_mean_of_last_window(self) -> None:
        times = ResponseTimes(window=3)
        self.assertIsNone(times.mean("a"))
        for seconds in (100.0, 1.0, 2.0, 3.0):
            times.record("a", seconds)
        self.assertEqual(times.mean("a"), 2.0)  # 100 fell out of the window

    def test_failure_counts_as_penalty(self) -> None:
        times = ResponseTimes(window=2, failure_penalty=8.0)
        times.record("a", 2.0)
        times.record_failure("a")
        self.assertEqual(times.mean("a"), 5.0)
        self.assertTrue(times.is_penalised("a"))

    def test_dead_fastest_node_drops_to_last(self) -> None:
        """The original kept a dead node's last good mean: it stayed first."""
        times = ResponseTimes(failure_penalty=PENALTY)
        for _ in range(9):
            times.record("fast", 0.01)
            times.record("slow", 2.0)
        times.record_failure("fast")
        times.record("slow", 2.0)
        self.assertEqual(times.rank(["fast", "slow", "new"]), ["slow", "new", "fast"])

    def test_tiers_and_ties(self) -> None:
        times = ResponseTimes()
        times.record("b", 1.0)
        times.record("a", 1.0)
        times.record("c", 0.5)
        times.record_failure("d")
        self.assertEqual(times.rank(["d", "z-unprobed", "b", "a", "y-unprobed", "c"]),
                         ["c", "a", "b", "y-unprobed", "z-unprobed", "d"])

    def test_recovery(self) -> None:
        times = ResponseTimes(failure_penalty=PENALTY)
        times.record_failure("a")
        times.record("b", 1.0)
        self.assertEqual(times.rank(["a", "b"]), ["b", "a"])
        times.record("a", 0.1)  # healthy again; mean still weighed by the failure
        self.assertFalse(times.is_penalised("a"))
        self.assertEqual(times.rank(["a", "b"]), ["b", "a"])
        for _ in range(10):
            times.record("a", 0.1)
        self.assertEqual(times.rank(["a", "b"]), ["a", "b"])

    def test_forget_and_retain(self) -> None:
        times = ResponseTimes()
        times.record("a", 1.0)
        times.record("b", 1.0)
        times.retain_only(["b"])
        self.assertIsNone(times.mean("a"))
        self.assertEqual(times.known(), ["b"])
        times.forget("b")
        times.forget("b")
        self.assertEqual(times.known(), [])

    def test_bad_parameters(self) -> None:
        self.assertRaises(ValueError, ResponseTimes, window=0)
        self.assertRaises(ValueError, ResponseTimes, failure_penalty=0)

    @settings(deadline=None)
    @given(histories, st.lists(urls, max_size=12))
    def test_rank_is_permutation(self, history: dict[str, list[float | None]], asked: list[str]) -> None:
        ranked = _times(history).rank(asked)
        self.assertEqual(sorted(ranked), sorted(asked))

    @settings(deadline=None)
    @given(histories, urls, urls)
    def test_all_failed_ranks_after_good_mean(
        self, history: dict[str, list[float | None]], dead: str, good: str
    ) -> None:
        if dead == good:
            return
        times = _times(history)
        for _ in range(10):
            times.record_failure(dead)
        if not history.get(good):
            times.record(good, 1.0)
        mean = times.mean(good)
        assert mean is not None
        if mean < PENALTY:
            ranked = times.rank([dead, good])
            self.assertEqual(ranked, [good, dead], f"mean {mean} ranked after a dead node")

    @settings(deadline=None)
    @given(histories)
    def test_order_respects_tiers_and_means(self, history: dict[str, list[float | None]]) -> None:
        times = _times(history)
        everything = [f"http://node{i}:3333/api/v1" for i in range(6)]
        ranked = times.rank(everything)

        def tier(url: str) -> int:
            if times.mean(url) is None:
                return 1
            return 2 if times.is_penalised(url) else 0

        keys = [(tier(u), times.mean(u) or 0.0, u) for u in ranked]
        self.assertEqual(keys, sorted(keys))
        # Deterministic: the input order does not matter.
        self.assertEqual(times.rank(list(reversed(everything))), ranked)
