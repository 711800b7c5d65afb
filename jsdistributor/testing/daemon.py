"""Run the node as a real ``twistd`` process (tests, demo, benchmarks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

TWISTD = ("-c", "from twisted.scripts.twistd import run; run()")


def twistd_argv(config: Path | str, *extra: str) -> list[str]:
    """argv for ``twistd -n jsdistributor --config CONFIG`` with this Python."""
    return [sys.executable, *TWISTD, "-n", "--pidfile=", "--logfile=-", "jsdistributor", "--config", str(config), *extra]


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.exit_code: int | None = None
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.exit_code = code if code is not None else -1
        self.ended.callback(self.exit_code)


class Daemon:
    """A twistd-started node; ``output`` holds everything it printed."""

    def __init__(self, reactor: Any, argv: Sequence[str], cwd: str | None = None, env: dict[str, str] | None = None) -> None:
        self._reactor = reactor
        self._protocol = _Collect()
        environ = dict(os.environ)
        environ.update(env or {})
        here = str(Path(__file__).resolve().parents[2])
        environ["PYTHONPATH"] = here + os.pathsep + environ.get("PYTHONPATH", "")
        self.process = reactor.spawnProcess(self._protocol, argv[0], list(argv), env=environ, path=cwd or here)
        self.ended = self._protocol.ended

    @property
    def output(self) -> str:
        return self._protocol.output.decode("utf-8", "replace")

    def signal(self, name: str = "TERM") -> None:
        try:
            self.process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def kill(self) -> None:
        self.signal("KILL")

    async def wait_for_port(self, port: int, timeout: float = 20.0) -> None:
        """Until something accepts connections on 127.0.0.1:port."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        deadline = self._reactor.seconds() + timeout
        while True:
            if self._protocol.exit_code is not None:
                raise RuntimeError(f"the node exited early:\n{self.output}")
            try:
                p = await connectProtocol(TCP4ClientEndpoint(self._reactor, "127.0.0.1", port, timeout=1), Protocol())
            except (ConnectionRefusedError, OSError, Exception):
                if self._reactor.seconds() > deadline:
                    raise TimeoutError(f"port {port} never opened:\n{self.output}") from None
                await deferLater(self._reactor, 0.1, lambda: None)
                continue
            p.transport.loseConnection()
            return

    @property
    def exit_code(self) -> int | None:
        return self._protocol.exit_code

    async def wait(self) -> int:
        if self._protocol.exit_code is None:
            await self.ended
        assert self._protocol.exit_code is not None
        return self._protocol.exit_code

    async def stop(self) -> int:
        """SIGTERM (SIGKILL after 20 s); the exit code."""
        if self._protocol.exit_code is None:
            self.signal("TERM")
            timer = self._reactor.callLater(20, self.kill)
            await self.wait()
            if timer.active():
                timer.cancel()
        return await self.wait()

