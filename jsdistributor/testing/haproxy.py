"""HAProxy in front of local nodes, for tests and benchmarks: the shipped
``etc/haproxy.cfg`` with its addresses replaced by local ones.

``render_haproxy_config`` keeps every setting of the template (balancing,
hashing, health checks, headers) and only replaces the frontend's ``bind``,
the backend's ``server`` lines, the stats listener's ``bind``, and the
timing knobs a test wants small. :func:`start_haproxy` runs it in the
foreground (``haproxy -db -f``) as a :class:`~jsdistributor.testing.daemon.Daemon`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from attrs import define
from twisted.internet.task import deferLater

from .daemon import Daemon

#: ``etc/haproxy.cfg`` in a source tree (None when not there).
TEMPLATE = Path(__file__).resolve().parents[2] / "etc" / "haproxy.cfg"

#: Small timings for tests (a slow machine still answers a check in time).
TEST_TIMEOUTS = {
    "connect": "1s", "client": "10s", "server": "10s", "http-request": "5s", "queue": "5s", "check": "2s",
}


def find_haproxy() -> str | None:
    """The haproxy executable, or None when not installed."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def render_haproxy_config(
    template: str,
    port: int,
    servers: Sequence[tuple[str, str, int]],
    *,
    stats_port: int | None = None,
    check: str = "check inter 100ms fall 3 rise 1",
    timeouts: Mapping[str, str] = TEST_TIMEOUTS,
    maxconn: int = 4096,
    logs: bool = False,
    balance: str | None = None,
) -> str:
    """``template`` with the frontend bound to ``127.0.0.1:port``, the
    backend's servers replaced by ``servers`` (``(name, host, port)``), the
    stats page on ``stats_port`` (None: removed), the health-check timing
    and ``timeouts`` replaced; per-request logs kept only with ``logs``.
    ``balance`` (e.g. ``roundrobin``, for comparisons) replaces the
    template's ``balance uri`` / ``hash-type consistent``."""
    out: list[str] = []
    section = ""
    backend_end = -1
    for line in template.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():
            section = stripped
            if section.startswith("listen stats") and stats_port is None:
                continue
            out.append(line)
            continue
        if section.startswith("listen stats") and stats_port is None:
            continue
        words = stripped.split()
        keyword = words[0] if words else ""
        indent = line[: len(line) - len(line.lstrip())]
        if not logs and (keyword == "log" or words[:2] in (["option", "httplog"], ["option", "dontlognull"])):
            continue
        if keyword == "maxconn" and section == "global":
            line = f"{indent}maxconn {maxconn}"
        elif keyword == "timeout" and len(words) > 1 and words[1] in timeouts:
            line = f"{indent}timeout {words[1]} {timeouts[words[1]]}"
        elif keyword == "bind" and section.startswith("frontend"):
            line = f"{indent}bind 127.0.0.1:{port}"
        elif keyword == "bind" and section.startswith("listen stats"):
            line = f"{indent}bind 127.0.0.1:{stats_port}"
        elif keyword == "default-server" and section.startswith("backend"):
            kept = re.sub(r"\b(check|inter \S+|fall \S+|rise \S+)\s*", "", " ".join(words[1:])).strip()
            line = f"{indent}default-server {check} {kept}".rstrip()
        elif keyword == "server" and section.startswith("backend"):
            continue
        elif keyword == "balance" and balance is not None:
            line = f"{indent}balance {balance}"
        elif keyword == "hash-type" and balance is not None:
            continue
        out.append(line)
        if section.startswith("backend") and stripped:
            backend_end = len(out)
    if backend_end < 0:
        raise ValueError("the template has no backend section")
    server_lines = [f"    server {name} {host}:{server_port}" for name, host, server_port in servers]
    out[backend_end:backend_end] = server_lines
    return "\n".join(out) + "\n"


@define
class RunningHAProxy:
    reactor: Any
    daemon: Daemon
    port: int
    stats_port: int | None
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def server_states(self) -> dict[str, str]:
        """``{server name: status}`` from the stats page (``UP``, ``DOWN``...)."""
        import treq

        if self.stats_port is None:
            raise RuntimeError("started without a stats port")
        response = await treq.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", persistent=False)
        text = (await treq.content(response)).decode("utf-8", "replace").lstrip("# ")
        states = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("svname") not in ("FRONTEND", "BACKEND") and row.get("pxname") == "distributors":
                states[row["svname"]] = row["status"]
        return states

    async def wait_for_state(self, name: str, wanted: str, timeout: float = 10.0) -> None:
        """Until the stats page shows server ``name`` as ``wanted`` (``UP``/``DOWN``)."""
        deadline = self.reactor.seconds() + timeout
        while True:
            states = await self.server_states()
            if states.get(name, "").split()[0:1] == [wanted]:
                return
            if self.reactor.seconds() > deadline:
                raise TimeoutError(f"{name} is {states.get(name)!r}, not {wanted}:\n{self.daemon.output}")
            await deferLater(self.reactor, 0.05, lambda: None)

    async def wait_until_all_up(self, names: Sequence[str], timeout: float = 10.0) -> None:
        for name in names:
            await self.wait_for_state(name, "UP", timeout)

    async def stop(self) -> int:
        return await self.daemon.stop()


async def start_haproxy(
    reactor: Any,
    directory: Path,
    servers: Sequence[tuple[str, str, int]],
    *,
    port: int,
    stats_port: int | None = None,
    template: str | None = None,
    **render: Any,
) -> RunningHAProxy:
    """Write the config into ``directory`` and run ``haproxy -db -f`` on it;
    returns once it accepts connections on ``port``."""
    haproxy = find_haproxy()
    if haproxy is None:
        raise FileNotFoundError("haproxy is not installed")
    text = template if template is not None else TEMPLATE.read_text("utf-8")
    config = render_haproxy_config(text, port, servers, stats_port=stats_port, **render)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "haproxy.cfg"
    path.write_text(config)
    daemon = Daemon(reactor, [haproxy, "-db", "-f", str(path)], cwd=str(directory))
    running = RunningHAProxy(reactor, daemon, port, stats_port, path)
    try:
        await daemon.wait_for_port(port)
    except BaseException:
        await daemon.stop()
        raise
    return running
