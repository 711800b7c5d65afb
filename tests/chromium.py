"""Headless Chromium driven over the DevTools protocol, stdlib only.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol
messages (JSON, each ended by a NUL byte) from its file descriptor 3 and
writes answers and events to descriptor 4. No websocket library and no
browser driver are needed, only a ``chromium`` (Debian's package) or
``google-chrome`` binary; ``find_chromium()`` is None without one (tests
then skip).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


class BrowserError(Exception):
    pass


class Chromium:
    """One headless browser; ``with Chromium(path) as browser: ...``."""

    def __init__(self, executable: str) -> None:
        self._executable = executable
        self._profile = tempfile.mkdtemp(prefix="jsd-chromium-")
        self._next_id = 0
        self._buffer = b""
        #: Every event received so far: ``(sessionId, method, params)``.
        self.events: list[tuple[str | None, str, dict[str, Any]]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._to_browser = self._from_browser = -1

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        to_read, to_write = os.pipe()  # we write commands, chromium reads fd 3
        from_read, from_write = os.pipe()  # chromium writes fd 4, we read
        # Move the child's ends above 4 (close-on-exec) so that dup2 onto 3
        # and 4 in the child cannot clobber one with the other.
        child_in, child_out = _high_dup(to_read), _high_dup(from_write)
        for fd in (to_read, from_write):
            os.close(fd)

        def wire() -> None:  # in the child, before exec
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        try:
            self._process = subprocess.Popen(
                [self._executable, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=False,
                preexec_fn=wire,
            )
        finally:
            os.close(child_in)
            os.close(child_out)
        self._to_browser, self._from_browser = to_write, from_read

    def close(self) -> None:
        if self._process is not None:
            try:
                self.send("Browser.close", timeout=5)
            except (BrowserError, OSError):
                pass
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        for fd in (self._to_browser, self._from_browser):
            if fd >= 0:
                os.close(fd)
        self._to_browser = self._from_browser = -1
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol ---------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Send a command; its result (``BrowserError`` for an error answer)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode("utf-8") + b"\0"
        while data:
            written = os.write(self._to_browser, data)
            data = data[written:]
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if "method" in answer:
                self.events.append((answer.get("sessionId"), answer["method"], answer.get("params", {})))

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from the browser in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise BrowserError("the browser closed its pipe (did it crash?)")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    # -- conveniences ------------------------------------------------------

    def open_page(self, url: str) -> str:
        """A new tab at ``url`` with the Network domain on; its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Network.enable", session=session)
        self.send("Page.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        return str(session)

    def evaluate(self, session: str, expression: str, timeout: float = 30.0) -> Any:
        """The value of ``expression`` (awaited if a promise)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page script failed: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, session: str, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(session, expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression}")
            time.sleep(0.1)

    def responses(self, url_part: str) -> list[dict[str, Any]]:
        """``Network.responseReceived`` responses whose URL contains ``url_part``."""
        return [
            params["response"]
            for _, method, params in self.events
            if method == "Network.responseReceived" and url_part in params["response"]["url"]
        ]


def _high_dup(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
