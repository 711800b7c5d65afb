"""A whole small network on 127.0.0.1 for tests, the demo and benchmarks:
storage-node simulators serving objects, a static catalog describing them,
and node configs pointing at it.

``write_network`` is synchronous file work (catalog + config); running the
simulators and the node is up to the caller (in-process with
``DistributorNode`` or as a ``twistd`` subprocess).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..cache.hashing import content_hash
from ..metadata.catalog import CatalogBuilder, catalog_entry_for_file, write_catalog

BAG = "dynamic:channel:1"
OTHER_BAG = "dynamic:channel:2"
BUCKET = "0:0"
OTHER_BUCKET = "0:1"
SECRET = "a-test-secret-of-32-characters!!"


def free_port() -> int:
    """An ephemeral port that was free a moment ago (for subprocess nodes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_catalog(
    storage_urls: Iterable[str],
    objects: Mapping[str, bytes] | None = None,
    files: Mapping[str, Path] | None = None,
    unsupported: Mapping[str, bytes] | None = None,
    not_accepted: Mapping[str, bytes] | None = None,
    mime_types: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A catalog: every storage node holds every object; ``objects`` and
    ``files`` are in bucket 0:0 (worker 0), ``unsupported`` in 0:1 (worker 1)."""
    builder = CatalogBuilder()
    storage_ids = []
    for i, url in enumerate(storage_urls):
        builder.add_storage_node(str(i), url)
        storage_ids.append(str(i))
    builder.add_distribution_bucket(BUCKET, worker_id=0)
    builder.add_distribution_bucket(OTHER_BUCKET, worker_id=1)
    builder.add_bag(BAG, storage_ids, [BUCKET])
    builder.add_bag(OTHER_BAG, storage_ids, [OTHER_BUCKET])
    mime_types = mime_types or {}

    def entry(object_id: str, data: bytes, accepted: bool = True) -> dict[str, Any]:
        e: dict[str, Any] = {"id": object_id, "size": len(data), "ipfsHash": content_hash(data), "accepted": accepted}
        if object_id in mime_types:
            e["mimeType"] = mime_types[object_id]
        return e

    for object_id, data in (objects or {}).items():
        builder.add_object(BAG, entry(object_id, data))
    for object_id, data in (not_accepted or {}).items():
        builder.add_object(BAG, entry(object_id, data, accepted=False))
    for object_id, path in (files or {}).items():
        builder.add_object(BAG, catalog_entry_for_file(path, object_id, mime_type=mime_types.get(object_id)))
    for object_id, data in (unsupported or {}).items():
        builder.add_object(OTHER_BAG, entry(object_id, data))
    return builder.build()


def node_config_document(
    directory: Path,
    catalog: str,
    public_port: int = 0,
    operator_port: int = 0,
    storage: str = "1G",
    **overrides: Any,
) -> dict[str, Any]:
    """An Argus-format config document for a node on 127.0.0.1."""
    doc: dict[str, Any] = {
        "id": "test-node",
        "endpoints": {"catalog": catalog},
        "directories": {"assets": str(directory / "assets"), "cacheState": str(directory / "state")},
        "logs": {"console": {"level": "info"}},
        "limits": {
            "storage": storage,
            "maxConcurrentStorageNodeDownloads": 10,
            "maxConcurrentOutboundConnections": 50,
            "outboundRequestsTimeoutMs": 2000,
            "pendingDownloadTimeoutSec": 60,
        },
        "intervals": {"saveCacheState": 60, "checkStorageNodeResponseTimes": 60, "cacheCleanup": 600},
        "publicApi": {"port": public_port, "interface": "127.0.0.1"},
        "operatorApi": {"port": operator_port, "hmacSecret": SECRET, "interface": "127.0.0.1"},
        "workerId": 0,
    }
    for dotted, value in overrides.items():
        target = doc
        *parents, last = dotted.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = value
    return doc


def write_network(directory: Path, catalog: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
    """Write ``catalog.yml`` and ``config.json`` into ``directory``; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    write_catalog(directory / "catalog.yml", catalog)
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path
