"""Which distribution buckets this node serves: pure logic, no I/O.

Buckets come from config ``buckets`` (or operator ``set-buckets``) as
``"family:index"`` strings or bare integer indices (the seed page's form); with
none configured, the node serves every bucket where ``worker_id`` is an ACTIVE
operator. An integer ``N`` matches a bucket whose id is ``"N"`` (networks
with plain numeric ids) or ``"<family>:N"`` (index ``N`` in any family).
"""

from __future__ import annotations

from typing import Iterable

from attrs import define, field

from .model import DataObject, DistributionBucket


def normalize_bucket_id(value: object) -> str:
    """``3`` / ``"3"`` / ``"0:3"`` -> canonical string; ``ValueError`` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a bucket id (an integer or 'family:index')")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a bucket id (must be >= 0)")
        return str(value)
    if isinstance(value, str):
        parts = value.split(":")
        if 1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts):
            return ":".join(str(int(p)) for p in parts)
    raise ValueError(f"{value!r} is not a bucket id (an integer or 'family:index')")


@define
class BucketSelection:
    """Mutable: the operator API changes it while the node runs."""

    buckets: tuple[str, ...] | None = field(default=None)
    worker_id: int | None = field(default=None)

    def set_buckets(self, buckets: Iterable[object] | None) -> None:
        self.buckets = None if buckets is None else tuple(normalize_bucket_id(b) for b in buckets)

    def set_worker(self, worker_id: int) -> None:
        self.worker_id = worker_id

    def as_json(self) -> dict[str, object]:
        if self.buckets is not None:
            return {"bucketIds": list(self.buckets)}
        return {"allByWorkerId": self.worker_id}

    def matches(self, bucket: DistributionBucket) -> bool:
        if self.buckets is not None:
            return any(_same_bucket(wanted, bucket.id) for wanted in self.buckets)
        if self.worker_id is None:
            return False
        return any(op.worker_id == self.worker_id and op.status == "ACTIVE" for op in bucket.operators)

    def supports(self, obj: DataObject) -> bool:
        return any(self.matches(b) for b in obj.distribution_buckets)


def _same_bucket(wanted: str, actual: str) -> bool:
    if wanted == actual:
        return True
    if ":" not in wanted:
        return actual.rsplit(":", 1)[-1] == wanted
    return False
