"""The static catalog: metadata from a local YAML/JSON file, so the node can
run with no chain (demo, benchmarks, air-gapped tests).

Format (``catalog_schema.json`` beside this module is the full schema)::

    version: 1                     # optional
    storageNodes:                  # storage bucket id -> operator's nodeEndpoint
      "0": http://127.0.0.1:3333/
      "1": {endpoint: http://10.0.0.2:3333/, status: invited, workerId: 4}
    distributionBuckets:           # "family:index" (or plain number) -> operators
      "0:0": {operators: [{workerId: 0, status: ACTIVE}]}
    bags:
      "dynamic:channel:1":
        storageBuckets: ["0"]
        distributionBuckets: ["0:0"]
        objects:
          - {id: "1", size: 1234, ipfsHash: gW..., accepted: true, mimeType: text/vtt}

The short storage node form is an ACTIVE operator; ``status`` is one of
``active`` / ``invited`` / ``missing``, ``accepted`` defaults to true and an
operator's ``status`` to ``ACTIVE``. Quote ids in YAML (``"0:0"``; integers
are accepted for plain numeric ids). Problems are reported all at once, each
naming its place, as ``jsdistributor.config.ConfigError``.

Generated catalogs of many objects are better written as ``*.json``: on
100,000 objects loading JSON takes about a second, YAML ten times longer.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from ..buckets import BucketSelection
from ..cache.hashing import ContentHasher
from ..config import ConfigError
from ..interfaces import IMetadataSource
from ..model import (
    DataObject,
    DistributionBucketOperator,
    MetadataStatus,
    ObjectSummary,
    StorageEndpoint,
    is_valid_object_id,
)
from ._shapes import EndpointFilter
from .dataset import (
    STORAGE_ACTIVE,
    BagRecord,
    Dataset,
    DistributionBucketRecord,
    ObjectRecord,
    StorageBucketRecord,
)

log = Logger()

CATALOG_VERSION = 1

#: What ``get_status`` reports as the package version of a catalog.
CATALOG_PACKAGE_VERSION = "catalog"


# -- reading ------------------------------------------------------------------


#: libyaml's C parser when PyYAML has it (much faster on big catalogs).
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _CatalogLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader without YAML 1.1's base-60 numbers: an unquoted ``0:3``
    would otherwise silently become the integer 3."""


_CatalogLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_CatalogLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_CatalogLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."),
)


def read_catalog_document(path: str | os.PathLike[str]) -> Any:
    """The decoded catalog file (JSON for ``*.json``, YAML otherwise)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(["catalog %s: cannot read: %s" % (path, e)]) from e
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=_CatalogLoader)  # noqa: S506 - a SafeLoader subclass
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(
            ["catalog %s: not valid %s: %s" % (path, "JSON" if path.suffix == ".json" else "YAML", e)]
        ) from e


def load_catalog(path: str | os.PathLike[str]) -> Dataset:
    """Read and validate a catalog file."""
    return parse_catalog(read_catalog_document(path), source="catalog %s" % (path,))


# -- validating -----------------------------------------------------------------


@cache
def catalog_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(files(__package__).joinpath("catalog_schema.json").read_text("utf-8"))
    return loaded


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref[len("#/$defs/") :]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(x, defs) for x in node]
    return node


@cache
def _validators() -> tuple[Draft202012Validator, Draft202012Validator]:
    """Validators of the whole catalog and of one bag (``$ref``s inlined:
    jsonschema is markedly faster without reference resolution)."""
    schema = catalog_schema()
    inlined = _inline_refs(schema, schema["$defs"])
    return Draft202012Validator(inlined), Draft202012Validator(inlined["properties"]["bags"]["additionalProperties"])


_OBJECT_ID = re.compile(r"[0-9]{1,20}")
_DISTRIBUTION_ID = re.compile(r"[0-9]{1,20}(:[0-9]{1,20})?")
_BAG_KEYS = frozenset(("storageBuckets", "distributionBuckets", "objects"))
_OBJECT_KEYS = frozenset(("id", "size", "ipfsHash", "accepted", "mimeType"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _object_ok(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and obj.keys() <= _OBJECT_KEYS
        and isinstance(obj.get("id"), str)
        and _OBJECT_ID.fullmatch(obj["id"]) is not None
        and _is_int(obj.get("size"))
        and obj["size"] >= 0
        and isinstance(obj.get("ipfsHash"), str)
        and len(obj["ipfsHash"]) > 0
        and isinstance(obj.get("accepted", True), bool)
        and ("mimeType" not in obj or (isinstance(obj["mimeType"], str) and len(obj["mimeType"]) > 0))
    )


def bag_is_valid(bag: Any) -> bool:
    """The bag schema, checked by hand: catalogs of many thousands of
    objects validate in a fraction of jsonschema's time. A bag failing it is
    validated again with jsonschema for the messages (tests check that both
    agree)."""
    if not isinstance(bag, dict) or not bag.keys() <= _BAG_KEYS:
        return False
    storage = bag.get("storageBuckets", [])
    distribution = bag.get("distributionBuckets", [])
    objects = bag.get("objects", [])
    return (
        isinstance(storage, list)
        and all(isinstance(b, str) and _OBJECT_ID.fullmatch(b) is not None for b in storage)
        and isinstance(distribution, list)
        and all(isinstance(b, str) and _DISTRIBUTION_ID.fullmatch(b) is not None for b in distribution)
        and isinstance(objects, list)
        and all(_object_ok(o) for o in objects)
    )


def _schema_errors(document: dict[str, Any]) -> list[ValidationError]:
    whole, one_bag = _validators()
    bags = document.get("bags")
    if not isinstance(bags, dict):
        return list(whole.iter_errors(document))
    errors = list(whole.iter_errors({**document, "bags": {bag_id: {} for bag_id in bags}}))
    for bag_id, bag in bags.items():
        if not bag_is_valid(bag):
            for error in one_bag.iter_errors(bag):
                error.path.extendleft((bag_id, "bags"))  # -> ["bags", bag_id, ...]
                errors.append(error)
    return errors


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += "[%d]" % (part,)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            text += ("." if text else "") + str(part)
        else:
            text += "[%s]" % (json.dumps(str(part)),)
    return text or "(top level)"


def _describe_error(error: ValidationError) -> str:
    where = _path(error.absolute_path)
    if error.validator == "oneOf" and error.context:
        # Report the branch that was meant: the one whose type fits.
        deeper = [e for e in error.context if e.validator != "type" or len(e.absolute_path) > len(error.absolute_path)]
        if deeper:
            return _describe_error(max(deeper, key=lambda e: len(e.absolute_path)))
    if error.validator == "pattern":
        description = error.schema.get("description", "a valid id") if isinstance(error.schema, dict) else "a valid id"
        if "propertyNames" in error.schema_path:
            return "%s: key %r is not %s" % (where, error.instance, description)
        return "%s: %r is not %s" % (where, error.instance, description)
    return "%s: %s" % (where, error.message)


def _as_id(value: Any) -> Any:
    """Integers are accepted where ids are expected (YAML's unquoted ``1``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return value


def _coerce_ids(document: Any) -> Any:
    if not isinstance(document, dict):
        return document
    result = dict(document)
    for section in ("storageNodes", "distributionBuckets", "bags"):
        if isinstance(result.get(section), dict):
            result[section] = {_as_id(k): v for k, v in result[section].items()}
    bags = result.get("bags")
    if isinstance(bags, dict):
        coerced = {}
        for bag_id, bag in bags.items():
            if isinstance(bag, dict):
                bag = dict(bag)
                for key in ("storageBuckets", "distributionBuckets"):
                    if isinstance(bag.get(key), list):
                        bag[key] = [_as_id(b) for b in bag[key]]
                if isinstance(bag.get("objects"), list):
                    bag["objects"] = [
                        dict(o, id=_as_id(o["id"])) if isinstance(o, dict) and "id" in o else o for o in bag["objects"]
                    ]
            coerced[bag_id] = bag
        result["bags"] = coerced
    return result


def catalog_problems(document: Any) -> list[str]:
    """Everything wrong with a decoded catalog (empty: valid)."""
    document = _coerce_ids(document)
    if not isinstance(document, dict):
        return ["(top level): the catalog must be a mapping, got %s" % (type(document).__name__,)]
    non_string_keys = [
        "%s: key %r is not a string" % (section, k)
        for section in ("storageNodes", "distributionBuckets", "bags")
        if isinstance(document.get(section), dict)
        for k in document[section]
        if not isinstance(k, str)
    ]
    if non_string_keys:
        return non_string_keys
    problems = [
        _describe_error(e) for e in sorted(_schema_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if problems:
        return problems
    storage = document.get("storageNodes", {})
    distribution = document.get("distributionBuckets", {})
    seen: dict[str, str] = {}
    for bag_id, bag in document.get("bags", {}).items():
        bag_path = _path(["bags", bag_id])
        for i, bucket_id in enumerate(bag.get("storageBuckets", [])):
            if bucket_id not in storage:
                problems.append(
                    "%s.storageBuckets[%d]: unknown storage bucket %r (not in storageNodes)" % (bag_path, i, bucket_id)
                )
        for i, bucket_id in enumerate(bag.get("distributionBuckets", [])):
            if bucket_id not in distribution:
                problems.append(
                    "%s.distributionBuckets[%d]: unknown distribution bucket %r (not in distributionBuckets)"
                    % (bag_path, i, bucket_id)
                )
        for i, obj in enumerate(bag.get("objects", [])):
            where = "%s.objects[%d].id" % (bag_path, i)
            if obj["id"] in seen:
                problems.append("%s: duplicate object id %r (also at %s)" % (where, obj["id"], seen[obj["id"]]))
            else:
                seen[obj["id"]] = where
    return problems


def parse_catalog(document: Any, source: str = "catalog") -> Dataset:
    """Validate a decoded catalog and build its ``Dataset``; ``ConfigError``
    listing every problem (each prefixed with ``source``) otherwise."""
    problems = catalog_problems(document)
    if problems:
        raise ConfigError(["%s: %s" % (source, p) for p in problems])
    document = _coerce_ids(document)
    storage = {}
    for bucket_id, value in document.get("storageNodes", {}).items():
        if isinstance(value, str):
            storage[bucket_id] = StorageBucketRecord(id=bucket_id, endpoint=value)
        else:
            storage[bucket_id] = StorageBucketRecord(
                id=bucket_id,
                endpoint=value.get("endpoint"),
                status=value.get("status", STORAGE_ACTIVE),
                worker_id=value.get("workerId", 0),
            )
    distribution = {
        bucket_id: DistributionBucketRecord(
            id=bucket_id,
            operators=tuple(
                DistributionBucketOperator(worker_id=op["workerId"], status=op.get("status", "ACTIVE"))
                for op in value.get("operators", [])
            ),
        )
        for bucket_id, value in document.get("distributionBuckets", {}).items()
    }
    bags = {
        bag_id: BagRecord(
            id=bag_id,
            storage_buckets=tuple(bag.get("storageBuckets", [])),
            distribution_buckets=tuple(bag.get("distributionBuckets", [])),
            objects=tuple(
                ObjectRecord(
                    id=o["id"],
                    size=o["size"],
                    ipfs_hash=o["ipfsHash"],
                    accepted=o.get("accepted", True),
                    mime_type=o.get("mimeType"),
                )
                for o in bag.get("objects", [])
            ),
        )
        for bag_id, bag in document.get("bags", {}).items()
    }
    return Dataset(storage_buckets=storage, distribution_buckets=distribution, bags=bags)


# -- writing ----------------------------------------------------------------------


def dataset_to_catalog(dataset: Dataset) -> dict[str, Any]:
    """The catalog document of ``dataset`` (``parse_catalog``'s inverse)."""
    storage: dict[str, Any] = {}
    for bucket in dataset.storage_buckets.values():
        if bucket.status == STORAGE_ACTIVE and bucket.endpoint is not None and bucket.worker_id == 0:
            storage[bucket.id] = bucket.endpoint
        else:
            storage[bucket.id] = {"endpoint": bucket.endpoint, "status": bucket.status, "workerId": bucket.worker_id}
    return {
        "version": CATALOG_VERSION,
        "storageNodes": storage,
        "distributionBuckets": {
            b.id: {"operators": [{"workerId": op.worker_id, "status": op.status} for op in b.operators]}
            for b in dataset.distribution_buckets.values()
        },
        "bags": {
            bag.id: {
                "storageBuckets": list(bag.storage_buckets),
                "distributionBuckets": list(bag.distribution_buckets),
                "objects": [_object_entry(o) for o in bag.objects],
            }
            for bag in dataset.bags.values()
        },
    }


def _object_entry(obj: ObjectRecord) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": obj.id, "size": obj.size, "ipfsHash": obj.ipfs_hash, "accepted": obj.accepted}
    if obj.mime_type is not None:
        entry["mimeType"] = obj.mime_type
    return entry


def catalog_entry_for_file(
    path: str | os.PathLike[str] | FilePath,
    object_id: str | None = None,
    accepted: bool = True,
    mime_type: str | None = None,
    chunk_size: int = 1024 * 1024,
) -> dict[str, Any]:
    """A catalog object entry for a file on disk: its size and ``ipfsHash``
    (``id`` included when given)."""
    filename = path.path if isinstance(path, FilePath) else os.fspath(path)
    hasher = ContentHasher()
    with open(filename, "rb") as f:
        while block := f.read(chunk_size):
            hasher.update(block)
    entry: dict[str, Any] = {}
    if object_id is not None:
        if not is_valid_object_id(object_id):
            raise ValueError("%r is not an object id (1-20 decimal digits)" % (object_id,))
        entry["id"] = object_id
    entry.update(size=hasher.bytes_seen, ipfsHash=hasher.ipfs_hash(), accepted=accepted)
    if mime_type is not None:
        entry["mimeType"] = mime_type
    return entry


class CatalogBuilder:
    """Builds a catalog document step by step (demo and benchmark generators)::

    builder = CatalogBuilder()
    builder.add_storage_node("0", "http://127.0.0.1:3333/")
    builder.add_distribution_bucket("0:0", worker_id=0)
    builder.add_bag("dynamic:channel:1", storage_buckets=["0"], distribution_buckets=["0:0"])
    builder.add_file("dynamic:channel:1", "1", "/data/1")
    write_catalog("catalog.yml", builder.build())
    """

    def __init__(self) -> None:
        self._storage: dict[str, Any] = {}
        self._distribution: dict[str, Any] = {}
        self._bags: dict[str, dict[str, Any]] = {}

    def add_storage_node(
        self, bucket_id: str, endpoint: str | None, status: str = STORAGE_ACTIVE, worker_id: int = 0
    ) -> CatalogBuilder:
        if status == STORAGE_ACTIVE and endpoint is not None and worker_id == 0:
            self._storage[bucket_id] = endpoint
        else:
            self._storage[bucket_id] = {"endpoint": endpoint, "status": status, "workerId": worker_id}
        return self

    def add_distribution_bucket(
        self,
        bucket_id: str,
        worker_id: int | None = None,
        status: str = "ACTIVE",
        operators: Iterable[tuple[int, str]] = (),
    ) -> CatalogBuilder:
        ops = [{"workerId": w, "status": s} for w, s in operators]
        if worker_id is not None:
            ops.insert(0, {"workerId": worker_id, "status": status})
        self._distribution[bucket_id] = {"operators": ops}
        return self

    def add_bag(
        self, bag_id: str, storage_buckets: Iterable[str] = (), distribution_buckets: Iterable[str] = ()
    ) -> CatalogBuilder:
        bag = self._bags.setdefault(bag_id, {"storageBuckets": [], "distributionBuckets": [], "objects": []})
        bag["storageBuckets"].extend(b for b in storage_buckets if b not in bag["storageBuckets"])
        bag["distributionBuckets"].extend(b for b in distribution_buckets if b not in bag["distributionBuckets"])
        return self

    def add_object(self, bag_id: str, entry: Mapping[str, Any]) -> CatalogBuilder:
        """Add an object entry (``{"id", "size", "ipfsHash", ...}``) to a bag
        (created empty if needed)."""
        self.add_bag(bag_id)
        self._bags[bag_id]["objects"].append(dict(entry))
        return self

    def add_file(
        self, bag_id: str, object_id: str, path: str | os.PathLike[str] | FilePath, **kwargs: Any
    ) -> CatalogBuilder:
        return self.add_object(bag_id, catalog_entry_for_file(path, object_id, **kwargs))

    def build(self) -> dict[str, Any]:
        """The document, validated (``ConfigError`` if inconsistent)."""
        document = {
            "version": CATALOG_VERSION,
            "storageNodes": dict(self._storage),
            "distributionBuckets": dict(self._distribution),
            "bags": {k: {**v, "objects": list(v["objects"])} for k, v in self._bags.items()},
        }
        parse_catalog(document)
        return document


def write_catalog(path: str | os.PathLike[str], catalog: Mapping[str, Any] | Dataset) -> None:
    """Validate and write a catalog (JSON for ``*.json``, YAML otherwise),
    atomically (temporary file + rename)."""
    document = dataset_to_catalog(catalog) if isinstance(catalog, Dataset) else dict(catalog)
    parse_catalog(document)
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    else:
        text = yaml.dump(document, Dumper=_SafeDumper, sort_keys=False, default_flow_style=None, width=120)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


# -- the metadata source ------------------------------------------------------------


@implementer(IMetadataSource)
class CatalogMetadataSource:
    """Answers from a ``Dataset``, loaded from ``path`` at construction
    (``from_file``) and again on ``reload()``."""

    def __init__(self, dataset: Dataset, path: Path | None = None, url: str | None = None) -> None:
        self.dataset = dataset
        self.path = path
        if url is None:
            url = path.absolute().as_uri() if path is not None else "catalog:"
        self.url = url
        self._endpoint_filter = EndpointFilter()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CatalogMetadataSource:
        path = Path(path)
        dataset = load_catalog(path)
        log.info(
            "catalog {path}: {objects} objects in {bags} bags",
            path=str(path),
            objects=dataset.object_count(),
            bags=len(dataset.bags),
        )
        return cls(dataset, path)

    def reload(self) -> None:
        """Read the file again; on ``ConfigError`` the previous data stays."""
        if self.path is None:
            raise ConfigError(["catalog: built in memory, nothing to reload"])
        self.dataset = load_catalog(self.path)
        log.info("catalog {path} reloaded: {objects} objects", path=str(self.path), objects=self.dataset.object_count())

    def get_object(self, object_id: str) -> Deferred[DataObject | None]:
        return succeed(self.dataset.data_object(object_id, self._endpoint_filter))

    def list_bucket_objects(self, selection: BucketSelection) -> Deferred[dict[str, ObjectSummary]]:
        return succeed(self.dataset.bucket_objects(selection))

    def get_storage_endpoints(self) -> Deferred[list[StorageEndpoint]]:
        return succeed(self.dataset.storage_endpoints(self._endpoint_filter))

    def get_status(self) -> Deferred[MetadataStatus]:
        return succeed(MetadataStatus(url=self.url, reachable=True, package_version=CATALOG_PACKAGE_VERSION))
