"""A content store that fails on purpose: a full or broken disk, on demand.

``FaultyStore(ContentStore(tmpdir), fail_write_after_bytes=1000)`` behaves
like the wrapped store until 1000 bytes in total have been written through
it, then every write raises ``OSError(ENOSPC)`` (as a full disk does: the
bytes that still fit are written first). The knobs are plain attributes, so
a test can "free space" mid-way (``store.fail_write_after_bytes = None``).
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

from zope.interface import implementer

from jsdistributor.interfaces import IContentStore, ITempObject


def _os_error(code: int, what: str) -> OSError:
    return OSError(code, "%s (injected by FaultyStore)" % (os.strerror(code),), what)


@implementer(ITempObject)
class FaultyTempObject:
    def __init__(self, store: FaultyStore, inner: Any) -> None:
        self._store = store
        self.inner = inner
        self.object_id: str | None = getattr(inner, "object_id", None)

    @property
    def path(self) -> Any:
        return self.inner.path

    @property
    def bytes_written(self) -> int:
        return int(self.inner.bytes_written)

    def write(self, data: bytes) -> None:
        store = self._store
        limit = store.fail_write_after_bytes
        if limit is not None and store.bytes_written + len(data) > limit:
            room = max(0, limit - store.bytes_written)
            if room:
                self.inner.write(data[:room])
                store.bytes_written += room
            store.failures += 1
            raise _os_error(store.errno, "write")
        self.inner.write(data)
        store.bytes_written += len(data)

    def commit(self) -> None:
        if self._store.fail_commit:
            self._store.failures += 1
            self.inner.discard()  # as a real failed commit does
            raise _os_error(self._store.errno, "commit")
        self.inner.commit()

    def discard(self) -> None:
        self.inner.discard()


@implementer(IContentStore)
class FaultyStore:
    """Wraps an ``IContentStore``; ``open_temp`` returns temporaries whose
    ``write`` fails once ``fail_write_after_bytes`` bytes (counted over all
    temporaries of this store) have been written, and whose ``commit`` fails
    while ``fail_commit`` is set. Failures raise ``OSError(errno)``."""

    def __init__(
        self,
        inner: Any,
        fail_write_after_bytes: int | None = None,
        errno: int = _errno.ENOSPC,
        fail_commit: bool = False,
    ) -> None:
        self.inner = inner
        self.fail_write_after_bytes = fail_write_after_bytes
        self.errno = errno
        self.fail_commit = fail_commit
        #: Bytes written through this store's temporaries.
        self.bytes_written = 0
        #: How many failures were injected.
        self.failures = 0

    def path_of(self, object_id: str) -> Any:
        return self.inner.path_of(object_id)

    def file_name(self, object_id: str) -> str:
        return str(self.inner.file_name(object_id))

    def size_of(self, object_id: str) -> int | None:
        result: int | None = self.inner.size_of(object_id)
        return result

    def open_temp(self, object_id: str) -> FaultyTempObject:
        return FaultyTempObject(self, self.inner.open_temp(object_id))

    def remove(self, object_id: str) -> Any:
        return self.inner.remove(object_id)

    def list_objects(self) -> dict[str, int]:
        result: dict[str, int] = self.inner.list_objects()
        return result

    def remove_temporaries(self) -> int:
        return int(self.inner.remove_temporaries())

    def __getattr__(self, name: str) -> Any:
        # Anything else (check_writable, assets_dir...) is the inner store's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
