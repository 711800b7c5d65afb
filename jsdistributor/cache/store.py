"""The disk store: one file per complete object under the assets directory.

Layout (compatible with the original node, which keeps ``<assets>/<id>``)::

    <assets>/<id>                          a complete object
    <assets>/.tmp/<id>.<random>.part       an object being downloaded

Temporaries live in their own directory on the same filesystem, so a commit
is one atomic ``os.replace`` and nothing half-written ever has an object's
name. Object ids are validated (``is_valid_object_id``: 1-20 ASCII digits)
before any path is built, so no id can name anything outside the assets
directory.

Writes are plain blocking file writes: they go to the page cache and are
fast; only ``commit`` (``fsync``) waits for the disk.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from jsdistributor.config import ConfigError
from jsdistributor.interfaces import IContentStore, ITempObject
from jsdistributor.model import is_valid_object_id

log = Logger()

#: Where temporaries live, inside the assets directory.
TEMP_DIR_NAME = ".tmp"
TEMP_SUFFIX = ".part"

#: How many junk names ``list_objects`` quotes in its warning.
_JUNK_EXAMPLES = 10


class StoreNotWritable(ConfigError):
    """The assets directory cannot be created or written (start-up check)."""


def _as_filepath(path: FilePath | Path | str) -> FilePath:
    if isinstance(path, FilePath):
        return path
    return FilePath(os.fspath(path))


def fsync_directory(path: str) -> None:
    """Make a rename in ``path`` durable (no-op where directories can't be opened)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def size_mismatch(f: BinaryIO, expected: int) -> int | None:
    """None when the open file ``f`` has ``expected`` bytes; otherwise its
    size (-1 if it cannot be told), and ``f`` is closed."""
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError:
        size = -1
    if size == expected:
        return None
    f.close()
    return size


@implementer(ITempObject)
class TempObject:
    """An object being written: ``write`` appends, ``commit`` publishes it
    under its id, ``discard`` throws it away. Not visible in
    ``list_objects``/``size_of`` until committed."""

    def __init__(self, store: ContentStore, object_id: str, path: FilePath, final: FilePath, file: BinaryIO) -> None:
        self.object_id = object_id
        #: FilePath of the temporary file.
        self.path = path
        self._final = final
        self._store = store
        self._file: BinaryIO | None = file
        self._state = "open"  # -> "committed" | "discarded"
        #: Bytes accepted by ``write`` so far.
        self.bytes_written = 0

    @property
    def state(self) -> str:
        """``"open"``, ``"committed"`` or ``"discarded"``."""
        return self._state

    def write(self, data: bytes) -> None:
        """Append ``data``; may raise ``OSError`` (ENOSPC, EIO...). Raises
        ``ValueError`` once committed or discarded."""
        if self._file is None:
            raise ValueError("write to %s temporary of object %s" % (self._state, self.object_id))
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written:]
        self.bytes_written += len(data)

    def commit(self) -> None:
        """Flush, fsync, rename into place atomically, fsync the directory.

        On failure the temporary is discarded and the error re-raised; the
        complete object is then untouched (absent, or the previous file).
        """
        file = self._file
        if file is None:
            raise ValueError("commit of %s temporary of object %s" % (self._state, self.object_id))
        try:
            file.flush()
            os.fsync(file.fileno())
            self._file = None
            file.close()
            os.replace(self.path.path, self._final.path)
        except BaseException:
            self._file = file
            self.discard()
            raise
        self._state = "committed"
        self._store._forget_temp(self.path.path)
        try:
            fsync_directory(self._final.dirname())
        except OSError as e:
            # The object is in place and readable; only its durability across
            # a power cut is in doubt (a restart re-checks the disk anyway).
            log.warn(
                "could not fsync {directory} after committing {objectId}: {error}",
                directory=self._final.dirname(),
                objectId=self.object_id,
                error=str(e),
            )

    def discard(self) -> None:
        """Close and delete the temporary (idempotent; no-op after commit)."""
        if self._state != "open":
            return
        self._state = "discarded"
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # e.g. ENOSPC flushing the buffer: the file goes anyway
        try:
            os.unlink(self.path.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("could not delete temporary {path}: {error}", path=self.path.path, error=str(e))
        self._store._forget_temp(self.path.path)

    def __repr__(self) -> str:
        return "<TempObject %s %s %d bytes>" % (self.object_id, self._state, self.bytes_written)


@implementer(IContentStore)
class ContentStore:
    """Complete objects at ``<assets>/<id>``, temporaries under ``<assets>/.tmp``."""

    def __init__(self, assets_dir: FilePath | Path | str) -> None:
        self.assets_dir: FilePath = _as_filepath(assets_dir)
        self.temp_dir: FilePath = self.assets_dir.child(TEMP_DIR_NAME)
        self._assets_path: str = self.assets_dir.path
        # Paths of temporaries this store is writing (remove_temporaries spares them).
        self._open_temps: set[str] = set()

    def _object_path(self, object_id: str) -> FilePath:
        """The object's path; ValueError for anything but 1-20 ASCII digits."""
        if not isinstance(object_id, str) or not is_valid_object_id(object_id):
            raise ValueError("invalid object id %r" % (object_id,))
        path = self.assets_dir.child(object_id)
        if path.parent() != self.assets_dir:  # belt and braces: a direct child
            raise ValueError("object id %r escapes the assets directory" % (object_id,))
        return path

    def path_of(self, object_id: str) -> FilePath:
        """FilePath of the complete object (may not exist)."""
        return self._object_path(object_id)

    def file_name(self, object_id: str) -> str:
        """``path_of(object_id).path`` without building FilePaths (the hit
        path asks for it on every request): a valid id is 1-20 ASCII
        digits, always a direct child name. ValueError for anything else."""
        if not isinstance(object_id, str) or not is_valid_object_id(object_id):
            raise ValueError("invalid object id %r" % (object_id,))
        return os.path.join(self._assets_path, object_id)

    def size_of(self, object_id: str) -> int | None:
        """Size of the complete object, None if absent (or not a regular file)."""
        path = self._object_path(object_id)
        try:
            st = os.lstat(path.path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return st.st_size

    def open_temp(self, object_id: str) -> TempObject:
        """A new temporary for ``object_id`` (several may coexist)."""
        final = self._object_path(object_id)
        os.makedirs(self.temp_dir.path, exist_ok=True)
        name = "%s.%s%s" % (object_id, secrets.token_hex(8), TEMP_SUFFIX)
        path = self.temp_dir.child(name)
        # Unbuffered: every write reaches the OS at once, so readers following
        # a pending download (through their own file handles) see the bytes.
        file = open(path.path, "xb", buffering=0)
        self._open_temps.add(path.path)
        return TempObject(self, object_id, path, final, file)

    def _forget_temp(self, path: str) -> None:
        self._open_temps.discard(path)

    def remove(self, object_id: str) -> bool:
        """Delete the complete object if present; True if it was."""
        path = self._object_path(object_id)
        try:
            os.unlink(path.path)
        except FileNotFoundError:
            return False
        return True

    def list_objects(self) -> dict[str, int]:
        """id -> size of every complete object on disk. Other names (junk,
        symlinks, directories) are left alone and logged."""
        objects: dict[str, int] = {}
        junk: list[str] = []
        try:
            entries = os.scandir(self.assets_dir.path)
        except FileNotFoundError:
            return objects
        with entries:
            for entry in entries:
                name = entry.name
                if name == TEMP_DIR_NAME:
                    continue
                if is_valid_object_id(name) and entry.is_file(follow_symlinks=False):
                    try:
                        objects[name] = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed meanwhile
                        pass
                else:
                    junk.append(name)
        if junk:
            log.warn(
                "ignoring {count} entries of {directory} that are not objects, e.g. {examples}",
                count=len(junk),
                directory=self.assets_dir.path,
                examples=sorted(junk)[:_JUNK_EXAMPLES],
            )
        return objects

    def remove_temporaries(self) -> int:
        """Delete leftover temporaries (those this store is not writing);
        returns how many were deleted."""
        removed = 0
        try:
            entries = os.scandir(self.temp_dir.path)
        except FileNotFoundError:
            return 0
        with entries:
            for entry in entries:
                if entry.path in self._open_temps:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    log.warn("leaving directory {path} alone", path=entry.path)
                    continue
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed += 1
        return removed

    def check_writable(self) -> None:
        """Create the directories and write a probe file; raise
        ``StoreNotWritable`` (a ``ConfigError``) saying why if that fails."""
        probe = self.temp_dir.child(".write-probe.%s" % (secrets.token_hex(8),))
        try:
            os.makedirs(self.assets_dir.path, exist_ok=True)
            os.makedirs(self.temp_dir.path, exist_ok=True)
            with open(probe.path, "xb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())
            os.unlink(probe.path)
        except OSError as e:
            reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
            raise StoreNotWritable(
                [
                    "directories.assets: cannot write to %s (%s: %s)"
                    % (self.assets_dir.path, reason, e.filename or self.assets_dir.path)
                ]
            ) from e
