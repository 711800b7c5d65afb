"""The Hydra query node (Giza-era Joystream metadata service) as a metadata source.

Sends the documents of ``hydra_queries.graphql`` (the Giza original node's).
Those documents have no batched bag listing: ``getDistributionBucketsWith
ObjectsByIds`` / ``...ByWorkerId`` return every bucket's bags with their
objects nested in one answer, and that is what is sent. Storage operators
are read page by page (cursor pagination, ``page_size`` per request).

The query node has no status query in the documents: ``get_status`` sends
``getActiveStorageBucketOperatorsData`` with ``limit: 1`` and reports the
service reachable (no chain head, no version) when that succeeds.
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from ..buckets import BucketSelection
from ..errors import MetadataUnavailable
from ..interfaces import IMetadataSource
from ..model import MetadataStatus, ObjectSummary, StorageEndpoint
from ._shapes import (
    ShapeError,
    bool_field,
    list_field,
    member,
    obj_field,
    object_id_field,
    parse_storage_bucket,
    size_field,
    str_field,
)
from ._source import DEFAULT_STATUS_TTL, GraphQLMetadataSource
from .graphql import GraphQLClient

log = Logger()

#: Storage buckets per ``getActiveStorageBucketOperatorsData`` page.
DEFAULT_PAGE_SIZE = 1000

#: Give up paginating after this many pages (a server looping on cursors).
MAX_PAGES = 10_000


@implementer(IMetadataSource)
class HydraMetadataSource(GraphQLMetadataSource):
    document_name = "hydra_queries.graphql"
    buckets_by_ids_operation = "getDistributionBucketsWithObjectsByIds"
    buckets_by_worker_operation = "getDistributionBucketsWithObjectsByWorkerId"

    def __init__(
        self,
        client: GraphQLClient,
        clock: IReactorTime,
        cache_ttl: float = 60.0,
        status_ttl: float = DEFAULT_STATUS_TTL,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        super().__init__(client, clock, cache_ttl, status_ttl)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.page_size = page_size

    def _bag_links(self, bag: dict[str, Any], bag_path: str, key: str, inner: str) -> Iterator[tuple[Any, str]]:
        """Hydra lists a bag's buckets directly (``storageBuckets: [StorageBucket]``)."""
        for i, bucket in enumerate(list_field(bag, key, bag_path, nullable=True)):
            yield bucket, "%s.%s[%d]" % (bag_path, key, i)

    async def _fetch_bucket_objects(self, selection: BucketSelection) -> dict[str, ObjectSummary]:
        buckets = await self._selected_buckets(selection)
        return self._parse("distributionBuckets", self._read_bucket_objects, buckets)

    @staticmethod
    def _read_bucket_objects(buckets: list[dict[str, Any]]) -> dict[str, ObjectSummary]:
        objects: dict[str, ObjectSummary] = {}
        for n, bucket in enumerate(buckets):
            bucket_path = "distributionBuckets[%s]" % (str_field(bucket, "id", "distributionBuckets[%d]" % (n,)),)
            for i, bag in enumerate(list_field(bucket, "bags", bucket_path, nullable=True)):
                bag_path = "%s.bags[%d]" % (bucket_path, i)
                for j, obj in enumerate(list_field(bag, "objects", bag_path, nullable=True)):
                    path = "%s.objects[%d]" % (bag_path, j)
                    object_id = object_id_field(obj, path)
                    objects[object_id] = ObjectSummary(
                        id=object_id, size=size_field(obj, path), ipfs_hash=str_field(obj, "ipfsHash", path)
                    )
        return objects

    async def _fetch_storage_endpoints(self) -> list[StorageEndpoint]:
        endpoints: list[StorageEndpoint] = []
        cursor: str | None = None
        operation = "getActiveStorageBucketOperatorsData"
        for _ in range(MAX_PAGES):
            data = await self._query(operation, {"limit": self.page_size, "lastCursor": cursor})
            page, cursor = self._parse(operation, self._read_page, data, cursor)
            endpoints.extend(page)
            if cursor is None:
                return endpoints
        message = "%s (%s) has more than %d pages of storage buckets" % (self.url, operation, MAX_PAGES)
        log.warn("metadata service unavailable: {message}", message=message)
        raise MetadataUnavailable(message)

    def _read_page(self, data: dict[str, Any], cursor: str | None) -> tuple[list[StorageEndpoint], str | None]:
        """One page's endpoints and the cursor of the next page (``None``: last)."""
        path = "data.storageBucketsConnection"
        connection = obj_field(data, "storageBucketsConnection", "data")
        endpoints = []
        for i, edge in enumerate(list_field(connection, "edges", path)):
            edge_path = "%s.edges[%d]" % (path, i)
            node = obj_field(edge, "node", edge_path)
            endpoint = parse_storage_bucket(node, edge_path + ".node", self._endpoint_filter, False)
            if endpoint is not None:
                endpoints.append(endpoint)
        page_info = obj_field(connection, "pageInfo", path)
        if not bool_field(page_info, "hasNextPage", path + ".pageInfo"):
            return endpoints, None
        end_cursor = member(page_info, "endCursor", path + ".pageInfo")
        if not isinstance(end_cursor, str) or end_cursor == cursor:
            raise ShapeError("%s.pageInfo: hasNextPage without a new endCursor" % (path,))
        return endpoints, end_cursor

    async def _fetch_status(self) -> MetadataStatus:
        operation = "getActiveStorageBucketOperatorsData"
        data = await self._query(operation, {"limit": 1, "lastCursor": None})
        self._parse(operation, self._read_page, data, None)
        return MetadataStatus(url=self.url, reachable=True)
