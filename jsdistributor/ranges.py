"""HTTP Range / If-Range / If-None-Match semantics (RFC 9110), pure.

Decisions (documented in the README):
- One range (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) gives a 206.
- Several ranges give the full 200: players never ask for more than one, and
  a full body is always a correct answer to a multi-range request.
- A syntactically invalid header is ignored (200, full body), as the RFC says.
- A valid but unsatisfiable range gives 416 with ``content-range: bytes */size``.
"""

from __future__ import annotations

from attrs import frozen

#: Longer Range headers are ignored outright (hostile input stays cheap).
MAX_RANGE_HEADER = 4096


@frozen
class ByteRange:
    """``start`` inclusive, ``end`` exclusive; ``total`` is the object size."""

    start: int
    end: int
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end - 1}/{self.total}"


class Unsatisfiable(Exception):
    """The Range header is valid but no byte of it exists: answer 416."""


def _digits(text: str) -> int | None:
    text = text.strip(" \t")
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_range(header: bytes | str | None, size: int) -> ByteRange | None:
    """The single range a request asks for, or None for a full response.

    Raises ``Unsatisfiable`` for a valid header none of whose ranges overlap
    the object.
    """
    if header is None:
        return None
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(header) > MAX_RANGE_HEADER:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None
    parts = [p for p in (s.strip(" \t") for s in spec.split(",")) if p]
    if not parts:
        return None
    ranges: list[ByteRange] = []
    for part in parts:
        first, dash, last = part.partition("-")
        if not dash:
            return None
        if first.strip(" \t") == "":
            suffix = _digits(last)
            if suffix is None:
                return None
            if suffix == 0 or size == 0:
                continue
            ranges.append(ByteRange(max(0, size - suffix), size, size))
            continue
        start = _digits(first)
        if start is None:
            return None
        if last.strip(" \t") == "":
            end = size
        else:
            stop = _digits(last)
            if stop is None or stop < start:
                return None
            end = min(stop + 1, size)
        if start >= size:
            continue
        ranges.append(ByteRange(start, end, size))
    if not ranges:
        raise Unsatisfiable()
    if len(parts) > 1:
        return None  # several ranges: full body (documented)
    return ranges[0]


def etag_for(ipfs_hash: str) -> str:
    """A strong validator derived from the content hash."""
    return f'"{ipfs_hash}"'


def _etags(header: str) -> list[str]:
    return [t.strip() for t in header.split(",") if t.strip()]


def none_match(header: bytes | None, etag: str | None) -> bool:
    """True when ``If-None-Match`` matches ``etag`` (answer 304)."""
    if header is None or etag is None:
        return False
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(t.removeprefix("W/") == bare for t in _etags(text))


def if_range_allows(header: bytes | None, etag: str | None) -> bool:
    """True when the Range header should be honoured given ``If-Range``.

    Only a strong entity tag equal to ours honours the range. We send no
    ``Last-Modified``, so a date can never match: full body.
    """
    if header is None:
        return True
    if etag is None:
        return False
    try:
        return header.decode("ascii").strip() == etag
    except UnicodeDecodeError:
        return False
