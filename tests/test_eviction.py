"""LRU-SP and LRU eviction bookkeeping (jsdistributor.cache.eviction)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from jsdistributor.cache.eviction import (
    GROUP_COUNT,
    CacheEntry,
    LruPolicy,
    LruSpPolicy,
    cache_group,
    elapsed_minutes,
    replay,
    replay_stats,
    size_kb,
)
from jsdistributor.interfaces import IEvictionPolicy

KiB = 1024


class FormulaTests(SynchronousTestCase):
    def test_size_kb(self) -> None:
        self.assertEqual(
            [size_kb(s) for s in (0, 1, 1023, 1024, 1025, 10 * KiB)],
            [1, 1, 1, 1, 2, 10],
        )

    def test_cache_group_examples(self) -> None:
        # ceil(log2(kb / popularity)), clamped to 0..23.
        self.assertEqual(cache_group(1, 1), 0)  # log2(1) = 0
        self.assertEqual(cache_group(1, 5), 0)  # log2(0.2) < 0 -> 0
        self.assertEqual(cache_group(2, 1), 1)
        self.assertEqual(cache_group(3, 1), 2)  # log2(3) = 1.58 -> 2
        self.assertEqual(cache_group(4, 1), 2)
        self.assertEqual(cache_group(5, 1), 3)
        self.assertEqual(cache_group(4000, 1), 12)  # 2**11 < 4000 <= 2**12
        self.assertEqual(cache_group(4000, 2), 11)  # 2000 <= 2**11
        self.assertEqual(cache_group(9, 2), 3)  # 4.5 -> ceil(2.17) = 3
        self.assertEqual(cache_group(2**23, 1), 23)
        self.assertEqual(cache_group(2**23 + 1, 1), 23)  # clamped
        self.assertEqual(cache_group(2**40, 1), 23)

    @given(st.integers(1, 2**34), st.integers(1, 10**6))
    @settings(deadline=None)
    def test_cache_group_is_exact(self, kb: int, popularity: int) -> None:
        self.assertEqual(cache_group(kb, popularity), _exact_group(kb, popularity))

    def test_elapsed_minutes(self) -> None:
        self.assertEqual(elapsed_minutes(100.0, 100.0), 0)
        self.assertEqual(elapsed_minutes(100.0, 100.5), 1)
        self.assertEqual(elapsed_minutes(0.0, 60.0), 1)
        self.assertEqual(elapsed_minutes(0.0, 61.0), 2)
        # A clock that went backwards: 0, not negative.
        self.assertEqual(elapsed_minutes(500.0, 100.0), 0)


def _exact_group(kb: int, popularity: int) -> int:
    """Smallest g >= 0 with 2**g >= kb / popularity, clamped (brute force)."""
    ratio = Fraction(kb, popularity)
    g = 0
    while Fraction(2**g) < ratio:
        g += 1
    return min(g, GROUP_COUNT - 1)


def _in(ids: set[str]) -> Callable[[str], bool]:
    return ids.__contains__


def _hand_example() -> LruSpPolicy:
    """The policy of the hand-computed example.

    id  size (B)       kb    events (seconds)                 popularity  group
    "1" 10 KiB         10    add t=0, access t=600            2           ceil(log2(10/2))=3
    "2" 4000 KiB       4000  add t=0, access t=300            2           ceil(log2(4000/2))=11
    "3" 1              1     add t=60                         1           0
    "4" 10 KiB         10    add t=120                        1           ceil(log2 10)=4
    "5" 16 KiB         16    add t=180                        1           log2 16=4 (behind "4")

    Before its access, "1" was in group 4 (head) and "2" in group 12.

    Costs at now=1200 s: minutes = ceil((1200 - last) / 60); cost = minutes * kb / popularity
      "1": ceil(600/60)=10   * 10 / 2   =    50
      "2": ceil(900/60)=15   * 4000 / 2 = 30000
      "3": ceil(1140/60)=19  * 1 / 1    =    19
      "4": ceil(1080/60)=18  * 10 / 1   =   180
      "5": ceil(1020/60)=17  * 16 / 1   =   272

    Candidates are group heads: group 0 "3", 3 "1", 4 "4" (not "5": it is
    behind "4" in LRU order although it costs more), 11 "2".
    Victims: "2" (30000), "4" (180; then "5" becomes head of group 4),
    "5" (272), "1" (50), "3" (19).
    """
    policy = LruSpPolicy()
    policy.add("1", 10 * KiB, 0.0)
    policy.add("2", 4000 * KiB, 0.0)
    policy.add("3", 1, 60.0)
    policy.add("4", 10 * KiB, 120.0)
    policy.add("5", 16 * KiB, 180.0)
    policy.access("2", 300.0)
    policy.access("1", 600.0)
    return policy


class LruSpTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IEvictionPolicy, LruSpPolicy()))
        self.assertTrue(verifyObject(IEvictionPolicy, LruPolicy()))

    def test_hand_example_groups(self) -> None:
        policy = _hand_example()
        self.assertEqual(
            {i: policy.group_of(i) for i in "12345"},
            {"1": 3, "2": 11, "3": 0, "4": 4, "5": 4},
        )
        self.assertEqual(policy.get("1"), CacheEntry("1", 10 * KiB, 2, 600.0))
        self.assertEqual(policy.total_size, (10 + 4000 + 10 + 16) * KiB + 1)

    def test_hand_example_victim_order(self) -> None:
        policy = _hand_example()
        order = [policy.pop_victim(1200.0, _in(set())) for _ in range(6)]
        self.assertEqual(order, ["2", "4", "5", "1", "3", None])
        self.assertEqual(len(policy), 0)
        self.assertEqual(policy.total_size, 0)

    def test_in_use_skipped(self) -> None:
        # in use: "2" (alone in group 11: no candidate there) and "4" (head
        # of group 4: "5" is offered instead). Costs as in _hand_example:
        # "5" 272 > "1" 50 > "3" 19.
        policy = _hand_example()
        busy = _in({"2", "4"})
        self.assertEqual(policy.peek_victim(1200.0, busy), "5")
        order = [policy.pop_victim(1200.0, busy) for _ in range(4)]
        self.assertEqual(order, ["5", "1", "3", None])
        self.assertEqual(sorted(e.object_id for e in policy.entries()), ["2", "4"])
        # Once no longer in use they can go: "2" 30000 > "4" 180.
        self.assertEqual(policy.pop_victim(1200.0, _in(set())), "2")
        self.assertEqual(policy.pop_victim(1200.0), "4")

    def test_tie_goes_to_higher_group(self) -> None:
        # "a": 1 KB, group 0, last access 0 -> at 120 s: 2 min * 1 = 2
        # "b": 2 KB, group 1, last access 60 -> at 120 s: 1 min * 2 = 2
        policy = LruSpPolicy()
        policy.add("a", 1 * KiB, 0.0)
        policy.add("b", 2 * KiB, 60.0)
        self.assertEqual(policy.pop_victim(120.0), "b")

    def test_clock_backwards_still_finds_victim(self) -> None:
        policy = LruSpPolicy()
        policy.add("7", 5 * KiB, 1000.0)
        self.assertEqual(policy.pop_victim(10.0), "7")

    def test_access_moves_to_tail_of_group(self) -> None:
        # "1" and "2": 1 KB, group 0. Accessing "1" (popularity 2, 1/2 KB:
        # still group 0) puts it behind "2".
        policy = LruSpPolicy()
        policy.add("1", 100, 0.0)
        policy.add("2", 100, 0.0)
        self.assertTrue(policy.access("1", 0.0))
        self.assertEqual(policy.group_of("1"), 0)
        self.assertEqual([e.object_id for e in policy.lru_entries()], ["2", "1"])
        self.assertEqual(policy.pop_victim(600.0), "2")

    def test_several_accesses_at_once(self) -> None:
        # A hit worker reports a second's accesses as one count: the same
        # entry and order as that many single accesses, in both policies.
        for make in (LruSpPolicy, LruPolicy):
            once, one_by_one = make(), make()
            for policy in (once, one_by_one):
                policy.add("1", 100_000, 0.0)
                policy.add("2", 100_000, 0.0)
            self.assertTrue(once.access("1", 5.0, 7))
            for _ in range(7):
                one_by_one.access("1", 5.0)
            self.assertEqual(once.get("1"), one_by_one.get("1"), make.__name__)
            self.assertEqual(once.get("1").popularity, 8, make.__name__)
            self.assertEqual(list(once.entries()), list(one_by_one.entries()), make.__name__)
            self.assertEqual(once.pop_victim(600.0), one_by_one.pop_victim(600.0), make.__name__)

    def test_access_unknown(self) -> None:
        policy = LruSpPolicy()
        self.assertFalse(policy.access("9", 1.0))
        self.assertEqual(len(policy), 0)

    def test_remove_idempotent(self) -> None:
        policy = LruSpPolicy()
        policy.add("1", 5000, 0.0)
        self.assertTrue(policy.remove("1"))
        self.assertFalse(policy.remove("1"))
        self.assertNotIn("1", policy)
        self.assertEqual(policy.total_size, 0)

    def test_re_add_replaces(self) -> None:
        policy = LruSpPolicy()
        policy.add("1", 5000, 0.0)
        policy.access("1", 1.0)
        policy.add("1", 7000, 2.0)
        self.assertEqual(policy.get("1"), CacheEntry("1", 7000, 1, 2.0))
        self.assertEqual(policy.total_size, 7000)
        self.assertEqual(len(policy), 1)

    def test_rejects_bad_numbers(self) -> None:
        policy = LruSpPolicy()
        self.assertRaises(ValueError, policy.add, "1", -1, 0.0)
        self.assertRaises(ValueError, policy.add, "1", 1, 0.0, 0)
        self.assertEqual(len(policy), 0)

    def test_mime_type_kept(self) -> None:
        policy = LruSpPolicy()
        policy.add("1", 10, 0.0, mime_type="video/mp4")
        policy.access("1", 5.0)
        self.assertEqual(policy.mime_type_of("1"), "video/mp4")
        self.assertTrue(policy.set_mime_type("1", "image/png"))
        self.assertFalse(policy.set_mime_type("2", "image/png"))
        self.assertEqual(policy.get("1"), CacheEntry("1", 10, 2, 5.0, "image/png"))

    def test_entries_round_trip(self) -> None:
        # add_entries(entries()) rebuilds the same groups and LRU order (the
        # last access times are all different: 600, 300, 60, 120, 180).
        policy = _hand_example()
        copy = LruSpPolicy()
        copy.add_entries(reversed(list(policy.entries())))
        self.assertEqual(list(copy.lru_entries()), list(policy.lru_entries()))
        self.assertEqual(
            [copy.pop_victim(1200.0) for _ in range(5)],
            ["2", "4", "5", "1", "3"],
        )


class LruTests(SynchronousTestCase):
    def test_order_and_in_use(self) -> None:
        policy = LruPolicy()
        for i, object_id in enumerate(["1", "2", "3"]):
            policy.add(object_id, 10, float(i))
        policy.access("1", 5.0)  # order now 2, 3, 1
        self.assertEqual(policy.get("1"), CacheEntry("1", 10, 2, 5.0))
        self.assertEqual(policy.pop_victim(6.0, _in({"2"})), "3")
        self.assertEqual(policy.pop_victim(6.0, _in({"2", "1"})), None)
        self.assertEqual(policy.pop_victim(6.0), "2")
        self.assertEqual(policy.total_size, 10)


class ReplayTests(SynchronousTestCase):
    def test_lru_hit_ratio(self) -> None:
        # Capacity 2 objects: a miss, b miss, a hit, c miss (evicts b, the
        # least recently used), a hit -> 2 / 5.
        trace = [("1", 10), ("2", 10), ("1", 10), ("3", 10), ("1", 10)]
        self.assertEqual(replay(LruPolicy(), trace, 20), 0.4)

    def test_lru_sp_keeps_small_popular_objects(self) -> None:
        # Capacity 1000 KB, requests 60 s apart (t = 0, 60, ...):
        #   t=0 "1" 1 KB miss; t=60 "2" 900 KB miss (901 KB fits);
        #   t=120 "3" 900 KB miss: LRU-SP candidates "1" (group 0: 2 min *
        #     1 KB / 1 = 2) and "2" (group 10: 1 min * 900 = 900) -> evict "2".
        #     LRU evicts "1" then "2" (least recently used first).
        #   t=180 "1": LRU-SP hit (popularity 2); LRU miss (evicts nothing: 901 KB).
        #   t=240 "4" 900 KB miss: LRU-SP "1" (1 min * 1 / 2 = 0.5) vs "3"
        #     (2 min * 900 = 1800) -> evict "3"; LRU evicts "3" (LRU head).
        #   t=300 "1": hit for both.
        # LRU-SP: 2 hits of 6; LRU: 1 hit of 6.
        trace = [("1", KiB), ("2", 900 * KiB), ("3", 900 * KiB), ("1", KiB), ("4", 900 * KiB), ("1", KiB)]
        sp = replay_stats(LruSpPolicy(), trace, 1000 * KiB, step=60.0)
        lru = replay_stats(LruPolicy(), trace, 1000 * KiB, step=60.0)
        self.assertEqual((sp.hits, sp.requests), (2, 6))
        self.assertEqual((lru.hits, lru.requests), (1, 6))

    def test_oversized_object_not_cached(self) -> None:
        policy = LruSpPolicy()
        stats = replay_stats(policy, [("1", 100), ("1", 100)], 50)
        self.assertEqual((stats.hits, stats.requests, stats.requested_bytes), (0, 2, 200))
        self.assertEqual(len(policy), 0)


# -- the reference model ------------------------------------------------------


class NaiveLruSp:
    """LRU-SP by brute force: every victim choice recomputes every object's
    group (exact arithmetic) and scans all objects.

    LRU order within a group is the order of the last "touch" (add or
    access), kept as a global sequence number. Ties in cost go to the higher
    group (defined in the module docstring).
    """

    def __init__(self) -> None:
        # id -> [size, popularity, last_access, touch sequence, mime]
        self.items: dict[str, list] = {}
        self.seq = 0

    def add(self, object_id: str, size: int, now: float, popularity: int) -> None:
        self.seq += 1
        self.items[object_id] = [size, popularity, now, self.seq, None]

    def access(self, object_id: str, now: float) -> bool:
        if object_id not in self.items:
            return False
        self.seq += 1
        item = self.items[object_id]
        item[1] += 1
        item[2] = now
        item[3] = self.seq
        return True

    def remove(self, object_id: str) -> None:
        self.items.pop(object_id, None)

    def victim(self, now: float, in_use: set[str]) -> str | None:
        heads: dict[int, tuple[int, str]] = {}
        for object_id, (size, popularity, _last, seq, _mime) in self.items.items():
            if object_id in in_use:
                continue
            kb = max(1, math.ceil(Fraction(size, 1024)))
            group = _exact_group(kb, popularity)
            if group not in heads or seq < heads[group][0]:
                heads[group] = (seq, object_id)
        best: tuple[float, int] | None = None
        victim = None
        for group, (_seq, object_id) in heads.items():
            size, popularity, last, _, _ = self.items[object_id]
            kb = max(1, math.ceil(Fraction(size, 1024)))
            minutes = max(0, math.ceil((now - last) / 60)) if now > last else 0
            cost = minutes * kb / popularity
            if best is None or (cost, group) > best:
                best = (cost, group)
                victim = object_id
        return victim

    def total(self) -> int:
        return sum(item[0] for item in self.items.values())


# Few ids, so that operations often hit tracked objects; sizes mostly small,
# so that groups hold several objects (LRU order within a group matters).
_ids = st.sampled_from([str(i) for i in range(6)])
_sizes = st.one_of(
    st.integers(0, 4 * KiB),
    st.integers(0, 64 * KiB),
    st.integers(0, 2**36),
    st.sampled_from([1023, 1024, 1025, 2048, 2049, 2**33, 2**33 + 1]),
)
_dt = st.one_of(st.integers(0, 200).map(float), st.floats(-30.0, 7200.0, allow_nan=False))
_add = st.tuples(st.just("add"), _ids, _sizes, st.integers(1, 40), _dt)
_access = st.tuples(st.just("access"), _ids, _dt)
_ops = st.lists(
    st.one_of(
        _add,
        _add,
        _access,
        _access,
        _access,
        st.tuples(st.just("remove"), _ids),
        st.tuples(st.just("evict"), st.frozensets(_ids, max_size=3), _dt),
        st.tuples(st.just("evict"), st.just(frozenset()), _dt),
        st.tuples(st.just("mime"), _ids, st.sampled_from([None, "video/mp4"])),
    ),
    min_size=4,
    max_size=60,
)


class ModelTests(SynchronousTestCase):
    @given(_ops)
    @settings(deadline=None, max_examples=300)
    def test_matches_naive_model(self, ops: list[tuple]) -> None:
        policy = LruSpPolicy()
        model = NaiveLruSp()
        now = 1_000_000.0
        for op in ops:
            kind = op[0]
            if kind == "add":
                _, object_id, size, popularity, dt = op
                now += dt
                policy.add(object_id, size, now, popularity)
                model.add(object_id, size, now, popularity)
            elif kind == "access":
                _, object_id, dt = op
                now += dt
                self.assertEqual(policy.access(object_id, now), model.access(object_id, now))
            elif kind == "remove":
                policy.remove(op[1])
                model.remove(op[1])
            elif kind == "mime":
                _, object_id, mime = op
                self.assertEqual(policy.set_mime_type(object_id, mime), object_id in model.items)
                if object_id in model.items:
                    model.items[object_id][4] = mime
            else:
                _, busy, dt = op
                now += dt
                expected = model.victim(now, set(busy))
                self.assertEqual(policy.peek_victim(now, busy.__contains__), expected)
                self.assertEqual(policy.pop_victim(now, busy.__contains__), expected, op)
                if expected is not None:
                    model.remove(expected)
            self.assertEqual(policy.total_size, model.total())
            self.assertEqual(len(policy), len(model.items))
        self.assertEqual(
            {e.object_id: e for e in policy.entries()},
            {
                object_id: CacheEntry(object_id, size, popularity, last, mime)
                for object_id, (size, popularity, last, _seq, mime) in model.items.items()
            },
        )
        # Restoring from entries() (bulk add_entries) rebuilds the same
        # entries in the same groups, each group in last-access order (the
        # LRU order, unless the clock went backwards).
        copy = LruSpPolicy()
        copy.add_entries(list(policy.entries()))
        self.assertEqual(sorted(copy.entries()), sorted(policy.entries()))
        self.assertEqual(copy.total_size, policy.total_size)
        self.assertEqual(len(copy), len(policy))
        restored = list(copy.lru_entries())
        self.assertEqual(
            [(copy.group_of(e.object_id), e.last_access) for e in restored],
            sorted((policy.group_of(e.object_id), e.last_access) for e in policy.entries()),
        )
        # Draining without anything in use empties the policy in model order.
        while model.items:
            expected = model.victim(now, set())
            self.assertEqual(policy.pop_victim(now), expected)
            model.remove(expected)  # type: ignore[arg-type]
        self.assertEqual((len(policy), policy.total_size), (0, 0))
        self.assertIsNone(policy.pop_victim(now))

    @given(_ops)
    @settings(deadline=None)
    def test_lru_total_size(self, ops: list[tuple]) -> None:
        policy = LruPolicy()
        sizes: dict[str, int] = {}
        now = 0.0
        for op in ops:
            if op[0] == "add":
                policy.add(op[1], op[2], now, op[3])
                sizes[op[1]] = op[2]
            elif op[0] == "access":
                policy.access(op[1], now)
            elif op[0] == "remove":
                policy.remove(op[1])
                sizes.pop(op[1], None)
            elif op[0] == "evict":
                victim = policy.pop_victim(now, op[1].__contains__)
                if victim is None:
                    self.assertTrue(set(sizes) <= op[1])
                else:
                    self.assertNotIn(victim, op[1])
                    del sizes[victim]
            self.assertEqual(policy.total_size, sum(sizes.values()))
            self.assertEqual(len(policy), len(sizes))
