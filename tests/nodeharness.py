"""An in-process node on real sockets (127.0.0.1, ephemeral ports) with real
storage-node simulators and a static catalog, for end-to-end tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from jsdistributor.config import parse_config
from jsdistributor.jwtauth import sign_operator_request
from jsdistributor.node import DistributorNode
from jsdistributor.testing.network import SECRET, build_catalog, node_config_document
from jsdistributor.testing.storage_sim import RunningSim, start_storage_sim
from jsdistributor.metadata.catalog import write_catalog


class NodeHarness:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sims: list[RunningSim] = []
        self.node: DistributorNode | None = None
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    async def start(
        self,
        objects: dict[str, bytes],
        sims: int = 2,
        unsupported: dict[str, bytes] | None = None,
        not_accepted: dict[str, bytes] | None = None,
        prepare: Any = None,
        **config: Any,
    ) -> None:
        """``prepare(node)``, if given, runs before the node starts (tests
        swap parts in, e.g. ``node.cache.store = FaultyStore(...)``)."""
        for _ in range(sims):
            self.sims.append(await start_storage_sim(reactor, objects=dict(objects, **(unsupported or {}))))
        catalog = build_catalog(
            [s.node_endpoint for s in self.sims], objects, unsupported=unsupported, not_accepted=not_accepted
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        write_catalog(self.directory / "catalog.yml", catalog)
        doc = node_config_document(self.directory, "catalog.yml", **config)
        self.config = parse_config(doc, self.directory, {})
        self.node = DistributorNode(self.config, reactor)
        if prepare is not None:
            prepare(self.node)
        self.node.startService()

    @property
    def public(self) -> str:
        assert self.node is not None
        return f"http://127.0.0.1:{self.public_port}/api/v1"

    @property
    def public_port(self) -> int:
        assert self.node is not None and self.node.public_service.listening_port is not None
        return int(self.node.public_service.listening_port.getHost().port)

    @property
    def operator(self) -> str:
        assert self.node is not None and self.node.operator_service is not None
        port = self.node.operator_service.listening_port.getHost().port
        return f"http://127.0.0.1:{port}/api/v1"

    async def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[Any, bytes]:
        h = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        response = await self.http.request(method, self.public + path, headers=h)
        body = await treq.content(response)
        return response, body

    async def operate(self, route: str, body: object = None, token: str | None = None, raw: bytes | None = None) -> tuple[Any, bytes]:
        url_path = f"/api/v1/{route}"
        req_body = {} if body is None else body
        if token is None:
            token = sign_operator_request(SECRET, url_path, req_body, time.time())
        data = raw if raw is not None else json.dumps(req_body).encode()
        response = await self.http.post(
            self.operator + "/" + route,
            data=data,
            headers={b"authorization": [b"bearer " + token.encode()], b"content-type": [b"application/json"]},
        )
        return response, await treq.content(response)

    async def raw(self, request: bytes) -> bytes:
        """Send raw bytes to the public port; everything until it closes."""
        from twisted.internet.threads import deferToThread

        port = self.public_port

        def talk() -> bytes:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(request)
                chunks = []
                while data := s.recv(65536):
                    chunks.append(data)
            return b"".join(chunks)

        return await deferToThread(talk)

    async def stop(self) -> None:
        if self.node is not None and self.node.running:
            await self.node.stopService()
        for sim in self.sims:
            await sim.stop()
        await self.pool.closeCachedConnections()


def header(response: Any, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
