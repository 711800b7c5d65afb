"""Content type sniffing from an object's first bytes (``filetype`` package).

As in the original node: a content type is detected once, when an object is
first downloaded, from its leading bytes, and anything unrecognised is
``application/octet-stream``.
"""

from __future__ import annotations

import filetype

#: How many leading bytes ``detect_mime`` needs (``filetype`` looks at no more).
SNIFF_BYTES = 8192

DEFAULT_MIME_TYPE = "application/octet-stream"

_WEBVTT = b"WEBVTT"
_UTF8_BOM = b"\xef\xbb\xbf"


def detect_mime(first_bytes: bytes | bytearray | memoryview) -> str:
    """The content type of data starting with ``first_bytes`` (pass the first
    ``SNIFF_BYTES`` bytes, or all of a shorter object)."""
    if isinstance(first_bytes, str):
        # filetype would take a str for a file name and open it.
        raise TypeError("detect_mime wants bytes, not str")
    head = bytes(first_bytes[:SNIFF_BYTES])
    if not head:
        return DEFAULT_MIME_TYPE
    try:
        kind = filetype.guess(head)
    except Exception:  # a matcher choking on odd input is "unknown", not an error
        kind = None
    if kind is not None:
        return str(kind.mime)
    # Subtitles (WebVTT), which filetype does not know.
    text = head[len(_UTF8_BOM) :] if head.startswith(_UTF8_BOM) else head
    if text.startswith(_WEBVTT) and text[len(_WEBVTT) : len(_WEBVTT) + 1] in (b"", b" ", b"\t", b"\n", b"\r"):
        return "text/vtt"
    return DEFAULT_MIME_TYPE
