"""Scale-out: HAProxy (the shipped ``etc/haproxy.cfg``, consistent hashing
on the path) in front of three nodes sharing one storage node and catalog.
Each object is downloaded once, by one node; losing a node moves only its
objects."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jsdistributor.config import parse_config
from jsdistributor.metadata.catalog import write_catalog
from jsdistributor.node import DistributorNode
from jsdistributor.testing.haproxy import TEMPLATE, find_haproxy, start_haproxy
from jsdistributor.testing.network import build_catalog, free_port, node_config_document
from jsdistributor.testing.storage_sim import start_storage_sim

OBJECTS = {str(i): os.urandom(2_000 + 97 * i) for i in range(1, 61)}
NAMES = ("node1", "node2", "node3")


class HAProxyScaleOutTests(TestCase):
    timeout = 120

    def setUp(self) -> Any:
        if find_haproxy() is None:
            raise SkipTest("haproxy is not installed (Debian package haproxy; .ci/run installs it)")
        if not TEMPLATE.exists():
            raise SkipTest(f"{TEMPLATE} is absent (not a source tree)")
        return ensureDeferred(self._start())

    async def _start(self) -> None:
        root = Path(self.mktemp()).absolute()
        root.mkdir(parents=True)
        self.sim = await start_storage_sim(reactor, objects=OBJECTS)
        self.addCleanup(lambda: ensureDeferred(self.sim.stop()))
        write_catalog(root / "catalog.yml", build_catalog([self.sim.node_endpoint], OBJECTS))
        self.nodes: dict[str, DistributorNode] = {}
        for name in NAMES:
            directory = root / name
            doc = node_config_document(directory, str(root / "catalog.yml"), id=name)
            node = DistributorNode(parse_config(doc, directory, {}), reactor)
            node.startService()
            self.addCleanup(lambda node=node: node.stopService() if node.running else None)
            self.nodes[name] = node
        servers = [(name, "127.0.0.1", node.public_service.listening_port.getHost().port) for name, node in self.nodes.items()]
        self.proxy = await start_haproxy(
            reactor, root / "haproxy", servers, port=free_port(), stats_port=free_port()
        )
        self.addCleanup(lambda: ensureDeferred(self._stop_proxy()))
        await self.proxy.wait_until_all_up(NAMES)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    async def _stop_proxy(self) -> None:
        """Stop HAProxy, then wait until the nodes have seen its connections
        close (the nodes keep idle keep-alive connections open)."""
        await self.proxy.stop()
        for _ in range(100):
            if not any(node.public_service.site.connections for node in self.nodes.values()):
                return
            await deferLater(reactor, 0.02, lambda: None)

    async def fetch(self, object_id: str, route: str = "assets") -> tuple[str, str]:
        """(x-served-by, x-cache) of a GET through HAProxy; checks the body."""
        response = await self.http.get(f"{self.proxy.url}/api/v1/{route}/{object_id}")
        body = await treq.content(response)
        self.assertEqual((response.code, body == OBJECTS[object_id]), (200, True), object_id)
        return (
            response.headers.getRawHeaders("x-served-by")[0],
            response.headers.getRawHeaders("x-cache")[0],
        )

    def upstream_gets(self) -> Counter[str]:
        return Counter({i: len(self.sim.sim.requests_for(i, "GET")) for i in OBJECTS})

    async def _consistent_hashing(self) -> None:
        first = {i: await self.fetch(i) for i in OBJECTS}
        self.assertEqual({cache for _, cache in first.values()}, {"miss"})
        self.assertEqual(self.upstream_gets(), Counter({i: 1 for i in OBJECTS}), "each object downloaded once")
        owner = {i: served_by for i, (served_by, _) in first.items()}
        share = Counter(owner.values())
        self.assertEqual(set(share), set(NAMES), f"every node owns some objects: {share}")
        for name, node in self.nodes.items():
            cached = {i for i in OBJECTS if node.cache.cached(i) is not None}
            self.assertEqual(cached, {i for i, o in owner.items() if o == name}, f"{name} caches only its own")
        await deferLater(reactor, 0.1, lambda: None)

        second = {i: await self.fetch(i) for i in OBJECTS}
        self.assertEqual(second, {i: (owner[i], "hit") for i in OBJECTS}, "same node, all hits")
        old_route = {i: await self.fetch(i, "asset") for i in list(OBJECTS)[:10]}
        self.assertEqual(old_route, {i: (owner[i], "hit") for i in list(OBJECTS)[:10]}, "/asset/ hashes as /assets/")
        self.assertEqual(sum(self.upstream_gets().values()), len(OBJECTS))

        # One node goes away: only its objects move.
        gone = "node2"
        await self.nodes[gone].stopService()
        await self.proxy.wait_for_state(gone, "DOWN")
        moved = {i for i, o in owner.items() if o == gone}
        third = {i: await self.fetch(i) for i in OBJECTS}
        for i, (served_by, cache) in third.items():
            if i in moved:
                self.assertNotEqual(served_by, gone)
                self.assertEqual(cache, "miss", f"{i} moved to {served_by}")
            else:
                self.assertEqual((served_by, cache), (owner[i], "hit"), f"{i} should have stayed on {owner[i]}")
        self.assertEqual(sum(self.upstream_gets().values()), len(OBJECTS) + len(moved))
        self.assertLess(len(moved), len(OBJECTS) * 0.6, f"{len(moved)} of {len(OBJECTS)} moved: {share}")

    def test_each_object_on_one_node_and_a_lost_node_moves_only_its_share(self) -> Any:
        return ensureDeferred(self._consistent_hashing())
