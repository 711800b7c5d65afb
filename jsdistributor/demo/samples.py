"""The demo's sample media, generated locally (nothing is downloaded).

Images are written by small pure-Python encoders (PNG with zlib; a baseline
JPEG), audio with the stdlib ``wave`` module, large objects from a seeded
PRNG. The video is made with ``ffmpeg`` when it is installed, otherwise the
shipped ``sample.webm`` (VP9 + Opus, 12 s) is used; it was made with::

    ffmpeg -f lavfi -i testsrc2=size=320x180:rate=25:duration=12 \\
      -f lavfi -i sine=frequency=440:beep_factor=4:duration=12 \\
      -c:v libvpx-vp9 -b:v 90k -g 25 -deadline good -cpu-used 4 -row-mt 1 \\
      -c:a libopus -b:a 24k -shortest sample.webm

``generate_samples`` writes every object into a directory, named by its
object id, with a manifest (``samples.json``) of sizes, hashes and content
types, and reuses what an earlier run made when it still matches.
"""

from __future__ import annotations

import array
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from attrs import asdict, frozen

from ..cache.hashing import ContentHasher
from ..sizes import parse_size

MANIFEST = "samples.json"
MANIFEST_VERSION = 1
MiB = 1024 * 1024

#: Object ids of the samples (stable whatever is generated).
PNG_ID, JPEG_ID, WAV_ID, VIDEO_ID, MP3_ID = "1", "2", "3", "4", "5"
FIRST_LARGE_ID = 10

DEFAULT_LARGE = "50M,200M"

Pixel = tuple[int, int, int]


@frozen
class Sample:
    """One generated object, as the manifest and the catalog describe it."""

    id: str
    name: str
    size: int
    ipfs_hash: str
    mime_type: str

    def catalog_entry(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "ipfsHash": self.ipfs_hash, "accepted": True, "mimeType": self.mime_type}


# -- images ----------------------------------------------------------------------


def png_bytes(width: int, height: int, pixel: Callable[[int, int], Pixel]) -> bytes:
    """An 8-bit RGB PNG of ``pixel(x, y)``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter: none
        for x in range(width):
            raw.extend(pixel(x, y))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")


def _zigzag() -> list[int]:
    """Natural (row-major) indices of the 64 coefficients in zigzag order."""
    order = sorted(((u + v, u if (u + v) % 2 else v, u * 8 + v) for u in range(8) for v in range(8)))
    return [index for _, _, index in order]


_ZIGZAG = _zigzag()
_COS = [[(math.sqrt(0.5) if k == 0 else 1.0) * 0.5 * math.cos((2 * n + 1) * k * math.pi / 16) for n in range(8)] for k in range(8)]


def _fdct(block: Sequence[float]) -> list[float]:
    """2-D DCT-II of an 8x8 block (row-major), JPEG scaling."""
    rows = [[sum(_COS[k][n] * block[r * 8 + n] for n in range(8)) for k in range(8)] for r in range(8)]
    return [sum(_COS[u][r] * rows[r][v] for r in range(8)) for u in range(8) for v in range(8)]


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._bits = 0

    def write(self, value: int, length: int) -> None:
        self._acc = (self._acc << length) | (value & ((1 << length) - 1))
        self._bits += length
        while self._bits >= 8:
            self._bits -= 8
            byte = (self._acc >> self._bits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)  # byte stuffing
        self._acc &= (1 << self._bits) - 1

    def flush(self) -> bytes:
        if self._bits:
            self.write((1 << (8 - self._bits)) - 1, 8 - self._bits)  # pad with ones
        return bytes(self.out)


def _canonical_codes(lengths: Sequence[int], symbols: Sequence[int]) -> dict[int, tuple[int, int]]:
    """``{symbol: (code, length)}`` of a JPEG Huffman table (``lengths[i]``
    codes of length ``i + 1``)."""
    codes: dict[int, tuple[int, int]] = {}
    code = 0
    k = 0
    for length, count in enumerate(lengths, start=1):
        for _ in range(count):
            codes[symbols[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


# Simple valid tables: every DC category (0-11) on 4 bits, every AC symbol
# (EOB, ZRL and run/size 0-15/1-10) on 8 bits. Larger than the standard's
# tables, and correct by construction; compression does not matter here.
_DC_SYMBOLS = list(range(12))
_DC_LENGTHS = [0, 0, 0, 12] + [0] * 12
_AC_SYMBOLS = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]
_AC_LENGTHS = [0] * 7 + [len(_AC_SYMBOLS)] + [0] * 8
_DC_CODES = _canonical_codes(_DC_LENGTHS, _DC_SYMBOLS)
_AC_CODES = _canonical_codes(_AC_LENGTHS, _AC_SYMBOLS)
#: Quantization (natural order): finer for low frequencies.
_QUANT = [[max(1, min(255, 4 + 3 * (u + v))) for v in range(8)] for u in range(8)]
_QUANT_FLAT = [q for row in _QUANT for q in row]


def _category(value: int) -> tuple[int, int]:
    """JPEG magnitude category and the bits that encode ``value``."""
    size = abs(value).bit_length()
    return size, value if value >= 0 else value + (1 << size) - 1


def jpeg_bytes(width: int, height: int, pixel: Callable[[int, int], Pixel]) -> bytes:
    """A baseline JPEG (JFIF, YCbCr 4:4:4) of ``pixel(x, y)``; ``width``
    and ``height`` are multiples of 8."""
    if width % 8 or height % 8:
        raise ValueError("width and height must be multiples of 8")
    planes: list[list[float]] = [[], [], []]
    for y in range(height):
        for x in range(width):
            r, g, b = pixel(x, y)
            planes[0].append(0.299 * r + 0.587 * g + 0.114 * b - 128)
            planes[1].append(-0.168736 * r - 0.331264 * g + 0.5 * b)
            planes[2].append(0.5 * r - 0.418688 * g - 0.081312 * b)
    bits = _BitWriter()
    previous_dc = [0, 0, 0]
    for by in range(0, height, 8):
        for bx in range(0, width, 8):
            for c, plane in enumerate(planes):
                block = [plane[(by + r) * width + bx + col] for r in range(8) for col in range(8)]
                coefficients = _fdct(block)
                quantized = [round(coefficients[i] / _QUANT_FLAT[i]) for i in _ZIGZAG]
                diff = quantized[0] - previous_dc[c]
                previous_dc[c] = quantized[0]
                size, value = _category(diff)
                bits.write(*_DC_CODES[size])
                if size:
                    bits.write(value, size)
                run = 0
                for coefficient in quantized[1:]:
                    if coefficient == 0:
                        run += 1
                        continue
                    while run > 15:
                        bits.write(*_AC_CODES[0xF0])
                        run -= 16
                    size, value = _category(coefficient)
                    bits.write(*_AC_CODES[(run << 4) | size])
                    bits.write(value, size)
                    run = 0
                if run:
                    bits.write(*_AC_CODES[0x00])
    scan = bits.flush()

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    quant = bytes(_QUANT_FLAT[i] for i in _ZIGZAG)
    tables = b"".join(
        bytes([kind]) + bytes(lengths) + bytes(symbols)
        for kind, lengths, symbols in (
            (0x00, _DC_LENGTHS, _DC_SYMBOLS),
            (0x10, _AC_LENGTHS, _AC_SYMBOLS),
        )
    )
    frame = struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3))
    start_of_scan = bytes([3]) + b"".join(bytes([c, 0x00]) for c in (1, 2, 3)) + bytes([0, 63, 0])
    return (
        b"\xff\xd8"
        + segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + segment(0xDB, b"\x00" + quant)
        + segment(0xC0, frame)
        + segment(0xC4, tables)
        + segment(0xDA, start_of_scan)
        + scan
        + b"\xff\xd9"
    )


def _picture(width: int, height: int, hue: float) -> Callable[[int, int], Pixel]:
    """A colourful test picture: a diagonal gradient with a circle."""
    cx, cy, radius = width * 0.62, height * 0.5, min(width, height) * 0.3

    def pixel(x: int, y: int) -> Pixel:
        t = (x / width + y / height) / 2
        r = int(127 + 127 * math.sin(2 * math.pi * (t + hue)))
        g = int(127 + 127 * math.sin(2 * math.pi * (t + hue + 1 / 3)))
        b = int(127 + 127 * math.sin(2 * math.pi * (t + hue + 2 / 3)))
        if (x - cx) ** 2 + (y - cy) ** 2 < radius**2:
            return (255 - r, 255 - g, 255 - b)
        return (r, g, b)

    return pixel


# -- audio -----------------------------------------------------------------------


def wav_bytes(seconds: float = 3.0, rate: int = 22050) -> bytes:
    """A 16-bit mono WAV: a C major arpeggio with a soft envelope."""
    import io
    import wave

    notes = (261.63, 329.63, 392.0, 523.25)
    total = int(seconds * rate)
    per_note = total // len(notes)
    samples = array.array("h")
    for i in range(total):
        note = notes[min(i // per_note, len(notes) - 1)]
        phase = (i % per_note) / per_note
        envelope = min(1.0, phase * 20) * (1 - phase) ** 0.5
        samples.append(int(12000 * envelope * math.sin(2 * math.pi * note * i / rate)))
    if samples.itemsize != 2:
        raise RuntimeError("array('h') is not 16-bit here")
    if sys.byteorder != "little":
        samples.byteswap()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buffer.getvalue()


# -- generation ----------------------------------------------------------------------


def parse_large_sizes(text: str) -> list[int]:
    """``"50M,200M"`` -> byte counts; ``""`` or ``"none"`` -> none."""
    text = text.strip()
    if text.lower() in ("", "none", "0"):
        return []
    sizes = []
    for part in text.split(","):
        size = parse_size(part.strip())
        if size <= 0:
            raise ValueError(f"{part!r} is not a positive size")
        sizes.append(size)
    return sizes


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _hash_file(path: Path) -> tuple[int, str]:
    hasher = ContentHasher()
    with path.open("rb") as f:
        while block := f.read(MiB):
            hasher.update(block)
    return hasher.bytes_seen, hasher.ipfs_hash()


def write_random_file(path: Path, size: int, seed: int) -> tuple[int, str]:
    """``size`` pseudo-random bytes (seeded: the same for the same seed);
    returns ``(size, ipfs_hash)``, hashed while written."""
    rng = random.Random(seed)
    hasher = ContentHasher()
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(4 * MiB, left))
            hasher.update(block)
            f.write(block)
            left -= len(block)
    os.replace(temporary, path)
    return hasher.bytes_seen, hasher.ipfs_hash()


def _ffmpeg(arguments: Iterable[str], ffmpeg: str) -> bool:
    try:
        result = subprocess.run(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *arguments],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _make_video(path: Path, ffmpeg: str | None) -> None:
    if ffmpeg is not None:
        made = _ffmpeg(
            [
                "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=30",
                "-f", "lavfi", "-i", "sine=frequency=440:beep_factor=4:duration=30",
                "-c:v", "libvpx-vp9", "-b:v", "400k", "-g", "25", "-deadline", "realtime", "-cpu-used", "8",
                "-row-mt", "1", "-c:a", "libopus", "-b:a", "48k", "-shortest",
                "-metadata", "title=jsdistributor demo", "-f", "webm", str(path) + ".tmp",
            ],
            ffmpeg,
        )  # fmt: skip
        if made:
            os.replace(str(path) + ".tmp", path)
            return
    with files(__package__).joinpath("sample.webm").open("rb") as source, path.open("wb") as target:
        shutil.copyfileobj(source, target)


def _make_mp3(path: Path, wav: Path, ffmpeg: str) -> bool:
    made = _ffmpeg(["-i", str(wav), "-c:a", "libmp3lame", "-q:a", "6", "-f", "mp3", str(path) + ".tmp"], ffmpeg)
    if made:
        os.replace(str(path) + ".tmp", path)
    return made


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == MANIFEST_VERSION else None


def _manifest_still_valid(manifest: dict[str, Any], objects: Path, large: list[int], use_ffmpeg: bool) -> bool:
    if manifest.get("large") != large or manifest.get("ffmpeg") != use_ffmpeg:
        return False
    try:
        for entry in manifest["objects"]:
            if (objects / entry["id"]).stat().st_size != entry["size"]:
                return False
    except (OSError, KeyError, TypeError):
        return False
    return True


def generate_samples(
    directory: Path,
    large: Sequence[int] = (50 * MiB, 200 * MiB),
    ffmpeg: str | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> list[Sample]:
    """Make (or reuse) the sample set: objects in ``directory/objects``,
    the manifest in ``directory/samples.json``; returns the samples.

    ``ffmpeg``: the ffmpeg program to make the video and an MP3 with
    (``None``: the shipped video, no MP3).
    """
    objects = directory / "objects"
    large = list(large)
    manifest = _read_manifest(directory)
    if manifest is not None and _manifest_still_valid(manifest, objects, large, ffmpeg is not None):
        return [Sample(**entry) for entry in manifest["objects"]]

    say(f"generating the sample set in {directory} (first run)")
    objects.mkdir(parents=True, exist_ok=True)
    for stale in objects.iterdir():
        stale.unlink()
    made: list[tuple[str, str, str]] = []  # (id, name, mime type)
    _write(objects / PNG_ID, png_bytes(320, 200, _picture(320, 200, 0.0)))
    made.append((PNG_ID, "gradient.png", "image/png"))
    _write(objects / JPEG_ID, jpeg_bytes(320, 200, _picture(320, 200, 0.4)))
    made.append((JPEG_ID, "gradient.jpg", "image/jpeg"))
    _write(objects / WAV_ID, wav_bytes())
    made.append((WAV_ID, "arpeggio.wav", "audio/x-wav"))
    _make_video(objects / VIDEO_ID, ffmpeg)
    made.append((VIDEO_ID, "testcard.webm", "video/webm"))
    if ffmpeg is not None and _make_mp3(objects / MP3_ID, objects / WAV_ID, ffmpeg):
        made.append((MP3_ID, "arpeggio.mp3", "audio/mpeg"))
    samples = []
    for object_id, name, mime in made:
        size, ipfs_hash = _hash_file(objects / object_id)
        samples.append(Sample(object_id, name, size, ipfs_hash, mime))
    for i, size in enumerate(large):
        object_id = str(FIRST_LARGE_ID + i)
        say(f"  {size // MiB} MiB of pseudo-random bytes")
        size, ipfs_hash = write_random_file(objects / object_id, size, seed=FIRST_LARGE_ID + i)
        samples.append(Sample(object_id, f"random-{size // MiB}MiB.bin", size, ipfs_hash, "application/octet-stream"))
    document = {
        "version": MANIFEST_VERSION,
        "large": large,
        "ffmpeg": ffmpeg is not None,
        "objects": [asdict(s) for s in samples],
    }
    _write(directory / MANIFEST, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return samples
