"""Cache state files (jsdistributor.cache.state)."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.cache.eviction import CacheEntry, LruSpPolicy
from jsdistributor.cache.state import (
    NO_ENTRY,
    NOT_SUPPORTED,
    SIZE_MISMATCH,
    STATE_FILE_NAME,
    StateCorrupt,
    load_argus_cache,
    load_state,
    reconcile,
    remove_state_temporaries,
    save_state,
    state_file,
)

ENTRIES = [
    CacheEntry("1", 0, 1, 0.0, None),
    CacheEntry("12345678901234567890", 10**12, 7, 1718000000.123456, "video/mp4", "gW9T5gSXhgQB5LaqmnJrLVVpHawhM7youzHnuY6HyGBDy3"),
    CacheEntry("3", 4096, 2, 1718000001.5, "application/octet-stream"),
]


class SaveLoadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()
        self.path = state_file(self.dir)

    def test_state_file_name(self) -> None:
        self.assertEqual(self.path, self.dir.child(STATE_FILE_NAME))

    def test_round_trip(self) -> None:
        save_state(self.path, ENTRIES)
        self.assertEqual(load_state(self.path), ENTRIES)
        document = json.loads(self.path.getContent())
        self.assertEqual(document["version"], 1)
        self.assertEqual(
            document["entries"][1],
            ["12345678901234567890", 10**12, 7, 1718000000.123456, "video/mp4", "gW9T5gSXhgQB5LaqmnJrLVVpHawhM7youzHnuY6HyGBDy3"],
        )

    def test_five_item_rows_of_earlier_versions_load(self) -> None:
        self.path.setContent(b'{"version":1,"entries":[["5",10,2,3.5,"image/png"]]}')
        self.assertEqual(load_state(self.path), [CacheEntry("5", 10, 2, 3.5, "image/png", None)])

    def test_bad_content_hash_is_corrupt(self) -> None:
        self.path.setContent(b'{"version":1,"entries":[["5",10,2,3.5,null,"0OIl"]]}')
        self.assertRaises(StateCorrupt, load_state, self.path)

    def test_round_trip_empty(self) -> None:
        save_state(self.path.path, iter([]))
        self.assertEqual(load_state(self.path.path), [])

    def test_round_trip_many_batches(self) -> None:
        entries = [CacheEntry(str(i), i * 3, 1 + i % 5, i / 7, None if i % 2 else "image/png") for i in range(25_001)]
        save_state(self.path, entries)
        self.assertEqual(load_state(self.path), entries)

    def test_round_trip_through_policy(self) -> None:
        policy = LruSpPolicy()
        for i in range(50):
            policy.add(str(i), 1000 * i, float(i), mime_type="video/webm")
        for i in range(0, 50, 3):
            policy.access(str(i), 100.0 + i)
        save_state(self.path, policy.entries())
        restored = LruSpPolicy()
        restored.add_entries(load_state(self.path) or [])
        self.assertEqual(list(restored.lru_entries()), list(policy.lru_entries()))

    def test_creates_directory(self) -> None:
        path = self.dir.child("sub").child(STATE_FILE_NAME)
        save_state(path, ENTRIES)
        self.assertEqual(load_state(path), ENTRIES)

    def test_missing(self) -> None:
        self.assertIsNone(load_state(self.path))

    def test_failed_replace_keeps_old_file(self) -> None:
        save_state(self.path, ENTRIES[:1])
        before = self.path.getContent()

        def crash(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "replace", crash)
        self.assertRaises(OSError, save_state, self.path, ENTRIES)
        self.assertEqual(self.path.getContent(), before)
        self.assertEqual(self.dir.listdir(), [STATE_FILE_NAME])  # no temporary left
        self.assertEqual(load_state(self.path), ENTRIES[:1])

    def test_failure_while_writing_keeps_old_file(self) -> None:
        save_state(self.path, ENTRIES[:1])
        before = self.path.getContent()

        def entries() -> Any:
            yield ENTRIES[1]
            raise RuntimeError("policy changed under our feet")

        self.assertRaises(RuntimeError, save_state, self.path, entries())
        self.assertEqual(self.path.getContent(), before)
        self.assertEqual(self.dir.listdir(), [STATE_FILE_NAME])

    def test_remove_state_temporaries(self) -> None:
        save_state(self.path, ENTRIES)
        self.dir.child(STATE_FILE_NAME + ".0123abcd.tmp").setContent(b"half")
        self.dir.child("other.tmp").setContent(b"not ours")
        self.assertEqual(remove_state_temporaries(self.path), 1)
        self.assertEqual(sorted(self.dir.listdir()), sorted([STATE_FILE_NAME, "other.tmp"]))
        self.assertEqual(load_state(self.path), ENTRIES)
        self.assertEqual(remove_state_temporaries(self.dir.child("nope").child("x")), 0)

    def test_unreadable_is_corrupt(self) -> None:
        self.path.makedirs()  # a directory where the file should be
        self.assertRaises(StateCorrupt, load_state, self.path)


def _doc(*rows: Any, version: Any = 1) -> bytes:
    return json.dumps({"version": version, "entries": list(rows)}).encode()


GOOD_ROW = ["5", 10, 1, 100.0, None]

CORRUPT = {
    "empty file": b"",
    "truncated": _doc(GOOD_ROW)[:-5],
    "not JSON": b"hello",
    "bad UTF-8": b'{"version":1,"entries":[["\xff",1,1,1,null]]}',
    "null": b"null",
    "a list": b"[]",
    "no version": b'{"entries":[]}',
    "version 2": _doc(version=2),
    "version true": _doc(version=True),
    "version string": _doc(version="1"),
    "no entries": b'{"version":1}',
    "entries object": b'{"version":1,"entries":{}}',
    "row not list": _doc({"id": "5"}),
    "short row": _doc(["5", 10, 1, 100.0]),
    "long row": _doc(["5", 10, 1, 100.0, None, 1]),
    "id int": _doc([5, 10, 1, 100.0, None]),
    "id traversal": _doc(["../5", 10, 1, 100.0, None]),
    "id 21 digits": _doc(["1" * 21, 10, 1, 100.0, None]),
    "id full-width": _doc(["１２", 10, 1, 100.0, None]),
    "id empty": _doc(["", 10, 1, 100.0, None]),
    "duplicate id": _doc(GOOD_ROW, GOOD_ROW),
    "negative size": _doc(["5", -1, 1, 100.0, None]),
    "float size": _doc(["5", 10.0, 1, 100.0, None]),
    "bool size": _doc(["5", True, 1, 100.0, None]),
    "zero popularity": _doc(["5", 10, 0, 100.0, None]),
    "string time": _doc(["5", 10, 1, "100", None]),
    "NaN time": b'{"version":1,"entries":[["5",10,1,NaN,null]]}',
    "Infinity time": b'{"version":1,"entries":[["5",10,1,Infinity,null]]}',
    "overflowing time": b'{"version":1,"entries":[["5",10,1,1e999,null]]}',
    "mime int": _doc(["5", 10, 1, 100.0, 3]),
    "mime header injection": _doc(["5", 10, 1, 100.0, "text/html\r\nX-Evil: 1"]),
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "huge integer": b'{"version":1,"entries":[["5",' + b"9" * 5000 + b',1,1.0,null]]}',
    "time int overflowing float": b'{"version":1,"entries":[["5",1,1,' + b"9" * 400 + b',null]]}',
    "size beyond 2**63": _doc(["5", 2**63, 1, 1.0, None]),
    "popularity beyond 2**63": _doc(["5", 1, 2**64, 1.0, None]),
}


class CorruptTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())

    def test_valid_baseline(self) -> None:
        self.path.setContent(_doc(GOOD_ROW, ["6", 0, 3, 7, "image/gif"]))
        self.assertEqual(
            load_state(self.path),
            [CacheEntry("5", 10, 1, 100.0), CacheEntry("6", 0, 3, 7.0, "image/gif")],
        )

    def test_corrupt_variants(self) -> None:
        for name, content in CORRUPT.items():
            self.path.setContent(content)
            try:
                load_state(self.path)
            except StateCorrupt:
                pass
            else:
                self.fail("%s: loaded without StateCorrupt" % (name,))

    @given(st.binary(max_size=200))
    @settings(deadline=None)
    def test_arbitrary_bytes(self, content: bytes) -> None:
        self.path.setContent(content)
        try:
            load_state(self.path)
        except StateCorrupt:
            pass

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=25),
            lambda children: st.lists(children, max_size=6)
            | st.dictionaries(st.sampled_from(["version", "entries", "x"]), children, max_size=3),
            max_leaves=30,
        )
    )
    @settings(deadline=None)
    def test_arbitrary_documents(self, entries: Any) -> None:
        self.path.setContent(json.dumps({"version": 1, "entries": entries}).encode())
        try:
            result = load_state(self.path)
        except StateCorrupt:
            return
        self.assertIsInstance(result, list)


# A hand-written cache.json as the original node writes it (indent 2, groups
# 0..23, each [id, {popularity, lastAccessTime (ms), sizeKB}]).
ARGUS_CACHE_JSON = """{
  "lruCacheGroups": [
    [
      ["10", {"popularity": 3, "lastAccessTime": 1700000000000, "sizeKB": 1}]
    ],
    [], [], [],
    [
      ["11", {"popularity": 1, "lastAccessTime": 1700000100500, "sizeKB": 10}],
      ["12", {"popularity": 2, "lastAccessTime": 1700000200000, "sizeKB": 20}],
      ["../etc", {"popularity": 1, "lastAccessTime": 1700000200000, "sizeKB": 20}],
      ["13", {"popularity": 1, "sizeKB": 9}],
      ["10", {"popularity": 1, "lastAccessTime": 1, "sizeKB": 9}],
      ["15", {"popularity": 1, "lastAccessTime": 19999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999, "sizeKB": 9}],
      ["16", {"popularity": 2.0, "lastAccessTime": 1700000000000.0, "sizeKB": 1e300}]
    ],
    [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [],
    [
      ["14", {"popularity": 1, "lastAccessTime": 1700000300000, "sizeKB": 10000000}]
    ]
  ],
  "mimeTypeByObjectId": [
    ["10", "image/png"],
    ["11", "video/mp4"],
    ["99", "video/webm"],
    ["14", "bad\\r\\nmime"]
  ]
}"""


class ArgusMigrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()

    def test_sample(self) -> None:
        self.dir.child("cache.json").setContent(ARGUS_CACHE_JSON.encode())
        entries = load_argus_cache(self.dir)
        # "../etc" (bad id), "13" (no lastAccessTime), "15" (time overflows),
        # "16" (absurd size) are skipped; the
        # second "10" is a duplicate (the first wins); the bad mime type of
        # "14" is dropped; "99" has a mime type but no entry.
        self.assertEqual(
            entries,
            [
                CacheEntry("10", 1024, 3, 1700000000.0, "image/png"),
                CacheEntry("11", 10 * 1024, 1, 1700000100.5, "video/mp4"),
                CacheEntry("12", 20 * 1024, 2, 1700000200.0, None),
                CacheEntry("14", 10000000 * 1024, 1, 1700000300.0, None),
            ],
        )

    def test_groups_survive_in_policy(self) -> None:
        # The original's groups (ceil(log2(sizeKB / popularity))) are ours:
        # "10" 1/3 -> 0, "11" 10 -> 4, "12" 20/2 -> 4, "14" 10**7 -> 23 (clamped 24 -> 23).
        self.dir.child("cache.json").setContent(ARGUS_CACHE_JSON.encode())
        policy = LruSpPolicy()
        policy.add_entries(load_argus_cache(self.dir) or [])
        self.assertEqual([policy.group_of(i) for i in ("10", "11", "12", "14")], [0, 4, 4, 23])

    def test_missing(self) -> None:
        self.assertIsNone(load_argus_cache(self.dir))

    def test_empty_object(self) -> None:
        self.dir.child("cache.json").setContent(b"{}")
        self.assertEqual(load_argus_cache(self.dir), [])

    def test_corrupt(self) -> None:
        for content in (b"", b"{", b"[]", b"null", b'{"lruCacheGroups": 5}', b'{"lruCacheGroups": [5]}',
                        b'{"mimeTypeByObjectId": 5}'):
            self.dir.child("cache.json").setContent(content)
            self.assertRaises(StateCorrupt, load_argus_cache, self.dir)

    @given(st.binary(max_size=200))
    @settings(deadline=None)
    def test_arbitrary_bytes(self, content: bytes) -> None:
        self.dir.child("cache.json").setContent(content)
        try:
            load_argus_cache(self.dir)
        except StateCorrupt:
            pass


class ReconcileTests(SynchronousTestCase):
    NOW = 5000.0

    def test_keep(self) -> None:
        entry = CacheEntry("1", 100, 4, 10.0, "image/png")
        result = reconcile([entry], {"1": 100}, {"1"}, self.NOW)
        self.assertEqual(result.keep, [entry])
        self.assertEqual((result.adopt, result.drop_files, result.drop_entries), ([], {}, []))

    def test_keep_corrects_size_from_file(self) -> None:
        # Migrated entries know sizes in KB only.
        result = reconcile([CacheEntry("1", 2048, 4, 10.0, "video/mp4")], {"1": 2000}, None, self.NOW)
        self.assertEqual(result.keep, [CacheEntry("1", 2000, 4, 10.0, "video/mp4")])

    def test_keep_preserves_order(self) -> None:
        entries = [CacheEntry(i, 1, 1, 0.0) for i in ("9", "2", "5")]
        result = reconcile(entries, {"2": 1, "5": 1, "9": 1}, None, self.NOW)
        self.assertEqual([e.object_id for e in result.keep], ["9", "2", "5"])

    def test_adopt_orphan_file(self) -> None:
        result = reconcile([], {"7": 300, "10": 5}, None, self.NOW)
        self.assertEqual(result.adopt, [CacheEntry("7", 300, 1, self.NOW), CacheEntry("10", 5, 1, self.NOW)])
        self.assertEqual(result.entries, result.adopt)

    def test_orphans_dropped_when_not_adopting(self) -> None:
        result = reconcile([], {"7": 300}, None, self.NOW, adopt_orphans=False)
        self.assertEqual((result.adopt, result.drop_files), ([], {"7": NO_ENTRY}))

    def test_drop_unsupported(self) -> None:
        entries = [CacheEntry("1", 100, 4, 10.0)]
        result = reconcile(entries, {"1": 100, "2": 50}, {"3"}, self.NOW)
        self.assertEqual(result.drop_files, {"1": NOT_SUPPORTED, "2": NOT_SUPPORTED})
        self.assertEqual((result.keep, result.adopt, result.drop_entries), ([], [], []))

    def test_supported_unknown_keeps(self) -> None:
        result = reconcile([CacheEntry("1", 100, 4, 10.0)], {"1": 100, "2": 50}, None, self.NOW)
        self.assertEqual([e.object_id for e in result.entries], ["1", "2"])
        self.assertEqual(result.drop_files, {})

    def test_drop_wrong_size(self) -> None:
        entries = [CacheEntry("1", 100, 4, 10.0), CacheEntry("3", 7, 1, 1.0)]
        result = reconcile(
            entries,
            {"1": 99, "2": 50, "3": 7},
            {"1", "2", "3"},
            self.NOW,
            expected_sizes={"1": 100, "2": 51, "3": 7},
        )
        self.assertEqual(result.drop_files, {"1": SIZE_MISMATCH, "2": SIZE_MISMATCH})
        self.assertEqual(result.keep, [CacheEntry("3", 7, 1, 1.0)])
        self.assertEqual(result.adopt, [])

    def test_drop_entry_without_file(self) -> None:
        result = reconcile([CacheEntry("1", 100, 4, 10.0), CacheEntry("2", 1, 1, 1.0)], {"2": 1}, None, self.NOW)
        self.assertEqual(result.drop_entries, ["1"])
        self.assertEqual([e.object_id for e in result.keep], ["2"])

    def test_duplicate_entries_first_wins(self) -> None:
        first, second = CacheEntry("1", 10, 4, 10.0), CacheEntry("1", 10, 1, 20.0)
        result = reconcile([first, second], {"1": 10}, None, self.NOW)
        self.assertEqual(result.entries, [first])

    @given(
        st.lists(st.tuples(st.sampled_from("123456"), st.integers(0, 3)), max_size=8),
        st.dictionaries(st.sampled_from("123456"), st.integers(0, 3), max_size=6),
        st.one_of(st.none(), st.frozensets(st.sampled_from("123456"))),
        st.dictionaries(st.sampled_from("123456"), st.integers(0, 3), max_size=6),
    )
    @settings(deadline=None)
    def test_every_object_decided_once(
        self,
        raw_entries: list[tuple[str, int]],
        files: dict[str, int],
        supported: frozenset[str] | None,
        expected: dict[str, int],
    ) -> None:
        entries = [CacheEntry(i, size, 1, 0.0) for i, size in raw_entries]
        result = reconcile(entries, files, supported, self.NOW, expected)
        kept = [e.object_id for e in result.entries]
        decided = kept + list(result.drop_files) + result.drop_entries
        self.assertEqual(sorted(decided), sorted({i for i, _ in raw_entries} | set(files)))
        for entry in result.entries:
            self.assertEqual(entry.size, files[entry.object_id])
            self.assertTrue(supported is None or entry.object_id in supported)
            self.assertIn(expected.get(entry.object_id, entry.size), (entry.size,))
        self.assertTrue(set(result.drop_entries).isdisjoint(files))
