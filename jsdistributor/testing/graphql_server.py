"""A real GraphQL-over-HTTP server speaking the storage squid's or the Hydra
query node's dialect, answering from an in-memory ``Dataset``.

For tests and the demo. It validates every incoming document against a
schema holding exactly the types and fields the node's documents use
(copied, with their argument types, from the services' schemas), so a
document the real service would reject is rejected here too (the answer
has ``errors``; ``GraphQLResource.errors`` keeps them for assertions)::

    dataset = parse_catalog(catalog_document)
    resource = GraphQLResource.for_dialect("squid", dataset)
    port, url = yield start_graphql_server(reactor, "squid", resource=resource)
    ...
    resource.fail_mode = "http_500"      # None | graphql_error | http_500 | stall | garbage
    resource.dataset = other_dataset     # changes take effect at once
    resource.requests                    # [(operationName, variables), ...]
    yield stop_graphql_server(port)
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal

from graphql import GraphQLSchema, build_schema, graphql_sync
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..metadata.dataset import (
    STORAGE_ACTIVE,
    STORAGE_INVITED,
    BagRecord,
    Dataset,
    DistributionBucketRecord,
    ObjectRecord,
    StorageBucketRecord,
)

Dialect = Literal["squid", "hydra"]
FAIL_MODES = (None, "graphql_error", "http_500", "stall", "garbage")


def sample_catalog() -> dict[str, Any]:
    """A small catalog exercising every case the sources handle: active,
    invited and endpoint-less storage buckets, a non-http endpoint, an
    endpoint without trailing slash, buckets in two families, an INVITED
    operator, an object not accepted yet and a subtitle with a mime type."""
    return {
        "version": 1,
        "storageNodes": {
            "0": "http://127.0.0.1:3333/",
            "1": {"endpoint": "https://storage.example:8443", "status": "active", "workerId": 1},
            "2": {"endpoint": "ipfs://not-http", "status": "active", "workerId": 2},
            "3": {"endpoint": "http://invited.example/", "status": "invited", "workerId": 3},
            "4": {"endpoint": None, "status": "missing"},
        },
        "distributionBuckets": {
            "0:0": {"operators": [{"workerId": 7, "status": "ACTIVE"}]},
            "0:1": {"operators": [{"workerId": 7, "status": "INVITED"}, {"workerId": 8, "status": "ACTIVE"}]},
            "1:0": {"operators": [{"workerId": 8, "status": "ACTIVE"}]},
            "1:5": {"operators": []},
        },
        "bags": {
            "dynamic:channel:1": {
                "storageBuckets": ["0", "1", "2", "3", "4"],
                "distributionBuckets": ["0:0"],
                "objects": [
                    {"id": "1", "size": 1234, "ipfsHash": "gW9T5gSXhgQB5LaqmnJrLVVpHawhM7youzHnuY6HyGBDy3"},
                    {
                        "id": "2",
                        "size": 5,
                        "ipfsHash": "gWDTHDubjMwfUeQJEhHXBk8L18UUUjFqXDjnAFgK3Wa52E",
                        "accepted": False,
                    },
                    {"id": "5", "size": 77, "ipfsHash": "gWsubtitle", "mimeType": "text/vtt"},
                ],
            },
            "dynamic:channel:2": {
                "storageBuckets": ["1"],
                "distributionBuckets": ["0:1", "1:0"],
                "objects": [{"id": "3", "size": 3000000000, "ipfsHash": "gWbig"}],
            },
            "static:council": {
                "storageBuckets": ["0"],
                "distributionBuckets": [],
                "objects": [{"id": "4", "size": 0, "ipfsHash": "gWempty"}],
            },
        },
    }


# -- schemas ---------------------------------------------------------------------

#: The storage squid's types (storage-squid-schema), only what the node asks.
SQUID_SDL = """
scalar BigInt

type Query {
  storageDataObjectByUniqueInput(where: WhereIdInput!): StorageDataObject
  storageBags(where: StorageBagWhereInput, offset: Int, limit: Int): [StorageBag!]!
  distributionBuckets(where: DistributionBucketWhereInput, offset: Int, limit: Int): [DistributionBucket!]!
  storageBuckets(where: StorageBucketWhereInput, offset: Int, limit: Int): [StorageBucket!]!
  squidStatus: SquidStatus
  squidVersion: SquidVersion!
}

input WhereIdInput {
  id: String!
}

input StorageBagWhereInput {
  id_eq: String
  id_in: [String!]
}

enum DistributionBucketOperatorStatus {
  INVITED
  ACTIVE
}

input DistributionBucketOperatorWhereInput {
  workerId_eq: Int
  status_eq: DistributionBucketOperatorStatus
}

input DistributionBucketWhereInput {
  id_eq: String
  id_in: [String!]
  operators_some: DistributionBucketOperatorWhereInput
}

input StorageBucketOperatorStatusWhereInput {
  isTypeOf_eq: String
}

input StorageBucketWhereInput {
  id_eq: String
  id_in: [String!]
  operatorStatus: StorageBucketOperatorStatusWhereInput
}

type DistributionBucketOperator {
  id: String!
  workerId: Int!
  status: DistributionBucketOperatorStatus!
}

type DistributionBucket {
  id: String!
  bucketIndex: Int!
  operators: [DistributionBucketOperator!]!
  acceptingNewBags: Boolean!
  distributing: Boolean!
  bags: [DistributionBucketBag!]!
}

type DistributionBucketBag {
  id: String!
  distributionBucket: DistributionBucket!
  bag: StorageBag!
}

type StorageBucketBag {
  id: String!
  storageBucket: StorageBucket!
  bag: StorageBag!
}

type StorageBucketOperatorMetadata {
  id: String!
  nodeEndpoint: String
}

type StorageBucketOperatorStatusActive {
  workerId: Int!
  transactorAccountId: String!
}

type StorageBucketOperatorStatusInvited {
  workerId: Int!
}

type StorageBucketOperatorStatusMissing {
  phantom: Int
}

union StorageBucketOperatorStatus = StorageBucketOperatorStatusMissing | StorageBucketOperatorStatusInvited | StorageBucketOperatorStatusActive

type StorageBucket {
  id: String!
  operatorStatus: StorageBucketOperatorStatus!
  operatorMetadata: StorageBucketOperatorMetadata
  acceptingNewBags: Boolean!
}

type StorageBag {
  id: String!
  objects: [StorageDataObject!]!
  storageBuckets: [StorageBucketBag!]!
  distributionBuckets: [DistributionBucketBag!]!
}

type VideoSubtitle {
  id: String!
  mimeType: String!
}

type DataObjectTypeVideoSubtitle {
  subtitle: VideoSubtitle!
}

union DataObjectType = DataObjectTypeVideoSubtitle

type StorageDataObject {
  id: String!
  isAccepted: Boolean!
  size: BigInt!
  storageBag: StorageBag!
  ipfsHash: String!
  type: DataObjectType
}

type SquidStatus {
  height: Int
}

type SquidVersion {
  version: String!
}
"""

#: The Hydra query node's generated API (querynode-input-schema + Hydra's
#: generated inputs and connections), only what the Giza documents ask.
HYDRA_SDL = """
scalar BigInt
scalar JSONObject

type Query {
  storageDataObjectByUniqueInput(where: StorageDataObjectWhereUniqueInput!): StorageDataObject
  distributionBuckets(offset: Int, limit: Int, where: DistributionBucketWhereInput): [DistributionBucket!]!
  storageBucketsConnection(first: Int, after: String, last: Int, before: String, where: StorageBucketWhereInput): StorageBucketConnection!
}

input StorageDataObjectWhereUniqueInput {
  id: ID!
}

enum DistributionBucketOperatorStatus {
  INVITED
  ACTIVE
}

input DistributionBucketOperatorWhereInput {
  workerId_eq: Int
  status_eq: DistributionBucketOperatorStatus
}

input DistributionBucketWhereInput {
  id_eq: ID
  id_in: [ID!]
  operators_some: DistributionBucketOperatorWhereInput
}

input StorageBucketWhereInput {
  id_eq: ID
  id_in: [ID!]
  operatorStatus_json: JSONObject
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

type StorageBucketEdge {
  node: StorageBucket!
  cursor: String!
}

type StorageBucketConnection {
  totalCount: Int!
  edges: [StorageBucketEdge!]!
  pageInfo: PageInfo!
}

type DistributionBucketOperator {
  id: ID!
  workerId: Int!
  status: DistributionBucketOperatorStatus!
}

type DistributionBucket {
  id: ID!
  bucketIndex: Int!
  operators: [DistributionBucketOperator!]
  acceptingNewBags: Boolean!
  distributing: Boolean!
  bags: [StorageBag!]
}

type StorageBucketOperatorMetadata {
  id: ID!
  nodeEndpoint: String
}

type StorageBucketOperatorStatusActive {
  workerId: Int!
  transactorAccountId: String!
}

type StorageBucketOperatorStatusInvited {
  workerId: Int!
}

type StorageBucketOperatorStatusMissing {
  _phantom: Int
}

union StorageBucketOperatorStatus = StorageBucketOperatorStatusMissing | StorageBucketOperatorStatusInvited | StorageBucketOperatorStatusActive

type StorageBucket {
  id: ID!
  operatorStatus: StorageBucketOperatorStatus!
  operatorMetadata: StorageBucketOperatorMetadata
  acceptingNewBags: Boolean!
}

type StorageBag {
  id: ID!
  objects: [StorageDataObject!]
  storageBuckets: [StorageBucket!]
  distributionBuckets: [DistributionBucket!]
}

type StorageDataObject {
  id: ID!
  isAccepted: Boolean!
  size: BigInt!
  storageBag: StorageBag!
  ipfsHash: String!
}
"""

_SCHEMAS: dict[str, GraphQLSchema] = {}


def graphql_schema(dialect: Dialect) -> GraphQLSchema:
    """The (cached) schema of ``dialect``: ``"squid"`` or ``"hydra"``."""
    if dialect not in ("squid", "hydra"):
        raise ValueError("unknown GraphQL dialect %r (squid or hydra)" % (dialect,))
    if dialect not in _SCHEMAS:
        _SCHEMAS[dialect] = build_schema(SQUID_SDL if dialect == "squid" else HYDRA_SDL)
    return _SCHEMAS[dialect]


# -- resolvers: views of the dataset ---------------------------------------------------------
#
# graphql-core's default resolver reads attributes (calling methods with
# ``(info, **args)``) and dict keys, so the dataset is exposed through small
# view objects; relations are built lazily as the query walks them.


def _operator_status(bucket: StorageBucketRecord, dialect: Dialect) -> dict[str, Any]:
    if bucket.status == STORAGE_ACTIVE:
        return {
            "__typename": "StorageBucketOperatorStatusActive",
            "workerId": bucket.worker_id,
            "transactorAccountId": "5" + "C" * 47,
        }
    if bucket.status == STORAGE_INVITED:
        return {"__typename": "StorageBucketOperatorStatusInvited", "workerId": bucket.worker_id}
    return {"__typename": "StorageBucketOperatorStatusMissing", "phantom" if dialect == "squid" else "_phantom": None}


class _View:
    def __init__(self, dataset: Dataset, dialect: Dialect) -> None:
        self.dataset = dataset
        self.dialect = dialect

    def storage_bucket(self, bucket_id: str) -> _StorageBucket:
        return _StorageBucket(self.dataset, self.dialect, self.dataset.storage_buckets[bucket_id])

    def distribution_bucket(self, bucket_id: str) -> _DistributionBucket:
        return _DistributionBucket(self.dataset, self.dialect, self.dataset.distribution_buckets[bucket_id])

    def bag(self, bag: BagRecord) -> _Bag:
        return _Bag(self.dataset, self.dialect, bag)


class _StorageBucket(_View):
    def __init__(self, dataset: Dataset, dialect: Dialect, record: StorageBucketRecord) -> None:
        super().__init__(dataset, dialect)
        self.record = record
        self.id = record.id
        self.acceptingNewBags = True
        self.operatorStatus = _operator_status(record, dialect)
        self.operatorMetadata = None if record.endpoint is None else {"id": record.id, "nodeEndpoint": record.endpoint}


class _DistributionBucket(_View):
    def __init__(self, dataset: Dataset, dialect: Dialect, record: DistributionBucketRecord) -> None:
        super().__init__(dataset, dialect)
        self.record = record
        self.id = record.id
        self.bucketIndex = int(record.id.rsplit(":", 1)[-1])
        self.acceptingNewBags = True
        self.distributing = True
        self.operators = [
            {"id": "%s-%d" % (record.id, op.worker_id), "workerId": op.worker_id, "status": op.status}
            for op in record.operators
        ]

    def bags(self, info: Any, **args: Any) -> list[Any]:
        bags = [self.bag(b) for b in self.dataset.bags_of_bucket(self.id)]
        if self.dialect == "hydra":
            return bags
        return [{"id": "%s-%s" % (self.id, b.id), "distributionBucket": self, "bag": b} for b in bags]


class _Bag(_View):
    def __init__(self, dataset: Dataset, dialect: Dialect, record: BagRecord) -> None:
        super().__init__(dataset, dialect)
        self.record = record
        self.id = record.id

    def objects(self, info: Any, **args: Any) -> list[_Object]:
        return [_Object(self.dataset, self.dialect, o, self.record) for o in self.record.objects]

    def storageBuckets(self, info: Any, **args: Any) -> list[Any]:
        buckets = [self.storage_bucket(b) for b in self.record.storage_buckets]
        if self.dialect == "hydra":
            return buckets
        return [{"id": "%s-%s" % (b.id, self.id), "storageBucket": b, "bag": self} for b in buckets]

    def distributionBuckets(self, info: Any, **args: Any) -> list[Any]:
        buckets = [self.distribution_bucket(b) for b in self.record.distribution_buckets]
        if self.dialect == "hydra":
            return buckets
        return [{"id": "%s-%s" % (b.id, self.id), "distributionBucket": b, "bag": self} for b in buckets]


class _Object(_View):
    def __init__(self, dataset: Dataset, dialect: Dialect, record: ObjectRecord, bag: BagRecord) -> None:
        super().__init__(dataset, dialect)
        self.id = record.id
        self.size = str(record.size)  # BigInt: a decimal string on the wire
        self.ipfsHash = record.ipfs_hash
        self.isAccepted = record.accepted
        self._bag = bag
        self.type = (
            None
            if record.mime_type is None
            else {
                "__typename": "DataObjectTypeVideoSubtitle",
                "subtitle": {"id": "subtitle-%s" % (record.id,), "mimeType": record.mime_type},
            }
        )

    @property
    def storageBag(self) -> _Bag:
        return self.bag(self._bag)


def _window(items: list[Any], offset: int | None, limit: int | None) -> list[Any]:
    start = offset or 0
    return items[start : None if limit is None else start + limit]


def _bucket_filter(where: dict[str, Any] | None) -> Callable[[DistributionBucketRecord], bool]:
    where = where or {}

    def keep(bucket: DistributionBucketRecord) -> bool:
        if where.get("id_eq") is not None and bucket.id != where["id_eq"]:
            return False
        if where.get("id_in") is not None and bucket.id not in where["id_in"]:
            return False
        some = where.get("operators_some")
        if some is not None:
            return any(
                (some.get("workerId_eq") is None or op.worker_id == some["workerId_eq"])
                and (some.get("status_eq") is None or op.status == some["status_eq"])
                for op in bucket.operators
            )
        return True

    return keep


def _storage_filter(where: dict[str, Any] | None, dialect: Dialect) -> Callable[[StorageBucketRecord], bool]:
    where = where or {}
    status_where = where.get("operatorStatus" if dialect == "squid" else "operatorStatus_json") or {}

    def keep(bucket: StorageBucketRecord) -> bool:
        if where.get("id_eq") is not None and bucket.id != where["id_eq"]:
            return False
        if where.get("id_in") is not None and bucket.id not in where["id_in"]:
            return False
        wanted = status_where.get("isTypeOf_eq")
        if wanted is not None and _operator_status(bucket, dialect)["__typename"] != wanted:
            return False
        return True

    return keep


def _sorted_storage_buckets(dataset: Dataset) -> list[StorageBucketRecord]:
    return sorted(dataset.storage_buckets.values(), key=lambda b: (len(b.id), b.id))


class _Root(_View):
    """The ``Query`` type's fields."""

    def __init__(self, dataset: Dataset, dialect: Dialect, resource: GraphQLResource) -> None:
        super().__init__(dataset, dialect)
        self._resource = resource

    def storageDataObjectByUniqueInput(self, info: Any, where: dict[str, Any]) -> _Object | None:
        found = self.dataset.find_object(where["id"])
        if found is None:
            return None
        obj, bag = found
        return _Object(self.dataset, self.dialect, obj, bag)

    def storageBags(
        self, info: Any, where: dict[str, Any] | None = None, offset: int | None = None, limit: int | None = None
    ) -> list[_Bag]:
        where = where or {}
        bags = list(self.dataset.bags.values())
        if where.get("id_eq") is not None:
            bags = [b for b in bags if b.id == where["id_eq"]]
        if where.get("id_in") is not None:
            wanted = set(where["id_in"])
            bags = [b for b in bags if b.id in wanted]
        return [self.bag(b) for b in _window(bags, offset, limit)]

    def distributionBuckets(
        self, info: Any, where: dict[str, Any] | None = None, offset: int | None = None, limit: int | None = None
    ) -> list[_DistributionBucket]:
        keep = _bucket_filter(where)
        buckets = [b for b in self.dataset.distribution_buckets.values() if keep(b)]
        return [self.distribution_bucket(b.id) for b in _window(buckets, offset, limit)]

    def storageBuckets(
        self, info: Any, where: dict[str, Any] | None = None, offset: int | None = None, limit: int | None = None
    ) -> list[_StorageBucket]:
        keep = _storage_filter(where, self.dialect)
        buckets = [b for b in _sorted_storage_buckets(self.dataset) if keep(b)]
        return [self.storage_bucket(b.id) for b in _window(buckets, offset, limit)]

    def storageBucketsConnection(
        self,
        info: Any,
        first: int | None = None,
        after: str | None = None,
        where: dict[str, Any] | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        keep = _storage_filter(where, self.dialect)
        buckets = [b for b in _sorted_storage_buckets(self.dataset) if keep(b)]
        start = 0
        if after is not None:
            if not after.startswith("cursor:") or not after[7:].isdigit():
                raise ValueError("invalid cursor %r" % (after,))
            start = int(after[7:]) + 1
        end = len(buckets) if first is None else min(len(buckets), start + first)
        edges = [{"node": self.storage_bucket(buckets[i].id), "cursor": "cursor:%d" % (i,)} for i in range(start, end)]
        return {
            "totalCount": len(buckets),
            "edges": edges,
            "pageInfo": {
                "hasNextPage": end < len(buckets),
                "hasPreviousPage": start > 0,
                "startCursor": edges[0]["cursor"] if edges else None,
                "endCursor": edges[-1]["cursor"] if edges else None,
            },
        }

    @property
    def squidStatus(self) -> dict[str, Any]:
        return {"height": self._resource.squid_height}

    @property
    def squidVersion(self) -> dict[str, Any]:
        return {"version": self._resource.squid_version}


# -- the HTTP side ------------------------------------------------------------------------


class GraphQLResource(Resource):
    """POST ``{"query", "operationName", "variables"}`` -> ``{"data", "errors"}``.

    Knobs (plain attributes, change them any time): ``dataset``,
    ``fail_mode`` (``None``, ``"graphql_error"``, ``"http_500"``,
    ``"stall"``: never answer, ``"garbage"``: a non-JSON body),
    ``response_delay`` (seconds before answering; needs ``reactor``),
    ``squid_height`` / ``squid_version``. Records: ``requests`` (list of
    ``(operationName, variables)``), ``request_count``, ``errors`` (GraphQL
    errors of every real execution), ``in_flight`` / ``max_in_flight``.
    """

    isLeaf = True

    def __init__(
        self, schema: GraphQLSchema, dataset: Dataset, dialect: Dialect | None = None, reactor: Any = None
    ) -> None:
        super().__init__()
        self.schema = schema
        self.dataset = dataset
        if dialect is None:
            query_type = schema.query_type
            is_hydra = query_type is not None and "storageBucketsConnection" in query_type.fields
            dialect = "hydra" if is_hydra else "squid"
        self.dialect: Dialect = dialect
        self.reactor = reactor
        self.fail_mode: str | None = None
        self.response_delay = 0.0
        self.squid_height = 1000
        self.squid_version = "4.0.0-test"
        self.requests: list[tuple[str | None, dict[str, Any]]] = []
        self.request_count = 0
        self.errors: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._held: dict[Request, IDelayedCall | None] = {}

    @classmethod
    def for_dialect(cls, dialect: Dialect, dataset: Dataset, reactor: Any = None) -> GraphQLResource:
        return cls(graphql_schema(dialect), dataset, dialect, reactor)

    def reset_log(self) -> None:
        self.requests.clear()
        self.request_count = 0
        self.errors.clear()
        self.max_in_flight = self.in_flight

    def operations(self) -> list[str | None]:
        """The ``operationName`` of every request so far."""
        return [name for name, _ in self.requests]

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(405)
        request.setHeader(b"content-type", b"text/plain")
        return b"POST GraphQL requests here\n"

    def render_POST(self, request: Request) -> bytes | int:
        self.request_count += 1
        try:
            payload = json.loads(request.content.read())
            if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
                raise ValueError("no query")
            variables = payload.get("variables") or {}
            if not isinstance(variables, dict):
                raise ValueError("variables is not an object")
        except ValueError as e:
            self.requests.append((None, {}))
            return self._json(request, 400, {"errors": [{"message": "bad GraphQL request: %s" % (e,)}]})
        operation = payload.get("operationName")
        self.requests.append((operation, variables))

        mode = self.fail_mode
        if mode == "stall":
            self._hold(request, None)
            return NOT_DONE_YET
        if mode == "http_500":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            return b"internal server error (simulated)\n"
        if mode == "garbage":
            request.setHeader(b"content-type", b"application/json")
            return b"<html>this is not JSON"
        if mode == "graphql_error":
            return self._json(request, 200, {"data": None, "errors": [{"message": "simulated GraphQL failure"}]})

        answer = self.execute(payload["query"], operation, variables)
        body = json.dumps(answer).encode("utf-8")
        if self.response_delay > 0:
            reactor = self.reactor
            if reactor is None:
                from twisted.internet import reactor as global_reactor

                reactor = global_reactor
            call = reactor.callLater(self.response_delay, self._answer_held, request, body)
            self._hold(request, call)
            return NOT_DONE_YET
        return self._json_bytes(request, 200, body)

    def execute(self, document: str, operation: str | None, variables: dict[str, Any]) -> dict[str, Any]:
        """Validate and run one GraphQL operation against the current dataset."""
        result = graphql_sync(
            self.schema,
            document,
            root_value=_Root(self.dataset, self.dialect, self),
            variable_values=variables,
            operation_name=operation,
        )
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = [e.formatted for e in result.errors]
            self.errors.extend(answer["errors"])
        return answer

    def _hold(self, request: Request, call: IDelayedCall | None) -> None:
        self._held[request] = call
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        request.notifyFinish().addBoth(self._released, request)

    def _released(self, result: Any, request: Request) -> None:
        call = self._held.pop(request, None)
        self.in_flight -= 1
        if call is not None and call.active():
            call.cancel()

    def _answer_held(self, request: Request, body: bytes) -> None:
        self._held[request] = None
        if not request.finished and not request._disconnected:
            request.write(self._json_bytes(request, 200, body))
            request.finish()

    def release_held(self) -> None:
        """Answer every stalled or delayed request with a 503 now."""
        for request, call in list(self._held.items()):
            if call is not None and call.active():
                call.cancel()
            if not request.finished and not request._disconnected:
                request.setResponseCode(503)
                request.finish()

    def _json(self, request: Request, status: int, value: object) -> bytes:
        return self._json_bytes(request, status, json.dumps(value).encode("utf-8"))

    @staticmethod
    def _json_bytes(request: Request, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return body


class _TrackedChannel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory_site.channels.add(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        site = self.factory_site
        site.channels.discard(self)
        for waiter in site.lost_waiters.pop(self, []):
            waiter.callback(None)


class GraphQLSite(Site):
    """A Site that knows its open connections, so tests can close them all."""

    protocol = _TrackedChannel

    def __init__(self, resource: GraphQLResource, reactor: Any = None) -> None:
        super().__init__(resource, reactor=reactor)
        self.graphql = resource
        self.channels: set[_TrackedChannel] = set()
        self.lost_waiters: dict[_TrackedChannel, list[Deferred[None]]] = {}

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.factory_site = self
        return channel

    def close_connections(self, grace: float = 1.0) -> Deferred[None]:
        """Close every open connection (after writing what is buffered;
        aborted if still open after ``grace`` seconds); fires when all are
        closed."""
        waits = []
        for channel in list(self.channels):
            d: Deferred[None] = Deferred()
            self.lost_waiters.setdefault(channel, []).append(d)
            waits.append(d)
            if channel.transport is not None:
                channel.transport.loseConnection()
                abort = self.reactor.callLater(grace, channel.transport.abortConnection)
                d.addBoth(lambda result, call=abort: (call.active() and call.cancel()) or result)
        return gatherResults(waits).addCallback(lambda _: None)


def start_graphql_server(
    reactor: Any,
    dialect: Dialect,
    dataset: Dataset | None = None,
    resource: GraphQLResource | None = None,
) -> Deferred[tuple[IListeningPort, str]]:
    """Listen on 127.0.0.1 (ephemeral port); fires with ``(port, url)``.

    Pass a ``resource`` to keep its knobs at hand (else one is made from
    ``dataset``; it is reachable as ``port.factory.graphql``). Stop with
    ``stop_graphql_server(port)``.
    """
    if resource is None:
        resource = GraphQLResource.for_dialect(dialect, dataset if dataset is not None else Dataset(), reactor)
    if resource.reactor is None:
        resource.reactor = reactor
    site = GraphQLSite(resource, reactor)
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    def listening(port: IListeningPort) -> tuple[IListeningPort, str]:
        return port, "http://127.0.0.1:%d/graphql" % (port.getHost().port,)

    return endpoint.listen(site).addCallback(listening)


def stop_graphql_server(port: IListeningPort) -> Deferred[None]:
    """Stop listening, answer held requests and close open connections."""
    site = port.factory  # type: ignore[attr-defined]
    stopped = port.stopListening() or succeed(None)
    if isinstance(site, GraphQLSite):
        site.graphql.release_held()
        return gatherResults([stopped, site.close_connections()]).addCallback(lambda _: None)
    return stopped
