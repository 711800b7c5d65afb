"""The demo: its sample media, and ``jsdistributor demo`` as a real process
tree (simulators and a twistd node), with and without a browser.

The process tests talk to the demo over real sockets on 127.0.0.1
(ephemeral ports) with blocking ``urllib`` calls: the code under test runs
in child processes, not in this reactor. The browser test drives headless
Chromium over its DevTools pipe (``tests/chromium.py``) and skips when no
Chromium is installed (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import wave
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import filetype
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsdistributor.cache.hashing import content_hash
from jsdistributor.demo.runner import build_demo_catalog, source_root
from jsdistributor.demo import samples as samples_module
from jsdistributor.demo.samples import (
    JPEG_ID,
    MP3_ID,
    PNG_ID,
    VIDEO_ID,
    WAV_ID,
    generate_samples,
    jpeg_bytes,
    parse_large_sizes,
    png_bytes,
    wav_bytes,
)
from jsdistributor.metadata.catalog import parse_catalog
from jsdistributor.testing.http import http_get
from jsdistributor.testing.network import free_port

from .chromium import Chromium, find_chromium

MiB = 1024 * 1024


def _red(x: int, y: int) -> tuple[int, int, int]:
    return (255, x % 256, y % 256)


class ImageEncoderTests(SynchronousTestCase):
    def test_png_is_detected_and_has_its_size(self) -> None:
        data = png_bytes(33, 17, _red)
        self.assertEqual(filetype.guess_mime(data), "image/png")
        self.assertEqual(int.from_bytes(data[16:20], "big"), 33)
        self.assertEqual(int.from_bytes(data[20:24], "big"), 17)
        self.assertTrue(data.endswith(b"IEND\xaeB`\x82"))

    def test_jpeg_is_detected_and_well_formed(self) -> None:
        data = jpeg_bytes(16, 8, _red)
        self.assertEqual(filetype.guess_mime(data), "image/jpeg")
        self.assertTrue(data.startswith(b"\xff\xd8\xff\xe0"))
        self.assertTrue(data.endswith(b"\xff\xd9"))
        sof = data.index(b"\xff\xc0")
        self.assertEqual(data[sof + 5 : sof + 9], b"\x00\x08\x00\x10")  # height 8, width 16
        # The entropy-coded data never holds a marker: every 0xFF is stuffed.
        scan = data[data.index(b"\xff\xda") + 14 : -2]
        for i, byte in enumerate(scan):
            if byte == 0xFF:
                self.assertEqual(scan[i + 1], 0, f"unstuffed 0xFF at {i}")

    def test_jpeg_needs_whole_blocks(self) -> None:
        self.assertRaises(ValueError, jpeg_bytes, 10, 8, _red)

    def test_wav_reads_back(self) -> None:
        data = wav_bytes(seconds=0.5, rate=8000)
        self.assertEqual(filetype.guess_mime(data), "audio/x-wav")
        with wave.open(io.BytesIO(data)) as w:
            self.assertEqual((w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()), (1, 2, 8000, 4000))

    def test_large_sizes(self) -> None:
        self.assertEqual(parse_large_sizes("50M,200M"), [50 * MiB, 200 * MiB])
        self.assertEqual(parse_large_sizes(" none "), [])
        self.assertEqual(parse_large_sizes(""), [])
        self.assertRaises(ValueError, parse_large_sizes, "5X")


class SampleSetTests(SynchronousTestCase):
    def test_generate_then_reuse(self) -> None:
        directory = Path(self.mktemp())
        said: list[str] = []
        samples = generate_samples(directory, [MiB + 5], ffmpeg=None, say=said.append)
        self.assertTrue(said, "the first run says it generates")
        by_id = {s.id: s for s in samples}
        self.assertEqual(set(by_id), {PNG_ID, JPEG_ID, WAV_ID, VIDEO_ID, "10"})
        for sample in samples:
            data = (directory / "objects" / sample.id).read_bytes()
            self.assertEqual((len(data), content_hash(data)), (sample.size, sample.ipfs_hash), sample.name)
            if sample.mime_type != "application/octet-stream":
                detected = filetype.guess_mime(data)
                self.assertEqual(detected, sample.mime_type, sample.name)
        self.assertEqual(by_id["10"].size, MiB + 5)

        said.clear()
        again = generate_samples(directory, [MiB + 5], ffmpeg=None, say=said.append)
        self.assertEqual((again, said), (samples, []))
        # Other sizes: made again.
        third = generate_samples(directory, [], ffmpeg=None, say=said.append)
        self.assertNotIn("10", {s.id for s in third})
        self.assertFalse((directory / "objects" / "10").exists())

    def test_with_ffmpeg_a_video_and_an_mp3(self) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise self.skipTest("no ffmpeg (apt-get install ffmpeg)")
        directory = Path(self.mktemp())
        by_id = {s.id: s for s in generate_samples(directory, [], ffmpeg=ffmpeg)}
        self.assertEqual(by_id[MP3_ID].mime_type, "audio/mpeg")
        for object_id in (VIDEO_ID, MP3_ID):
            data = (directory / "objects" / object_id).read_bytes()
            self.assertEqual(filetype.guess_mime(data), by_id[object_id].mime_type)
            self.assertEqual(content_hash(data), by_id[object_id].ipfs_hash)
        shipped = (Path(samples_module.__file__).parent / "sample.webm").stat().st_size
        self.assertNotEqual(by_id[VIDEO_ID].size, shipped, "ffmpeg made its own video")

    def test_catalog_describes_both_storage_nodes(self) -> None:
        samples = generate_samples(Path(self.mktemp()), [], ffmpeg=None)
        dataset = parse_catalog(build_demo_catalog(["http://127.0.0.1:1/", "http://127.0.0.1:2/"], samples))
        self.assertEqual(dataset.object_count(), len(samples))
        self.assertEqual(set(dataset.storage_buckets), {"0", "1"})


# -- the demo as a process tree ------------------------------------------------------


def _refused(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


class RunningDemo:
    """``python -m jsdistributor demo`` on ephemeral ports in a temp dir."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.public_port = free_port()
        self.operator_port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.output_path = directory.parent / (directory.name + "-output.txt")
        self._output = self.output_path.open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = source_root()
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jsdistributor", "demo", "--dir", str(directory),
             "--public-port", str(self.public_port), "--operator-port", str(self.operator_port),
             "--large-objects", "3M", "--no-ffmpeg", *extra],
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(root) if root is not None else None,
        )  # fmt: skip

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def output(self) -> str:
        return self.output_path.read_text("utf-8", "replace")

    def wait_up(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while "demo network is up" not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the demo did not come up in {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    def storage_ports(self) -> list[int]:
        catalog = (self.directory / "catalog.yml").read_text("utf-8")
        import yaml

        nodes = yaml.safe_load(catalog)["storageNodes"]
        return [int(url.rstrip("/").rsplit(":", 1)[1]) for url in nodes.values()]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._output.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._output.close()


class DemoProcessTests(TestCase):
    timeout = 180

    def test_serves_status_assets_page_and_stops_on_sigterm(self) -> None:
        demo = RunningDemo(Path(self.mktemp()).absolute())
        self.addCleanup(demo.kill)
        demo.wait_up()
        text = demo.output()
        self.assertIn(f"{demo.public}/api/v1/status", text)
        self.assertIn(f"{demo.public}/demo?ids=", text)
        self.assertIn("curl -X POST", text)

        status, headers, body = http_get(f"{demo.public}/api/v1/status")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["id"], "demo-node")

        for object_id in ("10", VIDEO_ID, JPEG_ID):
            expected = (demo.directory / "objects" / object_id).read_bytes()
            status, headers, body = http_get(f"{demo.public}/api/v1/assets/{object_id}")
            self.assertEqual(status, 200, object_id)
            self.assertEqual(headers["x-cache"], "miss", object_id)
            self.assertEqual(len(body), len(expected), object_id)
            self.assertTrue(body == expected, f"asset {object_id} differs from the generated file")
        status, headers, _ = http_get(f"{demo.public}/api/v1/assets/{VIDEO_ID}", method="HEAD")
        self.assertEqual(headers["content-type"], "video/webm")

        status, headers, body = http_get(f"{demo.public}/demo")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertIn(b"<video", body)

        # The printed curl line works: its token is signed for exactly that request.
        match = re.search(r"curl -X POST (\S+) -H 'authorization: bearer (\S+)'.*?-d '([^']*)'", text, re.S)
        assert match is not None, text
        url, token, body = match.groups()
        self.assertEqual(url, f"http://127.0.0.1:{demo.operator_port}/api/v1/set-buckets")
        request = urllib.request.Request(
            url,
            data=body.encode(),
            method="POST",
            headers={"authorization": f"bearer {token}", "content-type": "application/json"},
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as response:
            self.assertEqual(response.status, 200)

        sims = demo.storage_ports()
        self.assertEqual(len(sims), 2)
        self.assertEqual(demo.terminate(), 0, demo.output())
        self.assertIn("stopped", demo.output())
        for port in (demo.public_port, demo.operator_port, *sims):
            self.assertTrue(_refused(port), f"port {port} still answers after the demo stopped")


PLAY_AND_SEEK = """
(async () => {
  const v = document.getElementById('player');
  const until = async (what, test, ms) => {
    const end = Date.now() + ms;
    while (!test()) {
      if (v.error) throw new Error('media error ' + v.error.code + ' ' + v.error.message);
      if (Date.now() > end) throw new Error('timed out: ' + what + ' (at ' + v.currentTime + ')');
      await new Promise(r => setTimeout(r, 50));
    }
  };
  await until('playing past 1s', () => v.currentTime > 1, 30000);
  const played = v.currentTime;
  const duration = v.duration;
  const target = duration / 2;
  const seeked = new Promise(r => v.addEventListener('seeked', r, { once: true }));
  v.currentTime = target;
  await seeked;
  const afterSeek = v.currentTime;
  await until('playing on after the seek', () => v.currentTime > afterSeek + 1, 30000);
  return { played, duration, target, afterSeek, now: v.currentTime, paused: v.paused };
})()
"""


class DemoBrowserTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.chromium = find_chromium()
        if self.chromium is None:
            raise self.skipTest("no chromium binary (apt-get install chromium, or set CHROMIUM=path)")

    def test_video_plays_and_seeks(self) -> None:
        assert self.chromium is not None
        demo = RunningDemo(Path(self.mktemp()).absolute())
        self.addCleanup(demo.kill)
        demo.wait_up()
        with Chromium(self.chromium) as browser:
            page = browser.open_page(f"{demo.public}/demo?ids={PNG_ID},{JPEG_ID},{WAV_ID},{VIDEO_ID},10")
            browser.wait_for(page, "window.demoState && window.demoState.ready === true", timeout=60)
            result: dict[str, Any] = browser.evaluate(page, PLAY_AND_SEEK, timeout=90)
            cache_states = browser.evaluate(
                page, "Object.fromEntries(Object.entries(demoState.assets).map(([k, v]) => [k, v.cache]))"
            )
            errors = browser.evaluate(page, "demoState.errors")
            video_responses = browser.responses(f"/api/v1/assets/{VIDEO_ID}")
        self.assertEqual(errors, [])
        self.assertEqual(set(cache_states), {PNG_ID, JPEG_ID, WAV_ID, VIDEO_ID, "10"})
        self.assertTrue(set(cache_states.values()) <= {"hit", "miss", "pending"}, cache_states)
        self.assertApproximates(result["duration"], 12.0, 0.5)
        self.assertGreater(result["played"], 1.0)
        self.assertApproximates(result["afterSeek"], result["target"], 0.5)
        self.assertGreater(result["now"], result["afterSeek"] + 1.0)
        self.assertFalse(result["paused"])
        statuses = {r["status"] for r in video_responses}
        self.assertIn(206, statuses, f"the video was not fetched with Range requests: {video_responses}")
        for response in video_responses:
            self.assertEqual(response["headers"].get("content-type") or response["headers"].get("Content-Type"), "video/webm")
        self.assertEqual(demo.terminate(), 0, demo.output())
