"""The storage squid (current Joystream metadata service) as a metadata source.

Sends the documents of ``squid_queries.graphql`` (the newest original node's).
Bucket listings go buckets -> bag ids -> objects of those bags, in batches
of ``batch_size`` bag ids, one request at a time.
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..buckets import BucketSelection
from ..interfaces import IMetadataSource
from ..model import MetadataStatus, ObjectSummary, StorageEndpoint
from ._shapes import (
    batched,
    int_field,
    list_field,
    obj_field,
    object_id_field,
    optional_str_field,
    parse_storage_bucket,
    size_field,
    str_field,
)
from ._source import DEFAULT_STATUS_TTL, GraphQLMetadataSource
from .graphql import GraphQLClient

#: Bag ids per ``getDataObjectsWithBagsByIds`` request (as the original node).
DEFAULT_BAG_BATCH_SIZE = 1000


def _mime_type(obj: dict[str, Any], path: str) -> str | None:
    """``type { ... on DataObjectTypeVideoSubtitle { subtitle { mimeType } } }``."""
    object_type = obj_field(obj, "type", path, nullable=True) if "type" in obj else None
    if not object_type or object_type.get("subtitle") is None:
        return None
    subtitle = obj_field(object_type, "subtitle", path + ".type")
    return optional_str_field(subtitle, "mimeType", path + ".type.subtitle")


@implementer(IMetadataSource)
class SquidMetadataSource(GraphQLMetadataSource):
    document_name = "squid_queries.graphql"
    buckets_by_ids_operation = "getDistributionBucketsWithBagsByIds"
    buckets_by_worker_operation = "getDistributionBucketsWithBagsByWorkerId"

    def __init__(
        self,
        client: GraphQLClient,
        clock: IReactorTime,
        cache_ttl: float = 60.0,
        status_ttl: float = DEFAULT_STATUS_TTL,
        batch_size: int = DEFAULT_BAG_BATCH_SIZE,
    ) -> None:
        super().__init__(client, clock, cache_ttl, status_ttl)
        self.batch_size = batch_size

    def _bag_links(self, bag: dict[str, Any], bag_path: str, key: str, inner: str) -> Iterator[tuple[Any, str]]:
        """The squid links a bag to its buckets through an entity
        (``storageBuckets: [StorageBucketBag { storageBucket }]``)."""
        for i, link in enumerate(list_field(bag, key, bag_path)):
            link_path = "%s.%s[%d]" % (bag_path, key, i)
            yield obj_field(link, inner, link_path), link_path + "." + inner

    def _mime_type(self, obj: dict[str, Any], path: str) -> str | None:
        return _mime_type(obj, path)

    async def _fetch_bucket_objects(self, selection: BucketSelection) -> dict[str, ObjectSummary]:
        buckets = await self._selected_buckets(selection)
        bag_ids = self._parse("distributionBuckets", self._read_bag_ids, buckets)
        objects: dict[str, ObjectSummary] = {}
        operation = "getDataObjectsWithBagsByIds"
        for batch in batched(bag_ids, self.batch_size):
            data = await self._query(operation, {"bagIds": list(batch), "limit": len(batch)})
            self._parse(operation, self._read_bag_objects, data, objects)
        return objects

    @staticmethod
    def _read_bag_ids(buckets: list[dict[str, Any]]) -> list[str]:
        bag_ids: set[str] = set()
        for n, bucket in enumerate(buckets):
            path = "distributionBuckets[%s]" % (str_field(bucket, "id", "distributionBuckets[%d]" % (n,)),)
            for i, link in enumerate(list_field(bucket, "bags", path)):
                bag = obj_field(link, "bag", "%s.bags[%d]" % (path, i))
                bag_ids.add(str_field(bag, "id", "%s.bags[%d].bag" % (path, i)))
        return sorted(bag_ids)

    @staticmethod
    def _read_bag_objects(data: dict[str, Any], objects: dict[str, ObjectSummary]) -> None:
        for i, bag in enumerate(list_field(data, "storageBags", "data")):
            bag_path = "data.storageBags[%d]" % (i,)
            for j, obj in enumerate(list_field(bag, "objects", bag_path)):
                path = "%s.objects[%d]" % (bag_path, j)
                object_id = object_id_field(obj, path)
                objects[object_id] = ObjectSummary(
                    id=object_id, size=size_field(obj, path), ipfs_hash=str_field(obj, "ipfsHash", path)
                )

    async def _fetch_storage_endpoints(self) -> list[StorageEndpoint]:
        operation = "getActiveStorageBucketOperatorsData"
        data = await self._query(operation)
        return self._parse(operation, self._read_storage_endpoints, data)

    def _read_storage_endpoints(self, data: dict[str, Any]) -> list[StorageEndpoint]:
        endpoints = []
        for i, bucket in enumerate(list_field(data, "storageBuckets", "data")):
            endpoint = parse_storage_bucket(bucket, "data.storageBuckets[%d]" % (i,), self._endpoint_filter, False)
            if endpoint is not None:
                endpoints.append(endpoint)
        return endpoints

    async def _fetch_status(self) -> MetadataStatus:
        status = await self._query("squidStatus")
        height = self._parse("squidStatus", self._read_height, status)
        version_data = await self._query("getSquidVersion")
        version = self._parse("getSquidVersion", self._read_version, version_data)
        return MetadataStatus(
            url=self.url, reachable=True, chain_head=height, blocks_processed=height, package_version=version
        )

    @staticmethod
    def _read_height(data: dict[str, Any]) -> int | None:
        status = obj_field(data, "squidStatus", "data", nullable=True)
        return None if status is None else int_field(status, "height", "data.squidStatus", nullable=True)

    @staticmethod
    def _read_version(data: dict[str, Any]) -> str:
        return str_field(obj_field(data, "squidVersion", "data"), "version", "data.squidVersion")
