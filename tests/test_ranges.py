"""Range / If-Range / If-None-Match parsing."""

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.ranges import (
    ByteRange,
    Unsatisfiable,
    etag_for,
    if_range_allows,
    none_match,
    parse_range,
)


class ParseRangeTests(SynchronousTestCase):
    def test_no_header_is_full(self) -> None:
        self.assertIsNone(parse_range(None, 100))

    def test_closed_range(self) -> None:
        r = parse_range(b"bytes=0-9", 100)
        self.assertEqual(r, ByteRange(0, 10, 100))
        assert r is not None
        self.assertEqual(r.content_range(), "bytes 0-9/100")
        self.assertEqual(r.length, 10)

    def test_open_range(self) -> None:
        self.assertEqual(parse_range(b"bytes=90-", 100), ByteRange(90, 100, 100))

    def test_end_clamped_to_size(self) -> None:
        self.assertEqual(parse_range(b"bytes=90-1000", 100), ByteRange(90, 100, 100))

    def test_suffix(self) -> None:
        self.assertEqual(parse_range(b"bytes=-10", 100), ByteRange(90, 100, 100))
        self.assertEqual(parse_range(b"bytes=-1000", 100), ByteRange(0, 100, 100))

    def test_unit_case_and_spaces(self) -> None:
        self.assertEqual(parse_range(b"Bytes = 1-2", 100), ByteRange(1, 3, 100))

    def test_start_beyond_size_is_unsatisfiable(self) -> None:
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=100-", 100)
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=-0", 100)
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=0-", 0)

    def test_invalid_is_ignored(self) -> None:
        for header in [
            b"bytes=5-1",
            b"bytes=a-b",
            b"items=0-1",
            b"bytes",
            b"bytes=",
            b"bytes=--1",
            b"bytes=1",
            b"bytes=\xff-1",
            b"bytes=\xd9\xa1-2",  # non-ASCII digits
            b"bytes=0-" + b"9" * 5000,
        ]:
            self.assertIsNone(parse_range(header, 100), header)

    def test_multiple_ranges_give_full_body(self) -> None:
        self.assertIsNone(parse_range(b"bytes=0-1,5-6", 100))

    def test_multiple_ranges_none_satisfiable(self) -> None:
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=200-300,400-", 100)

    def test_overflowing_numbers(self) -> None:
        self.assertEqual(parse_range(b"bytes=0-" + b"9" * 40, 100), ByteRange(0, 100, 100))
        self.assertRaises(Unsatisfiable, parse_range, b"bytes=" + b"9" * 40 + b"-", 100)

    @settings(deadline=None)
    @given(st.binary(max_size=200), st.integers(min_value=0, max_value=10**12))
    def test_arbitrary_input_is_consistent(self, header: bytes, size: int) -> None:
        try:
            r = parse_range(header, size)
        except Unsatisfiable:
            return
        if r is not None:
            self.assertTrue(0 <= r.start < r.end <= size, (header, size, r))
            self.assertEqual(r.total, size)

    @settings(deadline=None)
    @given(
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=1, max_value=10**6),
    )
    def test_valid_ranges_match_slice_semantics(self, a: int, b: int, size: int) -> None:
        start, stop = min(a, b), max(a, b)
        header = f"bytes={start}-{stop}".encode()
        if start >= size:
            self.assertRaises(Unsatisfiable, parse_range, header, size)
            return
        r = parse_range(header, size)
        assert r is not None
        data = range(size)
        self.assertEqual(data[r.start : r.end], data[start : stop + 1])


class ValidatorTests(SynchronousTestCase):
    def test_etag_quotes_the_hash(self) -> None:
        self.assertEqual(etag_for("gWabc"), '"gWabc"')

    def test_none_match(self) -> None:
        tag = etag_for("h")
        self.assertTrue(none_match(b'"h"', tag))
        self.assertTrue(none_match(b'"x", W/"h"', tag))
        self.assertTrue(none_match(b"*", tag))
        self.assertFalse(none_match(b'"x"', tag))
        self.assertFalse(none_match(None, tag))
        self.assertFalse(none_match(b'"h"', None))
        self.assertFalse(none_match(b"\xff", tag))

    def test_if_range(self) -> None:
        tag = etag_for("h")
        self.assertTrue(if_range_allows(None, tag))
        self.assertTrue(if_range_allows(b'"h"', tag))
        self.assertFalse(if_range_allows(b'W/"h"', tag))
        self.assertFalse(if_range_allows(b"Wed, 21 Oct 2015 07:28:00 GMT", tag))
        self.assertFalse(if_range_allows(b'"h"', None))
