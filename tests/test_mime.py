"""Content type sniffing (jsdistributor.cache.mime)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor.cache.mime import DEFAULT_MIME_TYPE, SNIFF_BYTES, detect_mime

# Tiny hand-made headers: just the magic numbers each format starts with.
HEADERS = {
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "image/gif": b"GIF89a\x01\x00\x01\x00",
    "image/webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
    # ISO BMFF: box size, "ftyp", major brand.
    "video/mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
    # EBML header with DocType "webm".
    "video/webm": (
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04"
        b"\x42\xf3\x81\x08\x42\x82\x84webm\x42\x87\x81\x04\x42\x85\x81\x02"
    ),
    "audio/mpeg": b"ID3\x04\x00\x00\x00\x00\x00\x00",
    "audio/ogg": b"OggS\x00\x02" + b"\x00" * 30,
    "text/vtt": b"WEBVTT\n\n00:00.000 --> 00:01.000\nhi\n",
}


class DetectMimeTests(SynchronousTestCase):
    def test_known_headers(self) -> None:
        for mime, header in HEADERS.items():
            self.assertEqual(detect_mime(header), mime, mime)

    def test_mp3_frame_sync_and_isom(self) -> None:
        self.assertEqual(detect_mime(b"\xff\xfb\x90\x00" + b"\x00" * 20), "audio/mpeg")
        self.assertEqual(detect_mime(b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"), "video/mp4")

    def test_unknown(self) -> None:
        for data in (b"", b"hello world", b"\x00" * 100, b"WEBVTTX", b"{\"json\": 1}"):
            self.assertEqual(detect_mime(data), DEFAULT_MIME_TYPE, data)

    def test_webvtt_with_bom(self) -> None:
        self.assertEqual(detect_mime(b"\xef\xbb\xbfWEBVTT\n"), "text/vtt")

    def test_accepts_bytearray_and_memoryview(self) -> None:
        png = HEADERS["image/png"]
        self.assertEqual(detect_mime(bytearray(png)), "image/png")
        self.assertEqual(detect_mime(memoryview(png)), "image/png")

    def test_rejects_str(self) -> None:
        # filetype would treat a str as a file name.
        self.assertRaises(TypeError, detect_mime, "/etc/passwd")  # type: ignore[arg-type]

    def test_long_input(self) -> None:
        self.assertEqual(detect_mime(HEADERS["image/gif"] + b"\x00" * (3 * SNIFF_BYTES)), "image/gif")

    @given(st.binary(max_size=64))
    @settings(deadline=None)
    def test_never_fails(self, data: bytes) -> None:
        self.assertIsInstance(detect_mime(data), str)
