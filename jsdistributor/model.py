"""Plain data shared across the node: what the network says about objects."""

from __future__ import annotations

import re

from attrs import frozen

#: A data object id: 1 to 20 decimal digits (u64 on chain).
_OBJECT_ID = re.compile(r"[0-9]{1,20}")


def is_valid_object_id(value: str) -> bool:
    """True for 1-20 ASCII decimal digits, nothing else.

    ``re.fullmatch`` with an explicit ASCII class: no ``\\d`` (which matches
    other scripts' digits) and no unanchored match (the original's bug).
    """
    return _OBJECT_ID.fullmatch(value) is not None


@frozen
class StorageEndpoint:
    """A storage node's API root, e.g. ``http://host:3333/api/v1``."""

    bucket_id: str
    url: str


@frozen
class DistributionBucketOperator:
    worker_id: int
    status: str  # "ACTIVE" | "INVITED"


@frozen
class DistributionBucket:
    id: str  # "family:index" (or a bare index on old networks)
    operators: tuple[DistributionBucketOperator, ...] = ()


@frozen
class DataObject:
    """What the metadata source knows about one object."""

    id: str
    size: int
    ipfs_hash: str
    is_accepted: bool
    #: Active storage nodes holding the object's bag (http/https only).
    storage_endpoints: tuple[StorageEndpoint, ...] = ()
    #: Distribution buckets the object's bag is assigned to.
    distribution_buckets: tuple[DistributionBucket, ...] = ()
    #: A mime type the network declares for it (subtitles), if any.
    mime_type: str | None = None


@frozen
class ObjectSummary:
    """An object the node is responsible for (from bucket/bag listings)."""

    id: str
    size: int
    ipfs_hash: str


@frozen
class MetadataStatus:
    """For ``/status``: the metadata source as seen now."""

    url: str
    reachable: bool
    chain_head: int | None = None
    blocks_processed: int | None = None
    package_version: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        if not self.reachable:
            return {"url": self.url, "status": "unreachable", "error": self.error or "unreachable"}
        return {
            "url": self.url,
            "status": "ok",
            "chainHead": self.chain_head or 0,
            "blocksProcessed": self.blocks_processed or 0,
            "packageVersion": self.package_version or "",
        }
