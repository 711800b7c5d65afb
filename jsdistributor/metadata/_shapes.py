"""Reading GraphQL answers defensively, and storage endpoint URLs.

Pure helpers shared by the squid and Hydra sources: an answer of an
unexpected shape raises ``ShapeError`` with the JSON path of the problem.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import urlsplit

from twisted.logger import Logger

from ..model import DistributionBucket, DistributionBucketOperator, StorageEndpoint, is_valid_object_id

log = Logger()

T = TypeVar("T")

#: ``operatorStatus.__typename`` of a storage bucket whose operator serves it.
ACTIVE_STORAGE_OPERATOR = "StorageBucketOperatorStatusActive"


class ShapeError(Exception):
    """An answer is not shaped as the documents ask."""


@cache
def load_document(name: str) -> str:
    """A GraphQL document shipped in this package (``*_queries.graphql``)."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def member(obj: Any, name: str, path: str) -> Any:
    if not isinstance(obj, dict):
        raise ShapeError("%s is not an object" % (path,))
    if name not in obj:
        raise ShapeError("%s.%s is missing" % (path, name))
    return obj[name]


def obj_field(obj: Any, name: str, path: str, nullable: bool = False) -> dict[str, Any] | None:
    value = member(obj, name, path)
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise ShapeError("%s.%s is not an object" % (path, name))
    return value


def list_field(obj: Any, name: str, path: str, nullable: bool = False) -> list[Any]:
    """A list; ``null`` reads as empty when ``nullable`` (Hydra's relation lists)."""
    value = member(obj, name, path)
    if value is None and nullable:
        return []
    if not isinstance(value, list):
        raise ShapeError("%s.%s is not a list" % (path, name))
    return value


def str_field(obj: Any, name: str, path: str) -> str:
    value = member(obj, name, path)
    if not isinstance(value, str):
        raise ShapeError("%s.%s is not a string" % (path, name))
    return value


def optional_str_field(obj: Any, name: str, path: str) -> str | None:
    if not isinstance(obj, dict):
        raise ShapeError("%s is not an object" % (path,))
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise ShapeError("%s.%s is not a string" % (path, name))
    return value


def int_field(obj: Any, name: str, path: str, nullable: bool = False) -> int | None:
    """An integer; ``BigInt`` scalars come as decimal strings."""
    value = member(obj, name, path)
    if value is None and nullable:
        return None
    if isinstance(value, bool):
        raise ShapeError("%s.%s is not an integer" % (path, name))
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        result = int(value)
    else:
        raise ShapeError("%s.%s is not an integer (%r)" % (path, name, value))
    if result < 0:
        raise ShapeError("%s.%s is negative" % (path, name))
    return result


def size_field(obj: Any, path: str) -> int:
    value = int_field(obj, "size", path)
    assert value is not None
    return value


def bool_field(obj: Any, name: str, path: str) -> bool:
    value = member(obj, name, path)
    if not isinstance(value, bool):
        raise ShapeError("%s.%s is not a boolean" % (path, name))
    return value


def object_id_field(obj: Any, path: str) -> str:
    value = str_field(obj, "id", path)
    if not is_valid_object_id(value):
        raise ShapeError("%s.id is not an object id (%r)" % (path, value[:40]))
    return value


def storage_api_url(node_endpoint: str) -> str | None:
    """``http://h:3333/`` -> ``http://h:3333/api/v1``; ``None`` unless http(s)."""
    try:
        parts = urlsplit(node_endpoint.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return node_endpoint.strip().rstrip("/") + "/api/v1"


class EndpointFilter:
    """Turns storage buckets' ``nodeEndpoint`` into API roots, logging each
    unusable endpoint once (per source) rather than on every lookup."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def endpoint(self, bucket_id: str, node_endpoint: str | None) -> StorageEndpoint | None:
        if not node_endpoint:
            return None
        url = storage_api_url(node_endpoint)
        if url is None:
            if node_endpoint not in self._warned:
                self._warned.add(node_endpoint)
                log.warn(
                    "storage bucket {bucketId}: skipping endpoint {endpoint!r} (not an http/https URL)",
                    bucketId=bucket_id,
                    endpoint=node_endpoint[:200],
                )
            return None
        return StorageEndpoint(bucket_id=bucket_id, url=url)


def parse_storage_bucket(
    bucket: Any, path: str, endpoints: EndpointFilter, require_active: bool
) -> StorageEndpoint | None:
    """``StorageBucketDetails`` / ``StorageBucketOperatorFields`` -> endpoint."""
    bucket_id = str_field(bucket, "id", path)
    if require_active:
        status = obj_field(bucket, "operatorStatus", path, nullable=True)
        typename = None if status is None else status.get("__typename")
        if typename != ACTIVE_STORAGE_OPERATOR:
            return None
    metadata = obj_field(bucket, "operatorMetadata", path, nullable=True)
    if metadata is None:
        return None
    node_endpoint = optional_str_field(metadata, "nodeEndpoint", path + ".operatorMetadata")
    return endpoints.endpoint(bucket_id, node_endpoint)


def parse_distribution_bucket(bucket: Any, path: str) -> DistributionBucket:
    """``DistributionBucketDetails`` -> model."""
    operators = []
    for i, op in enumerate(list_field(bucket, "operators", path, nullable=True)):
        op_path = "%s.operators[%d]" % (path, i)
        worker_id = int_field(op, "workerId", op_path)
        assert worker_id is not None
        operators.append(DistributionBucketOperator(worker_id=worker_id, status=str_field(op, "status", op_path)))
    return DistributionBucket(id=str_field(bucket, "id", path), operators=tuple(operators))


def unique(items: Iterable[T]) -> tuple[T, ...]:
    return tuple(dict.fromkeys(items))
