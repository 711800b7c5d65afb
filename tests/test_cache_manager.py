"""CacheManager: space accounting and eviction under random operations.

Downloads complete synchronously here (a fake storage client delivers the
whole body at once) and time is a Clock; the store is a real ContentStore
in a temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

from hypothesis import given, settings, strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from jsdistributor.cache.eviction import LruSpPolicy
from jsdistributor.cache.hashing import content_hash
from jsdistributor.cache.manager import CacheManager
from jsdistributor.cache.store import ContentStore
from jsdistributor.model import DataObject, StorageEndpoint

SOURCE = StorageEndpoint("0", "http://sim/api/v1")
LIMIT = 10_000


class InstantResponse:
    code = 200

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers = Headers()

    def deliverBody(self, protocol: Any) -> None:
        class T:
            def stopProducing(self) -> None:
                pass

        protocol.makeConnection(T())
        protocol.dataReceived(self.data)
        protocol.connectionLost(Failure(ResponseDone()))


class InstantStorage:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.client = self

    def find_sources(self, obj: DataObject, exclude: frozenset[str] = frozenset()) -> Deferred[list[StorageEndpoint]]:
        return succeed([] if SOURCE.url in exclude else [SOURCE])

    def best_guess(self, obj: DataObject) -> StorageEndpoint | None:
        return None  # always the HEAD-checked path

    def get_object(self, endpoint: StorageEndpoint, object_id: str, offset: int = 0, end: int | None = None) -> Deferred[Any]:
        return succeed(InstantResponse(self.objects[object_id][offset:]))

    def download_slot(self) -> Deferred[Callable[[], None]]:
        return succeed(lambda: None)

    def remember_source(self, object_id: str, endpoint: StorageEndpoint) -> None:
        pass

    def forget_source(self, object_id: str, url: str) -> None:
        pass


def make_manager(directory: str, objects: dict[str, bytes], clock: Clock) -> CacheManager:
    storage = InstantStorage(objects)
    root = FilePath(directory)
    return CacheManager(
        clock,
        ContentStore(root.child("assets")),
        LruSpPolicy(),
        limit=LIMIT,
        state_path=root.child("state.json"),
        storage=storage,
        client=storage,
    )


def obj(object_id: str, data: bytes) -> DataObject:
    return DataObject(object_id, len(data), content_hash(data), True, (SOURCE,))


def disk_usage(manager: CacheManager) -> int:
    return sum(manager.store.list_objects().values())


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 30), st.integers(0, 6_000)),
        st.tuples(st.just("hold"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("access"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("wait"), st.integers(1, 600), st.just(0)),
    ),
    max_size=60,
)


class SpaceTests(SynchronousTestCase):
    @settings(deadline=None, max_examples=60, derandomize=True)
    @given(operations)
    def test_limit_never_exceeded_and_in_use_objects_stay(self, ops: list[tuple[str, int, int]]) -> None:
        clock = Clock()
        with tempfile.TemporaryDirectory() as directory:
            sizes: dict[str, int] = {}
            objects: dict[str, bytes] = {}
            manager = make_manager(directory, objects, clock)
            holds: dict[str, list[Callable[[], None]]] = {}
            for op, n, size in ops:
                object_id = str(n)
                if op == "add" and manager.cached(object_id) is None:
                    data = objects.get(object_id) or os.urandom(sizes.setdefault(object_id, size))
                    objects[object_id] = data
                    if manager.reserve(len(data)):
                        manager.start_download(obj(object_id, data))
                        self.assertIsNotNone(manager.cached(object_id), "download completed")
                elif op == "hold" and manager.cached(object_id) is not None:
                    holds.setdefault(object_id, []).append(manager.hold(object_id))
                elif op == "release" and holds.get(object_id):
                    holds[object_id].pop()()
                elif op == "access" and manager.cached(object_id) is not None:
                    manager.touch(object_id)
                elif op == "wait":
                    clock.advance(n)
                self.assertLessEqual(manager.storage_used, LIMIT)
                self.assertLessEqual(disk_usage(manager), LIMIT)
                self.assertEqual(manager.storage_used, disk_usage(manager), "accounting matches the disk")
                for held, releases in holds.items():
                    if releases:
                        self.assertIsNotNone(manager.cached(held), f"object {held} evicted under its reader")
                        self.assertEqual(manager.store.path_of(held).getContent(), objects[held])

    def test_full_of_objects_in_use_says_no(self) -> None:
        clock = Clock()
        directory = self.mktemp()
        os.makedirs(directory)
        objects = {"1": os.urandom(6000), "2": os.urandom(6000)}
        manager = make_manager(directory, objects, clock)
        self.assertTrue(manager.reserve(6000))
        manager.start_download(obj("1", objects["1"]))
        release = manager.hold("1")
        self.assertFalse(manager.reserve(6000), "nothing evictable: the caller proxies instead")
        release()
        self.assertTrue(manager.reserve(6000), "evicts once the reader is gone")
        self.assertIsNone(manager.cached("1"))
        self.assertFalse(manager.store.path_of("1").exists())

    def test_state_survives_a_restart(self) -> None:
        clock = Clock()
        directory = self.mktemp()
        os.makedirs(directory)
        objects = {"1": b"one", "2": b"two!"}
        manager = make_manager(directory, objects, clock)
        for object_id, data in objects.items():
            manager.reserve(len(data))
            manager.start_download(obj(object_id, data))
        clock.advance(100)
        manager.touch("2")
        manager.save()
        again = make_manager(directory, objects, clock)
        again.load()
        self.assertEqual(again.cached("2"), manager.cached("2"))
        self.assertEqual(again.cached("2").popularity, 2)
        self.assertEqual(again.cached("1").ipfs_hash, content_hash(b"one"))
        self.assertEqual(again.storage_used, 7)


class CleanupTests(SynchronousTestCase):
    def test_drops_unsupported_and_wrong_sized_objects_but_not_under_readers(self) -> None:
        clock = Clock()
        directory = self.mktemp()
        os.makedirs(directory)
        objects = {"1": b"one", "2": b"two", "3": b"three", "4": b"four"}
        manager = make_manager(directory, objects, clock)
        for object_id, data in objects.items():
            manager.reserve(len(data))
            manager.start_download(obj(object_id, data))
        release = manager.hold("4")
        # 2: the network now says another size; 3 and 4: no longer supported.
        dropped = manager.cleanup({"1": 3, "2": 999})
        self.assertEqual(dropped, 2)
        self.assertIsNotNone(manager.cached("1"))
        self.assertIsNone(manager.cached("2"))
        self.assertIsNone(manager.cached("3"))
        self.assertFalse(manager.store.path_of("3").exists())
        self.assertIsNotNone(manager.cached("4"), "an object being read stays until the next round")
        release()
        self.assertEqual(manager.cleanup({"1": 3}), 1)
        self.assertEqual(manager.storage_used, 3)
