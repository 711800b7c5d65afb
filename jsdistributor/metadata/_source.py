"""What the storage squid and the Hydra query node sources share: caching,
request coalescing, bucket selection and the error discipline."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Coroutine, Hashable, Iterator, TypeVar

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..buckets import BucketSelection
from ..errors import MetadataUnavailable
from ..model import DataObject, DistributionBucket, MetadataStatus, ObjectSummary, StorageEndpoint, is_valid_object_id
from ._shapes import (
    EndpointFilter,
    ShapeError,
    bool_field,
    list_field,
    load_document,
    obj_field,
    object_id_field,
    parse_distribution_bucket,
    parse_storage_bucket,
    size_field,
    str_field,
    unique,
)
from .caching import SharedLookups
from .graphql import GraphQLClient

log = Logger()

T = TypeVar("T")

#: How long ``get_status`` answers (reachable or not) are reused, in seconds.
DEFAULT_STATUS_TTL = 5.0


def selection_key(selection: BucketSelection) -> Hashable:
    """What a bucket listing depends on: the selection's current value."""
    return (selection.buckets, selection.worker_id)


class GraphQLMetadataSource:
    """Base of ``SquidMetadataSource`` and ``HydraMetadataSource``.

    Answers are cached for ``cache_ttl`` seconds of ``clock`` (which may be a
    different object from the reactor that runs the HTTP requests, so tests
    can drive the TTL with a ``task.Clock``); concurrent lookups of the same
    key share one request; failures are not cached.
    """

    #: The package's ``*.graphql`` file holding every operation we send.
    document_name: ClassVar[str]
    #: Operations listing distribution buckets by id / by ACTIVE operator.
    buckets_by_ids_operation: ClassVar[str]
    buckets_by_worker_operation: ClassVar[str]

    def __init__(
        self,
        client: GraphQLClient,
        clock: IReactorTime,
        cache_ttl: float = 60.0,
        status_ttl: float = DEFAULT_STATUS_TTL,
    ) -> None:
        self.client = client
        self.url = client.url
        self.document = load_document(self.document_name)
        self._endpoint_filter = EndpointFilter()
        self._objects: SharedLookups[str, DataObject | None] = SharedLookups(clock, cache_ttl)
        self._listings: SharedLookups[Hashable, dict[str, ObjectSummary]] = SharedLookups(
            clock, cache_ttl, max_entries=16
        )
        self._endpoints: SharedLookups[str, list[StorageEndpoint]] = SharedLookups(clock, cache_ttl, max_entries=1)
        self._status: SharedLookups[str, MetadataStatus] = SharedLookups(clock, status_ttl, max_entries=1)
        self._warned_bare_ids = False

    # -- IMetadataSource -------------------------------------------------

    def get_object(self, object_id: str) -> Deferred[DataObject | None]:
        if not is_valid_object_id(object_id):
            return succeed(None)
        return self._objects.get(object_id, lambda: self._run(self._fetch_object(object_id)))

    def list_bucket_objects(self, selection: BucketSelection) -> Deferred[dict[str, ObjectSummary]]:
        # A snapshot: the operator may change the live selection meanwhile.
        frozen = BucketSelection(buckets=selection.buckets, worker_id=selection.worker_id)
        return self._listings.get(selection_key(frozen), lambda: self._run(self._fetch_bucket_objects(frozen)))

    def get_storage_endpoints(self) -> Deferred[list[StorageEndpoint]]:
        d = self._endpoints.get("all", lambda: self._run(self._fetch_storage_endpoints()))
        return d.addCallback(list)  # each caller gets its own list

    def get_status(self) -> Deferred[MetadataStatus]:
        d = self._status.get("status", lambda: self._run(self._status_or_unreachable()))
        return d.addErrback(self._unexpected_status_failure)

    # -- helpers for subclasses --------------------------------------------

    @staticmethod
    def _run(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
        return Deferred.fromCoroutine(coroutine)

    async def _query(self, operation_name: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.client.query(self.document, operation_name, variables)

    def _parse(self, operation_name: str, parse: Callable[..., T], *args: Any) -> T:
        """Run ``parse``; an unexpected shape becomes ``MetadataUnavailable``."""
        try:
            return parse(*args)
        except ShapeError as e:
            message = "%s (%s) answered an unexpected shape: %s" % (self.url, operation_name, e)
            log.warn("metadata service unavailable: {message}", message=message)
            raise MetadataUnavailable(message) from e

    async def _status_or_unreachable(self) -> MetadataStatus:
        try:
            return await self._fetch_status()
        except MetadataUnavailable as e:
            return MetadataStatus(url=self.url, reachable=False, error=str(e))

    def _unexpected_status_failure(self, reason: Failure) -> MetadataStatus | Failure:
        if reason.check(CancelledError):
            return reason  # the caller gave up
        # ``get_status`` never fails; anything here is a bug worth a traceback.
        log.failure("unexpected failure while getting the metadata status", reason)
        return MetadataStatus(url=self.url, reachable=False, error=reason.getErrorMessage())

    async def _selected_buckets(self, selection: BucketSelection) -> list[dict[str, Any]]:
        """The raw distribution buckets (as the dialect's fragment has them)
        that ``selection`` serves.

        Configured ids in ``family:index`` form are asked for by id. A bare
        integer ``N`` means "index N in any family" (or the bucket whose id is
        ``N`` on networks with plain numeric ids): it is sent as is in the by-id
        query (which finds the plain numeric case), and, as the documents have
        no "all buckets" query, resolved in other families through the
        worker's buckets (``...ByWorkerId``), filtered with
        ``selection.matches``. Without a worker id only the first applies.
        """
        found: dict[str, dict[str, Any]] = {}

        def add(operation: str, data: dict[str, Any]) -> None:
            self._parse(operation, self._collect_buckets, data, selection, found)

        if selection.buckets is not None:
            if not selection.buckets:
                return []
            operation = self.buckets_by_ids_operation
            add(operation, await self._query(operation, {"ids": list(selection.buckets)}))
            if any(":" not in wanted for wanted in selection.buckets):
                if selection.worker_id is not None:
                    operation = self.buckets_by_worker_operation
                    add(operation, await self._query(operation, {"workerId": selection.worker_id}))
                elif not self._warned_bare_ids:
                    self._warned_bare_ids = True
                    log.warn(
                        "buckets {buckets} include bare indices but no workerId is set: "
                        "they only match buckets whose id is that plain number",
                        buckets=list(selection.buckets),
                    )
        elif selection.worker_id is not None:
            operation = self.buckets_by_worker_operation
            add(operation, await self._query(operation, {"workerId": selection.worker_id}))
        return list(found.values())

    @staticmethod
    def _collect_buckets(data: dict[str, Any], selection: BucketSelection, found: dict[str, dict[str, Any]]) -> None:
        """Add the answer's buckets that ``selection`` serves to ``found``
        (by id). Without configured ids, the answer is the worker's buckets
        as the service filtered them (operators aren't in the fragment)."""
        for i, bucket in enumerate(list_field(data, "distributionBuckets", "data")):
            bucket_id = str_field(bucket, "id", "data.distributionBuckets[%d]" % (i,))
            if selection.buckets is None or selection.matches(DistributionBucket(id=bucket_id)):
                found.setdefault(bucket_id, bucket)

    async def _fetch_object(self, object_id: str) -> DataObject | None:
        """``getDataObjectDetails`` (same operation in both dialects; the
        answer's shape differs and is read by ``_read_object``)."""
        operation = "getDataObjectDetails"
        data = await self._query(operation, {"id": object_id})
        return self._parse(operation, self._read_object, data)

    def _read_object(self, data: dict[str, Any]) -> DataObject | None:
        path = "data.storageDataObjectByUniqueInput"
        obj = obj_field(data, "storageDataObjectByUniqueInput", "data", nullable=True)
        if obj is None:
            return None
        bag = obj_field(obj, "storageBag", path)
        bag_path = path + ".storageBag"
        endpoints = []
        for bucket, bucket_path in self._bag_links(bag, bag_path, "storageBuckets", "storageBucket"):
            endpoint = parse_storage_bucket(bucket, bucket_path, self._endpoint_filter, True)
            if endpoint is not None:
                endpoints.append(endpoint)
        distribution = [
            parse_distribution_bucket(bucket, bucket_path)
            for bucket, bucket_path in self._bag_links(bag, bag_path, "distributionBuckets", "distributionBucket")
        ]
        return DataObject(
            id=object_id_field(obj, path),
            size=size_field(obj, path),
            ipfs_hash=str_field(obj, "ipfsHash", path),
            is_accepted=bool_field(obj, "isAccepted", path),
            storage_endpoints=unique(endpoints),
            distribution_buckets=unique(distribution),
            mime_type=self._mime_type(obj, path),
        )

    # -- dialect specific ---------------------------------------------------

    def _bag_links(self, bag: dict[str, Any], bag_path: str, key: str, inner: str) -> Iterator[tuple[Any, str]]:
        """``(bucket, its path)`` for each of a bag's ``key`` buckets."""
        raise NotImplementedError

    def _mime_type(self, obj: dict[str, Any], path: str) -> str | None:
        return None

    async def _fetch_bucket_objects(self, selection: BucketSelection) -> dict[str, ObjectSummary]:
        raise NotImplementedError

    async def _fetch_storage_endpoints(self) -> list[StorageEndpoint]:
        raise NotImplementedError

    async def _fetch_status(self) -> MetadataStatus:
        raise NotImplementedError
