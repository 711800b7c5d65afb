"""Content hashes (jsdistributor.cache.hashing)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.cache.hashing import ContentHasher, content_hash, encode_ipfs_hash, hash_file

EMPTY = "gW9T5gSXhgQB5LaqmnJrLVVpHawhM7youzHnuY6HyGBDy3"
HELLO = "gWDTHDubjMwfUeQJEhHXBk8L18UUUjFqXDjnAFgK3Wa52E"


class HashingTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        self.assertEqual(content_hash(b""), EMPTY)
        self.assertEqual(content_hash(b"hello"), HELLO)

    def test_incremental(self) -> None:
        hasher = ContentHasher()
        self.assertEqual(hasher.ipfs_hash(), EMPTY)
        for part in (b"he", b"", b"llo"):
            hasher.update(part)
        self.assertEqual(hasher.ipfs_hash(), HELLO)
        self.assertEqual(hasher.bytes_seen, 5)

    @given(st.lists(st.binary(max_size=300), max_size=8))
    @settings(deadline=None)
    def test_incremental_matches_whole(self, parts: list[bytes]) -> None:
        hasher = ContentHasher()
        for part in parts:
            hasher.update(part)
        self.assertEqual(hasher.ipfs_hash(), content_hash(b"".join(parts)))
        self.assertEqual(hasher.bytes_seen, sum(map(len, parts)))

    def test_hash_file(self) -> None:
        path = FilePath(self.mktemp())
        data = bytes(range(256)) * 1000
        path.setContent(data)
        self.assertEqual(hash_file(path, chunk=1000), content_hash(data))
        self.assertEqual(hash_file(path.path), content_hash(data))

    def test_digest_length_checked(self) -> None:
        self.assertRaises(ValueError, encode_ipfs_hash, b"\x00" * 31)
