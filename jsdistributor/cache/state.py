"""Saving and loading the cache state; migrating the original node's state.

The state file, ``<cacheState>/jsdistributor-cache.json``, is compact JSON::

    {"version": 1, "entries": [[id, size, popularity, lastAccess, mime], ...]}

(``lastAccess`` in seconds, ``mime`` a string or null), written atomically:
a temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory. A crash at any point leaves the old file or the new one, whole.

``load_state`` raises ``StateCorrupt`` (and nothing else) for anything it
cannot trust; the caller logs it and rebuilds the state from the disk.

The original node (Argus) kept ``<cacheState>/cache.json``; ``load_argus_cache``
reads it so a node switched over keeps its cache.

``reconcile`` is pure: given the saved entries and the files on disk it
decides what to keep, adopt, and drop; the caller applies the decisions.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn

from attrs import field, frozen
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from jsdistributor.cache.eviction import CacheEntry, gc_paused
from jsdistributor.cache.store import fsync_directory
from jsdistributor.model import is_valid_object_id

_new = tuple.__new__

log = Logger()

STATE_FILE_NAME = "jsdistributor-cache.json"
ARGUS_STATE_FILE_NAME = "cache.json"
STATE_VERSION = 1

#: Entries serialised per ``json.dumps`` call when saving.
_BATCH = 10_000

#: What a saved content type may look like (printable ASCII, no controls:
#: it ends up in a ``Content-Type`` header).
_MIME = re.compile(r"[!-~][ -~]{0,254}")

PathLike = FilePath | Path | str


class StateCorrupt(Exception):
    """The state file cannot be trusted; the message says why."""


def _path(path: PathLike) -> str:
    if isinstance(path, FilePath):
        return str(path.path)
    return os.fspath(path)


def state_file(cache_state_dir: PathLike) -> FilePath:
    """Where the state lives in the ``directories.cacheState`` directory."""
    return FilePath(_path(cache_state_dir)).child(STATE_FILE_NAME)


def is_valid_mime_type(value: object) -> bool:
    return isinstance(value, str) and _MIME.fullmatch(value) is not None


# -- saving ------------------------------------------------------------------


def save_state(path: PathLike, entries: Iterable[CacheEntry]) -> None:
    """Write ``entries`` to ``path`` atomically (creating its directory).

    ``entries`` is consumed while writing: pass a list if it comes from a
    policy that may change meanwhile (another thread).
    """
    target = _path(path)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    temp = "%s.%s.tmp" % (target, secrets.token_hex(8))
    # CacheEntry is a tuple: json encodes it as [id, size, popularity, lastAccess, mime].
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    rows = iter(entries)
    try:
        with gc_paused(), open(temp, "x", encoding="utf-8") as f:
            f.write('{"version":%d,"entries":[' % (STATE_VERSION,))
            separator = "\n"
            while True:
                batch = list(islice(rows, _BATCH))
                if not batch:
                    break
                f.write(separator + dumps(batch)[1:-1])
                separator = ",\n"
            f.write("\n]}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def remove_state_temporaries(path: PathLike) -> int:
    """Delete temporaries a crashed ``save_state(path, ...)`` left behind
    (call at start-up, not while saving); returns how many."""
    target = _path(path)
    directory, name = os.path.split(os.path.abspath(target))
    prefix = name + "."
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for candidate in names:
        if candidate.startswith(prefix) and candidate.endswith(".tmp"):
            try:
                os.unlink(os.path.join(directory, candidate))
            except FileNotFoundError:
                continue
            removed += 1
    return removed


# -- loading -----------------------------------------------------------------


def _reject_constant(name: str) -> NoReturn:
    raise ValueError("%s is not a number" % (name,))


_MISSING = object()


def _read_json(path: str) -> Any:
    """The decoded document, ``_MISSING`` if there is no file; StateCorrupt
    if it can't be read or decoded."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return _MISSING
    except OSError as e:
        raise StateCorrupt("cannot read %s: %s" % (path, e.strerror or e)) from e
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError, TypeError) as e:  # JSONDecodeError, bad UTF-8, too deep
        raise StateCorrupt("%s is not valid JSON: %s" % (path, e)) from e


#: A base58btc content hash (the ipfsHash of an object).
_HASH = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,100}")

#: Bounds of the numbers a state may hold (sizes, popularity, times).
_MAX_INT = 2**63 - 1
_MAX_TIME = 1e15


def _is_int(value: object, minimum: int) -> bool:
    return type(value) is int and minimum <= value <= _MAX_INT


def _is_time(value: object) -> bool:
    """A finite number of seconds or milliseconds (an int of 400 digits
    would overflow ``float``)."""
    if type(value) is int:
        return -_MAX_TIME <= value <= _MAX_TIME
    return type(value) is float and -_MAX_TIME <= value <= _MAX_TIME  # also rejects NaN


def load_state(path: PathLike) -> list[CacheEntry] | None:
    """The saved entries (in saved order), None if there is no state file.

    Raises ``StateCorrupt`` (only) if the file is unreadable, not JSON, of
    another version, or has any malformed or duplicate entry.
    """
    filename = _path(path)
    with gc_paused():
        return _load_state(filename)


def _load_state(filename: str) -> list[CacheEntry] | None:
    document = _read_json(filename)
    if document is _MISSING:
        return None
    if not isinstance(document, dict):
        raise StateCorrupt("%s: not a JSON object" % (filename,))
    version = document.get("version")
    if type(version) is not int or version != STATE_VERSION:
        raise StateCorrupt("%s: unknown version %r" % (filename, version))
    rows = document.get("entries")
    if not isinstance(rows, list):
        raise StateCorrupt("%s: 'entries' is not a list" % (filename,))
    entries: list[CacheEntry] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        if type(row) is not list or len(row) not in (5, 6):
            raise StateCorrupt("%s: entry %d is not a 5- or 6-item list" % (filename, index))
        object_id, size, popularity, last_access, mime_type = row[:5]
        ipfs_hash = row[5] if len(row) == 6 else None
        if ipfs_hash is not None and (type(ipfs_hash) is not str or _HASH.fullmatch(ipfs_hash) is None):
            raise StateCorrupt("%s: entry %d: invalid content hash %r" % (filename, index, ipfs_hash))
        if type(object_id) is not str or not is_valid_object_id(object_id):
            raise StateCorrupt("%s: entry %d: invalid object id %r" % (filename, index, object_id))
        if object_id in seen:
            raise StateCorrupt("%s: entry %d: object %s listed twice" % (filename, index, object_id))
        if not _is_int(size, 0):
            raise StateCorrupt("%s: entry %d: invalid size %r" % (filename, index, size))
        if not _is_int(popularity, 1):
            raise StateCorrupt("%s: entry %d: invalid popularity %r" % (filename, index, popularity))
        if not _is_time(last_access):
            raise StateCorrupt("%s: entry %d: invalid last access %r" % (filename, index, last_access))
        if mime_type is not None and not is_valid_mime_type(mime_type):
            raise StateCorrupt("%s: entry %d: invalid mime type %r" % (filename, index, mime_type))
        seen.add(object_id)
        entries.append(_new(CacheEntry, (object_id, size, popularity, float(last_access), mime_type, ipfs_hash)))
    return entries


# -- the original node's state -----------------------------------------------


def _whole_number(value: object, minimum: int) -> int | None:
    """An integer (JSON numbers from JavaScript may be written ``3.0``) in
    ``minimum.._MAX_INT``."""
    if type(value) is float and value.is_integer() and abs(value) <= _MAX_INT:
        value = int(value)
    return value if _is_int(value, minimum) else None  # type: ignore[return-value]


def load_argus_cache(cache_state_dir: PathLike) -> list[CacheEntry] | None:
    """Entries from the original node's ``<cacheState>/cache.json``, None if absent.

    The file: ``{"lruCacheGroups": [24 lists of [id, {"popularity",
    "lastAccessTime" (ms), "sizeKB"}]], "mimeTypeByObjectId": [[id, mime],
    ...]}``. Sizes become ``sizeKB * 1024`` (approximate: correct them from
    the files, see ``reconcile``). Entries come out group by group in each
    group's LRU order, which is how ``LruSpPolicy`` wants them back.

    Raises ``StateCorrupt`` if the file is not JSON or not that shape;
    single malformed entries are skipped (and counted in a warning), a
    duplicate id keeps its first occurrence, as the original does.
    """
    filename = os.path.join(_path(cache_state_dir), ARGUS_STATE_FILE_NAME)
    document = _read_json(filename)
    if document is _MISSING:
        return None
    if not isinstance(document, dict):
        raise StateCorrupt("%s: not a JSON object" % (filename,))
    groups = document.get("lruCacheGroups") or []
    mime_pairs = document.get("mimeTypeByObjectId") or []
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise StateCorrupt("%s: 'lruCacheGroups' is not a list of lists" % (filename,))
    if isinstance(mime_pairs, dict):
        mime_pairs = list(mime_pairs.items())
    if not isinstance(mime_pairs, list):
        raise StateCorrupt("%s: 'mimeTypeByObjectId' is not a list" % (filename,))

    mime_types: dict[str, str] = {}
    for pair in mime_pairs:
        if isinstance(pair, list) and len(pair) == 2 and is_valid_mime_type(pair[1]):
            if isinstance(pair[0], str):
                mime_types.setdefault(pair[0], pair[1])

    entries: list[CacheEntry] = []
    seen: set[str] = set()
    skipped = duplicates = 0
    for group in groups:
        for item in group:
            entry = _argus_entry(item, mime_types)
            if entry is None:
                skipped += 1
            elif entry.object_id in seen:
                duplicates += 1
            else:
                seen.add(entry.object_id)
                entries.append(entry)
    if skipped or duplicates:
        log.warn(
            "{file}: skipped {skipped} malformed and {duplicates} duplicate cache entries",
            file=filename,
            skipped=skipped,
            duplicates=duplicates,
        )
    return entries


def _argus_entry(item: object, mime_types: Mapping[str, str]) -> CacheEntry | None:
    if not isinstance(item, list) or len(item) != 2:
        return None
    object_id, data = item
    if not isinstance(object_id, str) or not is_valid_object_id(object_id) or not isinstance(data, dict):
        return None
    size_kb = _whole_number(data.get("sizeKB"), 0)
    popularity = _whole_number(data.get("popularity"), 1)
    last_access_ms = data.get("lastAccessTime")
    if size_kb is None or size_kb > _MAX_INT // 1024 or popularity is None or not _is_time(last_access_ms):
        return None
    return CacheEntry(
        object_id,
        size_kb * 1024,
        popularity,
        last_access_ms / 1000,
        mime_types.get(object_id),
    )


# -- reconciling state and disk ------------------------------------------------

#: Reasons in ``ReconcileResult.drop_files``.
NOT_SUPPORTED = "not supported"
SIZE_MISMATCH = "size mismatch"
NO_ENTRY = "no cache entry"


@frozen
class ReconcileResult:
    """What to do so that the cache state and the disk agree."""

    #: Entries whose file is there, in the given order, with ``size`` set to
    #: the file's size.
    keep: list[CacheEntry] = field(factory=list)
    #: New entries (popularity 1, last access ``now``) for files no entry knew.
    adopt: list[CacheEntry] = field(factory=list)
    #: Files to delete, id -> reason (``NOT_SUPPORTED``, ``SIZE_MISMATCH``,
    #: ``NO_ENTRY``); an entry for such an id is dropped with its file.
    drop_files: dict[str, str] = field(factory=dict)
    #: Entries whose file is missing: forget them.
    drop_entries: list[str] = field(factory=list)

    @property
    def entries(self) -> list[CacheEntry]:
        """The resulting cache state: ``keep`` then ``adopt``."""
        return self.keep + self.adopt


def reconcile(
    entries: Iterable[CacheEntry],
    files_on_disk: Mapping[str, int],
    supported: set[str] | frozenset[str] | None,
    now: float,
    expected_sizes: Mapping[str, int] | None = None,
    adopt_orphans: bool = True,
) -> ReconcileResult:
    """Decide, for each object id in ``entries`` or ``files_on_disk`` (id ->
    size), what to do. Pure.

    - A file not in ``supported`` (when the supported set is known, i.e. not
      None) is dropped, with its entry.
    - A file whose size differs from ``expected_sizes[id]`` (when known) is
      dropped, with its entry.
    - A file with an entry is kept; the entry's size becomes the file's (the
      original node's state only knows sizes in KB).
    - A file without an entry is adopted: a new entry, popularity 1, last
      access ``now``, mime type unknown. With ``adopt_orphans=False`` it is
      dropped instead (the original node's behaviour; its downloads were
      written in place, so an orphan may be a partial file).
    - An entry without a file is dropped.

    Duplicate ids in ``entries``: the first wins, the others are ignored.
    """
    expected = expected_sizes or {}
    result = ReconcileResult()
    known: set[str] = set()
    for entry in entries:
        object_id = entry.object_id
        if object_id in known:
            continue
        known.add(object_id)
        size = files_on_disk.get(object_id)
        if size is None:
            result.drop_entries.append(object_id)
            continue
        reason = _file_problem(object_id, size, supported, expected)
        if reason is not None:
            result.drop_files[object_id] = reason
        elif entry.size == size:
            result.keep.append(entry)
        else:
            result.keep.append(
                entry._replace(size=size)
            )
    orphans = sorted((i for i in files_on_disk if i not in known), key=lambda i: (len(i), i))
    for object_id in orphans:
        size = files_on_disk[object_id]
        reason = _file_problem(object_id, size, supported, expected)
        if reason is None and not adopt_orphans:
            reason = NO_ENTRY
        if reason is not None:
            result.drop_files[object_id] = reason
        else:
            result.adopt.append(CacheEntry(object_id, size, 1, now, None))
    return result


def _file_problem(
    object_id: str,
    size: int,
    supported: set[str] | frozenset[str] | None,
    expected: Mapping[str, int],
) -> str | None:
    if supported is not None and object_id not in supported:
        return NOT_SUPPORTED
    expected_size = expected.get(object_id)
    if expected_size is not None and expected_size != size:
        return SIZE_MISMATCH
    return None
