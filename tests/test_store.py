"""The disk content store (jsdistributor.cache.store) and FaultyStore."""

from __future__ import annotations

import builtins
import errno
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hypothesis import given, settings, strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from jsdistributor.cache.store import TEMP_DIR_NAME, ContentStore, StoreNotWritable
from jsdistributor.config import ConfigError
from jsdistributor.interfaces import IContentStore, ITempObject
from jsdistributor.model import is_valid_object_id
from jsdistributor.testing.faulty_store import FaultyStore

HOSTILE_IDS = [
    "..",
    ".",
    "../x",
    "../1",
    "/etc/passwd",
    "1/2",
    "%2e%2e",
    "\x00",
    "1\x00",
    "",
    "1" * 21,
    "１２",  # full-width digits
    "٣",  # Arabic-Indic digit three
    "-1",
    "+1",
    " 1",
    "1\n",
    "1.part",
    TEMP_DIR_NAME,
]

# Every os-level entry point a store could touch the filesystem through.
_FS_FUNCTIONS = [
    (os, "stat"),
    (os, "lstat"),
    (os, "open"),
    (os, "unlink"),
    (os, "remove"),
    (os, "replace"),
    (os, "rename"),
    (os, "mkdir"),
    (os, "makedirs"),
    (os, "scandir"),
    (os, "listdir"),
    (builtins, "open"),
    (io, "open"),
]


@contextmanager
def no_filesystem_access(test: SynchronousTestCase) -> Iterator[list[str]]:
    """Make every filesystem function record its call and fail."""
    calls: list[str] = []
    saved = [(module, name, getattr(module, name)) for module, name in _FS_FUNCTIONS]

    def forbidden(name: str) -> Any:
        def call(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise AssertionError("filesystem accessed: %s%r" % (name, args))

        return call

    for module, name, _ in saved:
        setattr(module, name, forbidden(name))
    try:
        yield calls
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


class StoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        self.assets = self.root.child("assets")
        self.store = ContentStore(self.assets)
        self.store.check_writable()

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IContentStore, self.store))
        temp = self.store.open_temp("1")
        self.assertTrue(verifyObject(ITempObject, temp))
        temp.discard()

    def test_accepts_path_and_str(self) -> None:
        self.assertEqual(ContentStore(Path(self.assets.path)).path_of("5"), self.assets.child("5"))
        self.assertEqual(ContentStore(self.assets.path).path_of("5"), self.assets.child("5"))

    def test_round_trip(self) -> None:
        temp = self.store.open_temp("42")
        temp.write(b"hello ")
        temp.write(b"world")
        self.assertEqual(temp.bytes_written, 11)
        temp.commit()
        self.assertEqual(temp.state, "committed")
        self.assertEqual(self.store.path_of("42"), self.assets.child("42"))
        self.assertEqual(self.store.path_of("42").getContent(), b"hello world")
        self.assertEqual(self.store.size_of("42"), 11)
        self.assertEqual(self.store.list_objects(), {"42": 11})
        self.assertEqual(self.assets.child(TEMP_DIR_NAME).listdir(), [])

    def test_commit_replaces_existing(self) -> None:
        for content in (b"old", b"newer"):
            temp = self.store.open_temp("7")
            temp.write(content)
            temp.commit()
        self.assertEqual(self.store.path_of("7").getContent(), b"newer")

    def test_temp_invisible_until_commit(self) -> None:
        temp = self.store.open_temp("3")
        temp.write(b"partial")
        self.assertIsNone(self.store.size_of("3"))
        self.assertEqual(self.store.list_objects(), {})
        self.assertFalse(os.path.exists(self.store.path_of("3").path))
        self.assertTrue(os.path.exists(temp.path.path))
        self.assertEqual(temp.path.parent(), self.assets.child(TEMP_DIR_NAME))
        temp.commit()
        self.assertEqual(self.store.list_objects(), {"3": 7})
        self.assertFalse(os.path.exists(temp.path.path))

    def test_discard_removes_and_is_idempotent(self) -> None:
        temp = self.store.open_temp("3")
        temp.write(b"partial")
        temp.discard()
        temp.discard()
        self.assertFalse(os.path.exists(temp.path.path))
        self.assertEqual(temp.state, "discarded")
        self.assertRaises(ValueError, temp.write, b"more")
        self.assertRaises(ValueError, temp.commit)
        self.assertEqual(self.store.list_objects(), {})

    def test_discard_after_commit_keeps_object(self) -> None:
        temp = self.store.open_temp("3")
        temp.write(b"x")
        temp.commit()
        temp.discard()
        self.assertEqual(self.store.size_of("3"), 1)
        self.assertRaises(ValueError, temp.write, b"more")
        self.assertRaises(ValueError, temp.commit)

    def test_failed_commit_discards(self) -> None:
        temp = self.store.open_temp("3")
        temp.write(b"data")

        def broken_replace(src: str, dst: str) -> None:
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, "replace", broken_replace)
        exc = self.assertRaises(OSError, temp.commit)
        self.assertEqual(exc.errno, errno.EIO)
        self.assertEqual(temp.state, "discarded")
        self.assertFalse(os.path.exists(temp.path.path))
        self.assertIsNone(self.store.size_of("3"))

    def test_concurrent_temporaries_for_one_id(self) -> None:
        first = self.store.open_temp("9")
        second = self.store.open_temp("9")
        self.assertNotEqual(first.path, second.path)
        first.write(b"a")
        second.write(b"bb")
        first.discard()
        second.commit()
        self.assertEqual(self.store.size_of("9"), 2)

    def test_remove(self) -> None:
        temp = self.store.open_temp("11")
        temp.write(b"abc")
        temp.commit()
        self.assertTrue(self.store.remove("11"))
        self.assertFalse(self.store.remove("11"))
        self.assertIsNone(self.store.size_of("11"))

    def test_hostile_ids_rejected(self) -> None:
        for object_id in HOSTILE_IDS:
            with no_filesystem_access(self) as calls:
                for method in (self.store.path_of, self.store.file_name, self.store.size_of, self.store.open_temp, self.store.remove):
                    self.assertRaises(ValueError, method, object_id)
            self.assertEqual(calls, [], object_id)
        self.assertEqual(self.assets.listdir(), [TEMP_DIR_NAME])
        self.assertEqual(sorted(self.root.listdir()), ["assets"])

    def test_non_string_id_rejected(self) -> None:
        self.assertRaises(ValueError, self.store.path_of, 12)  # type: ignore[arg-type]
        self.assertRaises(ValueError, self.store.path_of, b"12")  # type: ignore[arg-type]
        self.assertRaises(ValueError, self.store.file_name, 12)  # type: ignore[arg-type]

    @given(st.text())
    @settings(deadline=None)
    def test_arbitrary_text(self, object_id: str) -> None:
        if is_valid_object_id(object_id):
            path = self.store.path_of(object_id)
            self.assertEqual(path.parent(), self.assets)
            self.assertEqual(path.basename(), object_id)
            self.assertEqual(self.store.file_name(object_id), path.path, "file_name is path_of's path")
            return
        with no_filesystem_access(self) as calls:
            for method in (self.store.path_of, self.store.file_name, self.store.size_of, self.store.open_temp, self.store.remove):
                self.assertRaises(ValueError, method, object_id)
        self.assertEqual(calls, [])

    def test_size_of_ignores_directories_and_symlinks(self) -> None:
        self.assets.child("5").makedirs()
        target = self.root.child("outside")
        target.setContent(b"secret")
        os.symlink(target.path, self.assets.child("6").path)
        self.assertIsNone(self.store.size_of("5"))
        self.assertIsNone(self.store.size_of("6"))
        self.assertIsNone(self.store.size_of("8"))

    def test_list_objects_ignores_junk(self) -> None:
        temp = self.store.open_temp("1")
        temp.write(b"one")
        temp.commit()
        self.assets.child("junk.txt").setContent(b"x")
        self.assets.child("1" * 21).setContent(b"x")
        self.assets.child("12.part").setContent(b"x")
        self.assets.child("77").makedirs()
        os.symlink(self.root.path, self.assets.child("88").path)
        self.store.open_temp("2").write(b"in progress")
        self.assertEqual(self.store.list_objects(), {"1": 3})

    def test_list_objects_missing_dir(self) -> None:
        self.assertEqual(ContentStore(self.root.child("nope")).list_objects(), {})

    def test_remove_temporaries(self) -> None:
        temp_dir = self.assets.child(TEMP_DIR_NAME)
        temp_dir.child("5.deadbeef.part").setContent(b"left over")
        temp_dir.child("garbage").setContent(b"x")
        temp_dir.child("subdir").makedirs()
        live = self.store.open_temp("6")
        live.write(b"being written")
        self.assertEqual(self.store.remove_temporaries(), 2)
        self.assertEqual(sorted(temp_dir.listdir()), sorted([live.path.basename(), "subdir"]))
        live.commit()
        self.assertEqual(self.store.size_of("6"), 13)
        # A fresh store (after a crash) removes leftovers of a dead one.
        self.store.open_temp("7").write(b"abandoned")
        self.assertEqual(ContentStore(self.assets).remove_temporaries(), 1)

    def test_remove_temporaries_missing_dir(self) -> None:
        self.assertEqual(ContentStore(self.root.child("nope")).remove_temporaries(), 0)

    def test_check_writable_creates_dirs(self) -> None:
        store = ContentStore(self.root.child("a").child("b"))
        store.check_writable()
        self.assertTrue(self.root.child("a").child("b").child(TEMP_DIR_NAME).isdir())
        self.assertEqual(self.root.child("a").child("b").child(TEMP_DIR_NAME).listdir(), [])

    def test_check_writable_fails_clearly(self) -> None:
        blocker = self.root.child("file")
        blocker.setContent(b"not a directory")
        store = ContentStore(blocker.child("assets"))
        exc = self.assertRaises(StoreNotWritable, store.check_writable)
        self.assertIsInstance(exc, ConfigError)
        self.assertEqual(len(exc.problems), 1)
        self.assertIn("directories.assets", exc.problems[0])
        self.assertIn(blocker.child("assets").path, exc.problems[0])


class FaultyStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.assets = FilePath(self.mktemp())
        self.inner = ContentStore(self.assets)
        self.inner.check_writable()

    def test_interfaces(self) -> None:
        store = FaultyStore(self.inner)
        self.assertTrue(verifyObject(IContentStore, store))
        temp = store.open_temp("1")
        self.assertTrue(verifyObject(ITempObject, temp))
        temp.discard()

    def test_passes_through(self) -> None:
        store = FaultyStore(self.inner)
        temp = store.open_temp("1")
        temp.write(b"abc")
        temp.commit()
        self.assertEqual(store.list_objects(), {"1": 3})
        self.assertEqual(store.size_of("1"), 3)
        self.assertEqual(store.path_of("1"), self.assets.child("1"))
        self.assertEqual(store.assets_dir, self.assets)  # delegated attribute
        self.assertTrue(store.remove("1"))

    def test_enospc_after_bytes(self) -> None:
        store = FaultyStore(self.inner, fail_write_after_bytes=5)
        temp = store.open_temp("1")
        temp.write(b"abc")
        exc = self.assertRaises(OSError, temp.write, b"defg")
        self.assertEqual(exc.errno, errno.ENOSPC)
        self.assertEqual(temp.bytes_written, 5)  # what fitted was written
        self.assertEqual(store.failures, 1)
        # The limit is store-wide: another temporary fails at once.
        other = store.open_temp("2")
        self.assertRaises(OSError, other.write, b"x")
        temp.discard()
        other.discard()
        self.assertEqual(store.list_objects(), {})
        # "Free space": writes work again.
        store.fail_write_after_bytes = None
        temp = store.open_temp("3")
        temp.write(b"fine")
        temp.commit()
        self.assertEqual(store.list_objects(), {"3": 4})

    def test_eio(self) -> None:
        store = FaultyStore(self.inner, fail_write_after_bytes=0, errno=errno.EIO)
        temp = store.open_temp("1")
        exc = self.assertRaises(OSError, temp.write, b"a")
        self.assertEqual(exc.errno, errno.EIO)
        temp.discard()

    def test_fail_commit(self) -> None:
        store = FaultyStore(self.inner, fail_commit=True)
        temp = store.open_temp("1")
        temp.write(b"abc")
        self.assertRaises(OSError, temp.commit)
        self.assertIsNone(store.size_of("1"))
        self.assertEqual(self.assets.child(TEMP_DIR_NAME).listdir(), [])
