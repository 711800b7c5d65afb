"""Content hashes as the network computes them (an object's ``ipfsHash``).

The hash is a blake3 digest (32 bytes) wrapped as a multihash (code
``0x1e``, length ``0x20``) and encoded base58btc *without* a multibase
prefix, e.g. ``b""`` -> ``gW9T5gSXhgQB5LaqmnJrLVVpHawhM7youzHnuY6HyGBDy3``.
Pure: ``hash_file`` is the only function touching the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import base58
from blake3 import blake3
from twisted.python.filepath import FilePath

#: Multihash code of blake3 and the digest length (32 bytes).
BLAKE3_MULTIHASH_PREFIX = bytes([0x1E, 0x20])

#: Default read size of ``hash_file``.
HASH_CHUNK_SIZE = 1024 * 1024


def encode_ipfs_hash(digest: bytes) -> str:
    """Multihash-wrap a 32-byte blake3 digest and encode it base58btc."""
    if len(digest) != 32:
        raise ValueError("a blake3 digest is 32 bytes, got %d" % (len(digest),))
    encoded: bytes = base58.b58encode(BLAKE3_MULTIHASH_PREFIX + digest)
    return encoded.decode("ascii")


def content_hash(data: bytes) -> str:
    """The ``ipfsHash`` of ``data``."""
    return encode_ipfs_hash(blake3(data).digest())


class ContentHasher:
    """Incremental ``content_hash``: feed chunks as they arrive."""

    __slots__ = ("_hasher", "bytes_seen")

    def __init__(self) -> None:
        self._hasher = blake3()
        #: How many bytes were fed so far.
        self.bytes_seen: int = 0

    def update(self, data: bytes) -> None:
        self._hasher.update(data)
        self.bytes_seen += len(data)

    def ipfs_hash(self) -> str:
        """The hash of everything fed so far (more may be fed afterwards)."""
        return encode_ipfs_hash(self._hasher.digest())


def hash_file(path: FilePath | Path | str | os.PathLike[str], chunk: int = HASH_CHUNK_SIZE) -> str:
    """The ``ipfsHash`` of a file's content, read ``chunk`` bytes at a time."""
    filename = path.path if isinstance(path, FilePath) else os.fspath(path)
    hasher = ContentHasher()
    with open(filename, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            hasher.update(block)
    return hasher.ipfs_hash()
