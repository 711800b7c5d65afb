"""An in-memory picture of the network's storage metadata: storage buckets,
distribution buckets, bags and their objects. Pure, no I/O.

The static catalog is one of these (``catalog.parse_catalog`` builds it from
the catalog file), and ``jsdistributor.testing.graphql_server`` answers
GraphQL queries from one, so a single fixture drives every metadata source.
"""

from __future__ import annotations

from typing import Iterable

from attrs import field, frozen

from ..buckets import BucketSelection
from ..model import (
    DataObject,
    DistributionBucket,
    DistributionBucketOperator,
    ObjectSummary,
    StorageEndpoint,
)
from ._shapes import EndpointFilter

#: Storage bucket operator states (the chain's ``StorageBucketOperatorStatus``).
STORAGE_ACTIVE = "active"
STORAGE_INVITED = "invited"
STORAGE_MISSING = "missing"
STORAGE_STATUSES = (STORAGE_ACTIVE, STORAGE_INVITED, STORAGE_MISSING)


@frozen
class StorageBucketRecord:
    id: str
    #: The operator's published ``nodeEndpoint`` (may be anything, or unset).
    endpoint: str | None
    status: str = STORAGE_ACTIVE
    worker_id: int = 0


@frozen
class DistributionBucketRecord:
    id: str
    operators: tuple[DistributionBucketOperator, ...] = ()

    def model(self) -> DistributionBucket:
        return DistributionBucket(id=self.id, operators=self.operators)


@frozen
class ObjectRecord:
    id: str
    size: int
    ipfs_hash: str
    accepted: bool = True
    mime_type: str | None = None

    def summary(self) -> ObjectSummary:
        return ObjectSummary(id=self.id, size=self.size, ipfs_hash=self.ipfs_hash)


@frozen
class BagRecord:
    id: str
    storage_buckets: tuple[str, ...] = ()
    distribution_buckets: tuple[str, ...] = ()
    objects: tuple[ObjectRecord, ...] = ()


def _index_objects(bags: dict[str, BagRecord]) -> dict[str, tuple[ObjectRecord, BagRecord]]:
    return {obj.id: (obj, bag) for bag in bags.values() for obj in bag.objects}


def _index_bucket_bags(bags: dict[str, BagRecord]) -> dict[str, tuple[BagRecord, ...]]:
    index: dict[str, list[BagRecord]] = {}
    for bag in bags.values():
        for bucket_id in bag.distribution_buckets:
            index.setdefault(bucket_id, []).append(bag)
    return {k: tuple(v) for k, v in index.items()}


@frozen
class Dataset:
    """Consistent by construction when built by ``catalog.parse_catalog``
    (every referenced bucket exists, object ids are unique)."""

    storage_buckets: dict[str, StorageBucketRecord] = field(factory=dict)
    distribution_buckets: dict[str, DistributionBucketRecord] = field(factory=dict)
    bags: dict[str, BagRecord] = field(factory=dict)
    _objects: dict[str, tuple[ObjectRecord, BagRecord]] = field(init=False, repr=False, eq=False)
    _bucket_bags: dict[str, tuple[BagRecord, ...]] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_objects", _index_objects(self.bags))
        object.__setattr__(self, "_bucket_bags", _index_bucket_bags(self.bags))

    # -- raw records (the GraphQL test server uses these) ---------------------

    def find_object(self, object_id: str) -> tuple[ObjectRecord, BagRecord] | None:
        return self._objects.get(object_id)

    def bags_of_bucket(self, bucket_id: str) -> tuple[BagRecord, ...]:
        return self._bucket_bags.get(bucket_id, ())

    def object_count(self) -> int:
        return len(self._objects)

    # -- answers as IMetadataSource gives them --------------------------------

    def data_object(self, object_id: str, endpoints: EndpointFilter | None = None) -> DataObject | None:
        found = self._objects.get(object_id)
        if found is None:
            return None
        obj, bag = found
        endpoint_filter = endpoints or EndpointFilter()
        storage = []
        for bucket_id in bag.storage_buckets:
            bucket = self.storage_buckets[bucket_id]
            if bucket.status != STORAGE_ACTIVE:
                continue
            endpoint = endpoint_filter.endpoint(bucket.id, bucket.endpoint)
            if endpoint is not None:
                storage.append(endpoint)
        return DataObject(
            id=obj.id,
            size=obj.size,
            ipfs_hash=obj.ipfs_hash,
            is_accepted=obj.accepted,
            storage_endpoints=tuple(storage),
            distribution_buckets=tuple(self.distribution_buckets[b].model() for b in bag.distribution_buckets),
            mime_type=obj.mime_type,
        )

    def selected_buckets(self, selection: BucketSelection) -> list[DistributionBucketRecord]:
        return [b for b in self.distribution_buckets.values() if selection.matches(b.model())]

    def bucket_objects(self, selection: BucketSelection) -> dict[str, ObjectSummary]:
        objects: dict[str, ObjectSummary] = {}
        for bucket in self.selected_buckets(selection):
            for bag in self.bags_of_bucket(bucket.id):
                for obj in bag.objects:
                    objects[obj.id] = obj.summary()
        return objects

    def storage_endpoints(self, endpoints: EndpointFilter | None = None) -> list[StorageEndpoint]:
        endpoint_filter = endpoints or EndpointFilter()
        result = []
        for bucket in self.storage_buckets.values():
            if bucket.status != STORAGE_ACTIVE:
                continue
            endpoint = endpoint_filter.endpoint(bucket.id, bucket.endpoint)
            if endpoint is not None:
                result.append(endpoint)
        return result

    # -- changes (tests change the dataset of a running server) ---------------

    def with_bags(self, bags: Iterable[BagRecord]) -> Dataset:
        """A copy with ``bags`` added or replaced (by id)."""
        merged = dict(self.bags)
        merged.update((bag.id, bag) for bag in bags)
        return Dataset(dict(self.storage_buckets), dict(self.distribution_buckets), merged)
