"""Metadata sources (jsdistributor.metadata): the storage squid and Hydra
query node over a real GraphQL server on 127.0.0.1, the static catalog, and
the caching primitives.

One fixture (``sample_catalog()``) drives all three implementations: the
conformance tests run the same assertions against each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import attrs
import treq
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.test.proto_helpers import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from jsdistributor.buckets import BucketSelection
from jsdistributor.config import (
    ConfigError,
    Directories,
    Endpoints,
    Intervals,
    Limits,
    Logs,
    NodeConfig,
    PublicApi,
)
from jsdistributor.errors import MetadataUnavailable
from jsdistributor.interfaces import IMetadataSource
from jsdistributor.metadata import (
    CatalogMetadataSource,
    GraphQLClient,
    HydraMetadataSource,
    SquidMetadataSource,
    _shapes,
    make_metadata_source,
)
from jsdistributor.metadata import graphql as graphql_module
from jsdistributor.metadata._shapes import ShapeError, list_field, storage_api_url
from jsdistributor.metadata.caching import SharedLookups, TTLCache
from jsdistributor.metadata.catalog import (
    CatalogBuilder,
    _validators,
    bag_is_valid,
    catalog_entry_for_file,
    catalog_problems,
    dataset_to_catalog,
    load_catalog,
    parse_catalog,
    write_catalog,
)
from jsdistributor.model import (
    DataObject,
    DistributionBucket,
    DistributionBucketOperator,
    MetadataStatus,
    ObjectSummary,
    StorageEndpoint,
)
from jsdistributor.testing.graphql_server import (
    GraphQLResource,
    sample_catalog,
    start_graphql_server,
    stop_graphql_server,
)

EMPTY_HASH = "gW9T5gSXhgQB5LaqmnJrLVVpHawhM7youzHnuY6HyGBDy3"
HELLO_HASH = "gWDTHDubjMwfUeQJEhHXBk8L18UUUjFqXDjnAFgK3Wa52E"

# What the sources must say about sample_catalog().
STORAGE_0 = StorageEndpoint("0", "http://127.0.0.1:3333/api/v1")
STORAGE_1 = StorageEndpoint("1", "https://storage.example:8443/api/v1")
BUCKET_00 = DistributionBucket("0:0", (DistributionBucketOperator(7, "ACTIVE"),))
BUCKET_01 = DistributionBucket(
    "0:1", (DistributionBucketOperator(7, "INVITED"), DistributionBucketOperator(8, "ACTIVE"))
)
BUCKET_10 = DistributionBucket("1:0", (DistributionBucketOperator(8, "ACTIVE"),))
OBJECT_1 = DataObject("1", 1234, EMPTY_HASH, True, (STORAGE_0, STORAGE_1), (BUCKET_00,))
OBJECT_2 = DataObject("2", 5, HELLO_HASH, False, (STORAGE_0, STORAGE_1), (BUCKET_00,))
OBJECT_3 = DataObject("3", 3000000000, "gWbig", True, (STORAGE_1,), (BUCKET_01, BUCKET_10))
OBJECT_4 = DataObject("4", 0, "gWempty", True, (STORAGE_0,), ())
OBJECT_5 = DataObject("5", 77, "gWsubtitle", True, (STORAGE_0, STORAGE_1), (BUCKET_00,), mime_type="text/vtt")


def summaries(*objects: DataObject) -> dict[str, ObjectSummary]:
    return {o.id: ObjectSummary(o.id, o.size, o.ipfs_hash) for o in objects}


def capture_log(test: SynchronousTestCase, module: Any) -> list[dict[str, Any]]:
    """Replace ``module.log`` with a Logger recording its events."""
    events: list[dict[str, Any]] = []
    test.patch(module, "log", Logger(namespace=module.__name__, observer=events.append))
    return events


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


# -- caching primitives (no I/O, task.Clock) ----------------------------------------


class TTLCacheTests(SynchronousTestCase):
    def test_expires_after_ttl(self) -> None:
        clock = Clock()
        cache: TTLCache[str, int] = TTLCache(clock, 10)
        cache.put("a", 1)
        clock.advance(9.9)
        self.assertEqual(cache.get("a"), 1)
        clock.advance(0.1)
        self.assertRaises(KeyError, cache.get, "a")
        self.assertEqual(len(cache), 0)

    def test_caches_none(self) -> None:
        cache: TTLCache[str, None] = TTLCache(Clock(), 10)
        cache.put("missing", None)
        self.assertIsNone(cache.get("missing"))

    def test_zero_ttl_disables(self) -> None:
        cache: TTLCache[str, int] = TTLCache(Clock(), 0)
        cache.put("a", 1)
        self.assertRaises(KeyError, cache.get, "a")

    def test_bounded(self) -> None:
        clock = Clock()
        cache: TTLCache[int, int] = TTLCache(clock, 10, max_entries=3)
        for i in range(5):
            cache.put(i, i)
        self.assertEqual(len(cache), 3)
        self.assertRaises(KeyError, cache.get, 0)
        self.assertEqual(cache.get(4), 4)

    def test_purge_expired_first(self) -> None:
        clock = Clock()
        cache: TTLCache[str, int] = TTLCache(clock, 10, max_entries=2)
        cache.put("old", 1)
        clock.advance(5)
        cache.put("mid", 2)
        clock.advance(6)  # "old" expired, "mid" not
        cache.put("new", 3)
        self.assertEqual(cache.get("mid"), 2)
        self.assertEqual(cache.get("new"), 3)
        self.assertEqual(cache.purge_expired(), 0)


class SharedLookupsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lookups: SharedLookups[str, str] = SharedLookups(self.clock, 60)
        self.fetches: list[Deferred[str]] = []

    def fetch(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.fetches.append(d)
        return d

    def test_cached_within_ttl(self) -> None:
        first = self.lookups.get("k", lambda: succeed("v1"))
        self.assertEqual(self.successResultOf(first), "v1")
        second = self.lookups.get("k", lambda: succeed("v2"))
        self.assertEqual(self.successResultOf(second), "v1")
        self.clock.advance(60)
        third = self.lookups.get("k", lambda: succeed("v3"))
        self.assertEqual(self.successResultOf(third), "v3")

    def test_concurrent_share_one_fetch(self) -> None:
        a = self.lookups.get("k", self.fetch)
        b = self.lookups.get("k", self.fetch)
        self.assertEqual(len(self.fetches), 1)
        self.assertNoResult(a)
        self.assertEqual(self.lookups.in_flight(), 1)
        self.fetches[0].callback("v")
        self.assertEqual(self.successResultOf(a), "v")
        self.assertEqual(self.successResultOf(b), "v")
        self.assertEqual(self.lookups.in_flight(), 0)

    def test_other_keys_fetch_separately(self) -> None:
        self.lookups.get("a", self.fetch)
        self.lookups.get("b", self.fetch)
        self.assertEqual(len(self.fetches), 2)

    def test_cancelling_one_waiter_spares_the_others(self) -> None:
        a = self.lookups.get("k", self.fetch)
        b = self.lookups.get("k", self.fetch)
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.assertFalse(self.fetches[0].called, "the shared fetch was cancelled")
        self.fetches[0].callback("v")
        self.assertEqual(self.successResultOf(b), "v")

    def test_fetch_goes_on_when_every_waiter_cancelled(self) -> None:
        a = self.lookups.get("k", self.fetch)
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.fetches[0].callback("v")
        self.assertEqual(self.successResultOf(self.lookups.get("k", self.fetch)), "v")
        self.assertEqual(len(self.fetches), 1)

    def test_failures_reach_all_and_are_not_cached(self) -> None:
        a = self.lookups.get("k", self.fetch)
        b = self.lookups.get("k", self.fetch)
        self.fetches[0].errback(MetadataUnavailable("down"))
        self.failureResultOf(a, MetadataUnavailable)
        self.failureResultOf(b, MetadataUnavailable)
        c = self.lookups.get("k", self.fetch)
        self.assertEqual(len(self.fetches), 2)
        self.fetches[1].callback("v")
        self.assertEqual(self.successResultOf(c), "v")

    def test_fetch_raising_synchronously(self) -> None:
        def boom() -> Deferred[str]:
            raise MetadataUnavailable("sync")

        self.failureResultOf(self.lookups.get("k", boom), MetadataUnavailable)
        self.assertEqual(self.lookups.in_flight(), 0)

    def test_waiter_may_look_up_again_from_its_callback(self) -> None:
        seen: list[str] = []
        d = self.lookups.get("k", self.fetch)
        d.addCallback(lambda v: self.lookups.get("k", self.fetch).addCallback(seen.append))
        self.fetches[0].callback("v")
        self.assertEqual(seen, ["v"])
        self.assertEqual(len(self.fetches), 1)


# -- shapes and endpoints ------------------------------------------------------------------


class EndpointTests(SynchronousTestCase):
    def test_api_root(self) -> None:
        self.assertEqual(storage_api_url("http://h:3333/"), "http://h:3333/api/v1")
        self.assertEqual(storage_api_url("http://h:3333"), "http://h:3333/api/v1")
        self.assertEqual(storage_api_url("https://h/storage//"), "https://h/storage/api/v1")
        self.assertEqual(storage_api_url(" HTTPS://h/ "), "HTTPS://h/api/v1")

    def test_non_http_rejected(self) -> None:
        for endpoint in ("ipfs://x", "ftp://h/", "h:3333", "", "http://", "javascript:alert(1)", "http://[::1"):
            self.assertIsNone(storage_api_url(endpoint), endpoint)

    @given(st.text(max_size=60))
    @settings(deadline=None)
    def test_never_raises(self, endpoint: str) -> None:
        url = storage_api_url(endpoint)
        if url is not None:
            self.assertTrue(url.lower().startswith(("http://", "https://")))
            self.assertTrue(url.endswith("/api/v1"))


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers(-5, 10**12) | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
        max_leaves=12,
    )


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found.extend(_paths(v, prefix + (k,)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.extend(_paths(v, prefix + (i,)))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


class _FakeClient:
    url = "http://fake/graphql"


def _valid_answers() -> dict[str, tuple[Callable[[Any], Any], dict[str, Any]]]:
    """Answers of the real server for the sample, with the parser reading them."""
    from jsdistributor.metadata._shapes import load_document

    dataset = parse_catalog(sample_catalog())
    squid = SquidMetadataSource(_FakeClient(), Clock())  # type: ignore[arg-type]
    hydra = HydraMetadataSource(_FakeClient(), Clock())  # type: ignore[arg-type]
    squid_server = GraphQLResource.for_dialect("squid", dataset)
    hydra_server = GraphQLResource.for_dialect("hydra", dataset)
    squid_doc = load_document("squid_queries.graphql")
    hydra_doc = load_document("hydra_queries.graphql")
    return {
        "squid object": (
            squid._read_object,
            squid_server.execute(squid_doc, "getDataObjectDetails", {"id": "3"})["data"],
        ),
        "squid bags": (
            lambda data: squid._read_bag_objects(data, {}),
            squid_server.execute(
                squid_doc, "getDataObjectsWithBagsByIds", {"bagIds": ["dynamic:channel:1"], "limit": 1}
            )["data"],
        ),
        "squid buckets": (
            lambda data: squid._read_bag_ids(list_field(data, "distributionBuckets", "data")),
            squid_server.execute(squid_doc, "getDistributionBucketsWithBagsByWorkerId", {"workerId": 8})["data"],
        ),
        "squid operators": (
            squid._read_storage_endpoints,
            squid_server.execute(squid_doc, "getActiveStorageBucketOperatorsData", {})["data"],
        ),
        "hydra object": (
            hydra._read_object,
            hydra_server.execute(hydra_doc, "getDataObjectDetails", {"id": "3"})["data"],
        ),
        "hydra buckets": (
            lambda data: hydra._read_bucket_objects(list_field(data, "distributionBuckets", "data")),
            hydra_server.execute(hydra_doc, "getDistributionBucketsWithObjectsByIds", {"ids": ["0:1"]})["data"],
        ),
        "hydra page": (
            lambda data: hydra._read_page(data, None),
            hydra_server.execute(hydra_doc, "getActiveStorageBucketOperatorsData", {"limit": 2})["data"],
        ),
    }


_ANSWERS = _valid_answers()


class ShapeTests(SynchronousTestCase):
    """Answers of unexpected shapes raise ShapeError, nothing else."""

    def test_valid_answers_parse(self) -> None:
        for name, (read, data) in _ANSWERS.items():
            try:
                read(data)
            except ShapeError as e:
                self.fail("%s: a valid answer was refused: %s" % (name, e))

    @given(st.sampled_from(sorted(_ANSWERS)), st.data(), _json_values())
    @settings(deadline=None, max_examples=300)
    def test_mutated_answers(self, name: str, data: st.DataObject, new: Any) -> None:
        read, answer = _ANSWERS[name]
        path = data.draw(st.sampled_from(_paths(answer)))
        try:
            read(_replaced(answer, path, new))
        except ShapeError:
            pass

    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "storageDataObjectByUniqueInput",
                    "storageBags",
                    "distributionBuckets",
                    "storageBuckets",
                    "storageBucketsConnection",
                    "x",
                ]
            ),
            _json_values(),
        )
    )
    @settings(deadline=None)
    def test_random_answers(self, answer: dict[str, Any]) -> None:
        for read, _ in _ANSWERS.values():
            try:
                read(answer)
            except ShapeError:
                pass


# -- the catalog file --------------------------------------------------------------------


class CatalogValidationTests(SynchronousTestCase):
    def problems(self, mutate: Callable[[dict[str, Any]], Any]) -> list[str]:
        catalog = sample_catalog()
        mutate(catalog)
        return catalog_problems(catalog)

    def assertOneProblem(self, mutate: Callable[[dict[str, Any]], Any], *parts: str) -> None:
        problems = self.problems(mutate)
        self.assertEqual(len(problems), 1, problems)
        for part in parts:
            self.assertIn(part, problems[0])

    def test_sample_is_valid(self) -> None:
        self.assertEqual(catalog_problems(sample_catalog()), [])

    def test_unknown_storage_bucket(self) -> None:
        self.assertOneProblem(
            lambda c: c["bags"]["static:council"]["storageBuckets"].append("9"),
            'bags["static:council"].storageBuckets[1]',
            "unknown storage bucket '9'",
        )

    def test_unknown_distribution_bucket(self) -> None:
        self.assertOneProblem(
            lambda c: c["bags"]["dynamic:channel:2"]["distributionBuckets"].append("3:3"),
            'bags["dynamic:channel:2"].distributionBuckets[2]',
            "unknown distribution bucket '3:3'",
        )

    def test_duplicate_object_id(self) -> None:
        self.assertOneProblem(
            lambda c: c["bags"]["static:council"]["objects"].append({"id": "3", "size": 1, "ipfsHash": "x"}),
            'bags["static:council"].objects[1].id',
            "duplicate object id '3'",
            'also at bags["dynamic:channel:2"].objects[0].id',
        )

    def test_non_digit_object_id(self) -> None:
        self.assertOneProblem(
            lambda c: c["bags"]["static:council"]["objects"][0].update(id="4a"),
            'bags["static:council"].objects[0].id',
            "'4a' is not an object id",
        )

    def test_non_digit_bucket_ids(self) -> None:
        self.assertOneProblem(
            lambda c: c["storageNodes"].update(x="http://h/"), "storageNodes: key 'x' is not a storage bucket id"
        )
        self.assertOneProblem(
            lambda c: c["distributionBuckets"].update({"a:b": {}}),
            "distributionBuckets: key 'a:b' is not a distribution bucket id",
        )

    def test_schema_errors(self) -> None:
        self.assertOneProblem(
            lambda c: c["bags"]["static:council"]["objects"][0].update(size=-1),
            'bags["static:council"].objects[0].size',
            "minimum",
        )
        self.assertOneProblem(
            lambda c: c["bags"]["static:council"]["objects"][0].pop("ipfsHash"),
            'bags["static:council"].objects[0]',
            "'ipfsHash' is a required property",
        )
        self.assertOneProblem(lambda c: c.update(extra=1), "(top level)", "'extra' was unexpected")
        self.assertOneProblem(
            lambda c: c["storageNodes"].update({"1": {"endpoint": 5}}), 'storageNodes["1"].endpoint', "not of type"
        )
        self.assertOneProblem(
            lambda c: c["distributionBuckets"]["0:0"]["operators"][0].update(status="BUSY"),
            'distributionBuckets["0:0"].operators[0].status',
        )

    def test_not_a_mapping(self) -> None:
        self.assertEqual(len(catalog_problems(["a"])), 1)
        self.assertIn("must be a mapping", catalog_problems(None)[0])

    def test_several_problems_at_once(self) -> None:
        def mutate(c: dict[str, Any]) -> None:
            c["bags"]["static:council"]["storageBuckets"].append("9")
            c["bags"]["static:council"]["objects"].append({"id": "1", "size": 1, "ipfsHash": "x"})

        self.assertEqual(len(self.problems(mutate)), 2)

    def test_parse_raises_config_error_naming_source(self) -> None:
        catalog = sample_catalog()
        catalog["bags"]["static:council"]["storageBuckets"] = ["9"]
        error = self.assertRaises(ConfigError, parse_catalog, catalog, "catalog /x.yml")
        self.assertEqual(len(error.problems), 1)
        self.assertTrue(error.problems[0].startswith("catalog /x.yml: "))

    def test_integer_ids_accepted(self) -> None:
        dataset = parse_catalog(
            {
                "storageNodes": {0: "http://h/"},
                "distributionBuckets": {5: {}},
                "bags": {
                    "b": {
                        "storageBuckets": [0],
                        "distributionBuckets": [5],
                        "objects": [{"id": 1, "size": 1, "ipfsHash": "x"}],
                    }
                },
            }
        )
        self.assertEqual(
            dataset.data_object("1"),
            DataObject("1", 1, "x", True, (StorageEndpoint("0", "http://h/api/v1"),), (DistributionBucket("5"),)),
        )

    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "storageBuckets": st.lists(st.sampled_from(["0", "x", 1, "01"]), max_size=2),
                "distributionBuckets": st.lists(st.sampled_from(["0:0", "1", "a:b", "0:", None]), max_size=2),
                "objects": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "id": st.sampled_from(["1", "12345678901234567890", "123456789012345678901", "", "a", 1]),
                            "size": st.sampled_from([0, 5, -1, True, 1.5, "3"]),
                            "ipfsHash": st.sampled_from(["h", "", 3]),
                            "accepted": st.sampled_from([True, False, None, 1]),
                            "mimeType": st.sampled_from(["text/vtt", "", None]),
                            "other": st.just(1),
                        },
                    ),
                    max_size=2,
                ),
                "extra": st.just(1),
            },
        )
    )
    @settings(deadline=None, max_examples=300)
    def test_fast_bag_check_agrees_with_schema(self, bag: dict[str, Any]) -> None:
        _, one_bag = _validators()
        self.assertEqual(bag_is_valid(bag), one_bag.is_valid(bag), bag)


class CatalogFileTests(SynchronousTestCase):
    def test_yaml_round_trip(self) -> None:
        path = Path(self.mktemp() + ".yml")
        write_catalog(path, sample_catalog())
        self.assertEqual(dataset_to_catalog(load_catalog(path)), dataset_to_catalog(parse_catalog(sample_catalog())))

    def test_json_round_trip(self) -> None:
        path = Path(self.mktemp() + ".json")
        dataset = parse_catalog(sample_catalog())
        write_catalog(path, dataset)
        self.assertEqual(json.loads(path.read_text())["version"], 1)
        self.assertEqual(load_catalog(path), dataset)

    def test_write_refuses_invalid(self) -> None:
        path = Path(self.mktemp() + ".yml")
        self.assertRaises(ConfigError, write_catalog, path, {"bags": {"b": {"storageBuckets": ["1"]}}})
        self.assertFalse(path.exists())

    def test_unquoted_yaml_ids_stay_strings(self) -> None:
        """YAML 1.1 would read ``0:1`` as the base-60 integer 1."""
        path = Path(self.mktemp() + ".yaml")
        path.write_text(
            "storageNodes:\n  0: http://h/\ndistributionBuckets:\n  0:1: {operators: [{workerId: 3}]}\n"
            "bags:\n  dynamic:channel:1:\n    storageBuckets: [0]\n    distributionBuckets: [0:1]\n"
            "    objects:\n      - {id: 1, size: 2, ipfsHash: h}\n"
        )
        dataset = load_catalog(path)
        self.assertEqual(list(dataset.distribution_buckets), ["0:1"])
        obj = dataset.data_object("1")
        assert obj is not None
        self.assertEqual(
            obj.distribution_buckets, (DistributionBucket("0:1", (DistributionBucketOperator(3, "ACTIVE"),)),)
        )

    def test_syntax_errors(self) -> None:
        path = Path(self.mktemp() + ".yml")
        path.write_text("bags: [unclosed\n")
        error = self.assertRaises(ConfigError, load_catalog, path)
        self.assertIn("not valid YAML", error.problems[0])
        json_path = Path(self.mktemp() + ".json")
        json_path.write_text("{")
        self.assertIn("not valid JSON", self.assertRaises(ConfigError, load_catalog, json_path).problems[0])
        missing = Path(self.mktemp())
        self.assertIn("cannot read", self.assertRaises(ConfigError, load_catalog, missing).problems[0])

    def test_reload(self) -> None:
        path = Path(self.mktemp() + ".yml")
        write_catalog(path, sample_catalog())
        source = CatalogMetadataSource.from_file(path)
        self.assertIsNone(self.successResultOf(source.get_object("77")))
        catalog = sample_catalog()
        catalog["bags"]["static:council"]["objects"].append({"id": "77", "size": 1, "ipfsHash": "x"})
        write_catalog(path, catalog)
        source.reload()
        self.assertEqual(self.successResultOf(source.get_object("77")).size, 1)  # type: ignore[union-attr]
        path.write_text("bags: {b: {storageBuckets: ['5']}}\n")
        self.assertRaises(ConfigError, source.reload)
        self.assertEqual(self.successResultOf(source.get_object("77")).size, 1, "kept the old data")  # type: ignore[union-attr]

    def test_entry_for_file(self) -> None:
        empty = Path(self.mktemp())
        empty.write_bytes(b"")
        self.assertEqual(catalog_entry_for_file(empty), {"size": 0, "ipfsHash": EMPTY_HASH, "accepted": True})
        hello = Path(self.mktemp())
        hello.write_bytes(b"hello")
        self.assertEqual(
            catalog_entry_for_file(hello, "9", mime_type="text/plain", chunk_size=2),
            {"id": "9", "size": 5, "ipfsHash": HELLO_HASH, "accepted": True, "mimeType": "text/plain"},
        )
        self.assertRaises(ValueError, catalog_entry_for_file, hello, "x")

    def test_builder(self) -> None:
        hello = Path(self.mktemp())
        hello.write_bytes(b"hello")
        document = (
            CatalogBuilder()
            .add_storage_node("0", "http://127.0.0.1:3333/")
            .add_storage_node("1", "http://h/", status="invited", worker_id=2)
            .add_distribution_bucket("0:0", worker_id=0)
            .add_bag("dynamic:channel:1", storage_buckets=["0", "1"], distribution_buckets=["0:0"])
            .add_file("dynamic:channel:1", "1", hello)
            .add_object("static:council", {"id": "2", "size": 0, "ipfsHash": EMPTY_HASH})
            .build()
        )
        source = CatalogMetadataSource(parse_catalog(document))
        self.assertEqual(
            self.successResultOf(source.get_object("1")),
            DataObject(
                "1",
                5,
                HELLO_HASH,
                True,
                (StorageEndpoint("0", "http://127.0.0.1:3333/api/v1"),),
                (DistributionBucket("0:0", (DistributionBucketOperator(0, "ACTIVE"),)),),
            ),
        )
        self.assertEqual(
            self.successResultOf(source.list_bucket_objects(BucketSelection(worker_id=0))),
            {"1": ObjectSummary("1", 5, HELLO_HASH)},
        )
        builder = CatalogBuilder().add_bag("b", storage_buckets=["3"])
        self.assertRaises(ConfigError, builder.build)

    def test_status(self) -> None:
        path = Path(self.mktemp() + ".yml")
        write_catalog(path, sample_catalog())
        status = self.successResultOf(CatalogMetadataSource.from_file(path).get_status())
        self.assertEqual(
            status, MetadataStatus(url=path.absolute().as_uri(), reachable=True, package_version="catalog")
        )
        self.assertTrue(status.url.startswith("file:///"))


# -- the factory ---------------------------------------------------------------------------


def node_config(endpoints: Endpoints, timeout_ms: int = 5000, ttl: int = 60) -> NodeConfig:
    return NodeConfig(
        id="test",
        endpoints=endpoints,
        directories=Directories(assets=Path("/tmp/a"), cache_state=Path("/tmp/s")),
        logs=Logs(),
        limits=Limits(storage=1, outbound_requests_timeout_ms=timeout_ms, query_node_cache_ttl=ttl),
        intervals=Intervals(),
        public_api=PublicApi(port=3334),
    )


class FactoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = HTTPConnectionPool(self.reactor)

    def test_squid(self) -> None:
        config = node_config(Endpoints(storage_squid="http://squid/graphql", query_node="http://qn/graphql"), 1500)
        source = make_metadata_source(config, self.reactor, self.pool)
        self.assertIsInstance(source, SquidMetadataSource)
        self.assertTrue(IMetadataSource.providedBy(source))
        self.assertEqual(source.url, "http://squid/graphql")
        self.assertEqual(source.client.timeout, 1.5)  # type: ignore[attr-defined]

    def test_hydra(self) -> None:
        source = make_metadata_source(node_config(Endpoints(query_node="http://qn/graphql")), self.reactor, self.pool)
        self.assertIsInstance(source, HydraMetadataSource)
        self.assertTrue(IMetadataSource.providedBy(source))

    def test_catalog(self) -> None:
        path = Path(self.mktemp() + ".yml")
        write_catalog(path, sample_catalog())
        source = make_metadata_source(node_config(Endpoints(catalog=path)), self.reactor, self.pool)
        self.assertIsInstance(source, CatalogMetadataSource)
        self.assertTrue(IMetadataSource.providedBy(source))

    def test_none(self) -> None:
        self.assertRaises(ConfigError, make_metadata_source, node_config(Endpoints()), self.reactor, self.pool)

    def test_ttl_from_config(self) -> None:
        clock = Clock()
        config = node_config(Endpoints(storage_squid="http://squid/graphql"), ttl=7)
        source = make_metadata_source(config, self.reactor, self.pool, clock=clock)
        self.assertEqual(source._objects.cache.ttl, 7)  # type: ignore[attr-defined]


# -- over real sockets ---------------------------------------------------------------------


class _Servers:
    """Starts GraphQL servers and clients on 127.0.0.1, cleaned up after the test."""

    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.pool = HTTPConnectionPool(reactor)
        test.addCleanup(self.pool.closeCachedConnections)

    def http(self) -> Any:
        return treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    async def serve(self, dialect: str, catalog: dict[str, Any] | None = None) -> tuple[GraphQLResource, str]:
        dataset = parse_catalog(catalog if catalog is not None else sample_catalog())
        resource = GraphQLResource.for_dialect(dialect, dataset, reactor)  # type: ignore[arg-type]
        port, url = await start_graphql_server(reactor, dialect, resource=resource)  # type: ignore[arg-type]
        # Cleanups run last-in first-out: the client pool closes first.
        self.test.addCleanup(stop_graphql_server, port)
        return resource, url

    async def serve_fixed(self, status: int, body: bytes) -> str:
        """A server answering every POST with ``status`` and ``body``."""

        class Fixed(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                request.setResponseCode(status)
                request.setHeader(b"content-type", b"application/json")
                return body

        port = reactor.listenTCP(0, Site(Fixed()), interface="127.0.0.1")
        self.test.addCleanup(port.stopListening)
        return "http://127.0.0.1:%d/graphql" % (port.getHost().port,)

    def client(self, url: str, timeout: float = 5.0) -> GraphQLClient:
        return GraphQLClient(url, reactor, self.http(), timeout)

    def source(self, dialect: str, url: str, timeout: float = 5.0, **kwargs: Any) -> Any:
        cls = SquidMetadataSource if dialect == "squid" else HydraMetadataSource
        clock = kwargs.pop("clock", reactor)
        return cls(self.client(url, timeout), clock, **kwargs)


class _ConformanceTests:
    """The same answers from every implementation for sample_catalog()."""

    kind: str

    async def setUp(self) -> None:
        test: Any = self
        self.resource: GraphQLResource | None = None
        if self.kind == "catalog":
            path = Path(test.mktemp() + ".yml")
            write_catalog(path, sample_catalog())
            self.source = CatalogMetadataSource.from_file(path)
        else:
            servers = _Servers(test)
            self.resource, url = await servers.serve(self.kind)
            self.source = servers.source(self.kind, url)

    def tearDown(self) -> None:
        if self.resource is not None:
            test: Any = self
            test.assertEqual(self.resource.errors, [], "the node's documents did not validate")

    def expected(self, obj: DataObject) -> DataObject:
        # The Giza documents do not ask for the subtitle mime type.
        return attrs.evolve(obj, mime_type=None) if self.kind == "hydra" else obj

    async def test_provides_interface(self) -> None:
        test: Any = self
        test.assertTrue(IMetadataSource.providedBy(self.source))

    async def test_found(self) -> None:
        test: Any = self
        for obj in (OBJECT_1, OBJECT_3, OBJECT_4, OBJECT_5):
            test.assertEqual(await self.source.get_object(obj.id), self.expected(obj))

    async def test_not_found(self) -> None:
        test: Any = self
        test.assertIsNone(await self.source.get_object("999"))
        test.assertIsNone(await self.source.get_object("not-an-id"))

    async def test_not_accepted(self) -> None:
        test: Any = self
        obj = await self.source.get_object("2")
        test.assertEqual(obj, OBJECT_2)
        test.assertFalse(obj.is_accepted)

    async def test_supported_by_buckets_and_worker(self) -> None:
        test: Any = self
        one = await self.source.get_object("1")
        three = await self.source.get_object("3")
        selection = BucketSelection(buckets=("0:0",))
        test.assertEqual((selection.supports(one), selection.supports(three)), (True, False))
        selection.set_buckets(["1:0"])
        test.assertEqual((selection.supports(one), selection.supports(three)), (False, True))
        selection.set_buckets([1])  # bare index: 0:1
        test.assertEqual((selection.supports(one), selection.supports(three)), (False, True))
        selection.set_buckets(None)
        selection.set_worker(8)
        test.assertEqual((selection.supports(one), selection.supports(three)), (False, True))
        selection.set_worker(7)  # INVITED on 0:1 does not count
        test.assertEqual((selection.supports(one), selection.supports(three)), (True, False))
        # The object details did not depend on the selection.
        test.assertEqual(await self.source.get_object("3"), three)

    async def test_list_bucket_objects(self) -> None:
        test: Any = self
        cases = [
            (BucketSelection(buckets=("0:0",)), summaries(OBJECT_1, OBJECT_2, OBJECT_5)),
            (BucketSelection(buckets=("0:0", "1:0")), summaries(OBJECT_1, OBJECT_2, OBJECT_3, OBJECT_5)),
            (BucketSelection(buckets=("1:5",)), {}),
            (BucketSelection(buckets=()), {}),
            (BucketSelection(worker_id=8), summaries(OBJECT_3)),
            (BucketSelection(worker_id=7), summaries(OBJECT_1, OBJECT_2, OBJECT_5)),
            (BucketSelection(worker_id=99), {}),
            (BucketSelection(), {}),
            (BucketSelection(buckets=("1",), worker_id=8), summaries(OBJECT_3)),
        ]
        for selection, expected in cases:
            test.assertEqual(await self.source.list_bucket_objects(selection), expected, selection)

    async def test_listing_follows_selection_changes(self) -> None:
        test: Any = self
        selection = BucketSelection(buckets=("0:0",))
        test.assertEqual(set(await self.source.list_bucket_objects(selection)), {"1", "2", "5"})
        selection.set_buckets(["1:0"])
        test.assertEqual(set(await self.source.list_bucket_objects(selection)), {"3"})
        selection.set_buckets(None)
        selection.set_worker(7)
        test.assertEqual(set(await self.source.list_bucket_objects(selection)), {"1", "2", "5"})
        selection.set_worker(8)
        test.assertEqual(set(await self.source.list_bucket_objects(selection)), {"3"})

    async def test_storage_endpoints(self) -> None:
        test: Any = self
        endpoints = await self.source.get_storage_endpoints()
        test.assertEqual(sorted(endpoints, key=lambda e: e.bucket_id), [STORAGE_0, STORAGE_1])

    async def test_non_http_endpoint_logged_once(self) -> None:
        test: Any = self
        events = capture_log(test, _shapes)
        if self.kind != "catalog":
            source: Any = self.source
            for lookups in (source._objects, source._endpoints):
                lookups.cache.ttl = 0  # parse every answer again
        for _ in range(2):
            await self.source.get_object("1")
            await self.source.get_storage_endpoints()
        logged = [m for m in messages(events) if "ipfs://not-http" in m]
        test.assertEqual(len(logged), 1, messages(events))
        test.assertIn("storage bucket 2", logged[0])

    async def test_status(self) -> None:
        test: Any = self
        status = await self.source.get_status()
        test.assertTrue(status.reachable)
        test.assertEqual(status.url, self.source.url)
        test.assertEqual(status.as_json()["status"], "ok")


class SquidConformanceTests(_ConformanceTests, TestCase):
    kind = "squid"


class HydraConformanceTests(_ConformanceTests, TestCase):
    kind = "hydra"


class CatalogConformanceTests(_ConformanceTests, TestCase):
    kind = "catalog"


def _big_catalog(bags: int) -> dict[str, Any]:
    return {
        "storageNodes": {"0": "http://127.0.0.1:3333/"},
        "distributionBuckets": {"0:0": {"operators": [{"workerId": 1, "status": "ACTIVE"}]}},
        "bags": {
            "dynamic:channel:%d" % i: {
                "storageBuckets": ["0"],
                "distributionBuckets": ["0:0"],
                "objects": [{"id": str(i + 1), "size": i, "ipfsHash": "h%d" % i}],
            }
            for i in range(bags)
        },
    }


class SquidTests(TestCase):
    async def setUp(self) -> None:
        self.servers = _Servers(self)

    async def test_documents_sent_whole_with_operation_name(self) -> None:
        resource, url = await self.servers.serve("squid")
        source = self.servers.source("squid", url)
        await source.get_object("1")
        self.assertEqual(resource.requests, [("getDataObjectDetails", {"id": "1"})])
        self.assertEqual(resource.errors, [])

    async def test_batches_of_1000_bags_one_at_a_time(self) -> None:
        resource, url = await self.servers.serve("squid", _big_catalog(2500))
        resource.response_delay = 0.01
        source = self.servers.source("squid", url)
        objects = await source.list_bucket_objects(BucketSelection(worker_id=1))
        self.assertEqual(len(objects), 2500)
        self.assertEqual(objects["2500"], ObjectSummary("2500", 2499, "h2499"))
        self.assertEqual(
            resource.operations(), ["getDistributionBucketsWithBagsByWorkerId"] + ["getDataObjectsWithBagsByIds"] * 3
        )
        batches = [variables for _, variables in resource.requests[1:]]
        self.assertEqual([len(b["bagIds"]) for b in batches], [1000, 1000, 500])
        self.assertEqual([b["limit"] for b in batches], [1000, 1000, 500])
        self.assertEqual(len({bag for b in batches for bag in b["bagIds"]}), 2500)
        self.assertEqual(resource.max_in_flight, 1, "batches were sent concurrently")
        self.assertEqual(resource.errors, [])

    async def test_small_batches(self) -> None:
        resource, url = await self.servers.serve("squid")
        source = self.servers.source("squid", url, batch_size=1)
        objects = await source.list_bucket_objects(BucketSelection(buckets=("0:1", "1:0", "0:0")))
        self.assertEqual(set(objects), {"1", "2", "3", "5"})
        self.assertEqual(resource.operations().count("getDataObjectsWithBagsByIds"), 2)  # two distinct bags
        self.assertEqual(resource.requests[0], ("getDistributionBucketsWithBagsByIds", {"ids": ["0:1", "1:0", "0:0"]}))

    async def test_bare_indices(self) -> None:
        """Bare ``N``: the by-id query finds plain numeric ids; other families
        are found through the worker's buckets, and only with a worker id."""
        catalog = sample_catalog()
        catalog["distributionBuckets"]["6"] = {"operators": []}
        catalog["bags"]["static:council"]["distributionBuckets"] = ["6"]
        resource, url = await self.servers.serve("squid", catalog)
        source = self.servers.source("squid", url)
        events = capture_log(self, sys_modules("jsdistributor.metadata._source"))
        self.assertEqual(set(await source.list_bucket_objects(BucketSelection(buckets=("6",)))), {"4"})
        self.assertEqual(set(await source.list_bucket_objects(BucketSelection(buckets=("0",)))), set())
        self.assertEqual(set(await source.list_bucket_objects(BucketSelection(buckets=("0", "1")))), set())
        self.assertEqual(len([m for m in messages(events) if "bare indices" in m]), 1)
        resource.reset_log()
        found = await source.list_bucket_objects(BucketSelection(buckets=("0",), worker_id=7))
        self.assertEqual(set(found), {"1", "2", "5"})
        self.assertEqual(
            resource.operations(),
            [
                "getDistributionBucketsWithBagsByIds",
                "getDistributionBucketsWithBagsByWorkerId",
                "getDataObjectsWithBagsByIds",
            ],
        )

    async def test_status(self) -> None:
        resource, url = await self.servers.serve("squid")
        resource.squid_height = 4321
        resource.squid_version = "4.2.0"
        status = await self.servers.source("squid", url).get_status()
        self.assertEqual(status, MetadataStatus(url, True, 4321, 4321, "4.2.0"))
        self.assertEqual(set(resource.operations()), {"squidStatus", "getSquidVersion"})

    async def test_status_unreachable_never_fails(self) -> None:
        resource, url = await self.servers.serve("squid")
        resource.fail_mode = "http_500"
        self.addCleanup(self.flushLoggedErrors)
        status = await self.servers.source("squid", url).get_status()
        self.assertFalse(status.reachable)
        self.assertEqual(status.url, url)
        self.assertIn("HTTP 500", status.error)
        self.assertEqual(status.as_json()["status"], "unreachable")

    async def test_cached_within_ttl(self) -> None:
        """The TTL runs on an injected Clock; the HTTP on the real reactor."""
        resource, url = await self.servers.serve("squid")
        clock = Clock()
        source = self.servers.source("squid", url, clock=clock, cache_ttl=60)
        first = await source.get_object("1")
        self.assertEqual(await source.get_object("1"), first)
        self.assertEqual(resource.request_count, 1)
        self.assertIsNone(await source.get_object("999"))
        self.assertIsNone(await source.get_object("999"))
        self.assertEqual(resource.request_count, 2, "not-found answers are cached too")
        clock.advance(60)
        await source.get_object("1")
        self.assertEqual(resource.request_count, 3)
        selection = BucketSelection(buckets=("0:0",))
        await source.list_bucket_objects(selection)
        count = resource.request_count
        await source.list_bucket_objects(BucketSelection(buckets=("0:0",)))
        self.assertEqual(resource.request_count, count, "same selection value: cached")
        selection.set_buckets(["1:0"])
        self.assertEqual(set(await source.list_bucket_objects(selection)), {"3"})
        self.assertGreater(resource.request_count, count)
        await source.get_storage_endpoints()
        await source.get_storage_endpoints()
        self.assertEqual(resource.operations().count("getActiveStorageBucketOperatorsData"), 1)

    async def test_concurrent_lookups_share_one_request(self) -> None:
        resource, url = await self.servers.serve("squid")
        resource.response_delay = 0.05
        source = self.servers.source("squid", url)
        first, second, third = source.get_object("3"), source.get_object("3"), source.get_object("3")
        first.cancel()
        self.assertEqual(await second, OBJECT_3)
        self.assertEqual(await third, OBJECT_3)
        self.failureResultOf(first, CancelledError)
        self.assertEqual(resource.request_count, 1)

    async def test_failures_not_cached(self) -> None:
        resource, url = await self.servers.serve("squid")
        source = self.servers.source("squid", url)
        resource.fail_mode = "graphql_error"
        with self.assertRaises(MetadataUnavailable):
            await source.get_object("1")
        resource.fail_mode = None
        self.assertEqual(await source.get_object("1"), OBJECT_1)
        self.assertEqual(resource.request_count, 2)


def sys_modules(name: str) -> Any:
    import sys

    return sys.modules[name]


class HydraTests(TestCase):
    async def setUp(self) -> None:
        self.servers = _Servers(self)

    async def test_cursor_pagination(self) -> None:
        catalog = sample_catalog()
        for i in range(5, 10):
            catalog["storageNodes"][str(i)] = "http://s%d.example/" % (i,)
        resource, url = await self.servers.serve("hydra", catalog)
        source = self.servers.source("hydra", url, page_size=2)
        endpoints = await source.get_storage_endpoints()
        # Active buckets 0, 1, 2 (ipfs: skipped), 5..9: 8 buckets, 4 pages.
        self.assertEqual([e.bucket_id for e in endpoints], ["0", "1", "5", "6", "7", "8", "9"])
        self.assertEqual(endpoints[2], StorageEndpoint("5", "http://s5.example/api/v1"))
        self.assertEqual(
            resource.requests,
            [
                ("getActiveStorageBucketOperatorsData", {"limit": 2, "lastCursor": None}),
                ("getActiveStorageBucketOperatorsData", {"limit": 2, "lastCursor": "cursor:1"}),
                ("getActiveStorageBucketOperatorsData", {"limit": 2, "lastCursor": "cursor:3"}),
                ("getActiveStorageBucketOperatorsData", {"limit": 2, "lastCursor": "cursor:5"}),
            ],
        )
        self.assertEqual(resource.errors, [])

    async def test_pagination_without_progress(self) -> None:
        body = json.dumps(
            {"data": {"storageBucketsConnection": {"edges": [], "pageInfo": {"hasNextPage": True, "endCursor": None}}}}
        ).encode()
        url = await self.servers.serve_fixed(200, body)
        events = capture_log(self, sys_modules("jsdistributor.metadata._source"))
        source = self.servers.source("hydra", url)
        with self.assertRaises(MetadataUnavailable) as caught:
            await source.get_storage_endpoints()
        self.assertIn("hasNextPage without a new endCursor", str(caught.exception))
        self.assertEqual(len(events), 1)

    async def test_listing_uses_nested_documents(self) -> None:
        resource, url = await self.servers.serve("hydra")
        source = self.servers.source("hydra", url)
        await source.list_bucket_objects(BucketSelection(buckets=("0:0",)))
        await source.list_bucket_objects(BucketSelection(worker_id=8))
        self.assertEqual(
            resource.requests,
            [
                ("getDistributionBucketsWithObjectsByIds", {"ids": ["0:0"]}),
                ("getDistributionBucketsWithObjectsByWorkerId", {"workerId": 8}),
            ],
        )

    async def test_status(self) -> None:
        resource, url = await self.servers.serve("hydra")
        status = await self.servers.source("hydra", url).get_status()
        self.assertEqual(status, MetadataStatus(url, True))
        self.assertEqual(resource.requests, [("getActiveStorageBucketOperatorsData", {"limit": 1, "lastCursor": None})])
        resource.fail_mode = "garbage"
        source = self.servers.source("hydra", url)
        status = await source.get_status()
        self.assertFalse(status.reachable)
        self.assertIn("not a JSON object", status.error)


class FailureTests(TestCase):
    """Every failure is MetadataUnavailable, within the timeout, logged once."""

    async def setUp(self) -> None:
        self.servers = _Servers(self)
        self.events = capture_log(self, graphql_module)

    async def assertUnavailable(self, source: Any, *parts: str) -> str:
        started = reactor.seconds()
        with self.assertRaises(MetadataUnavailable) as caught:
            await source.get_object("1")
        self.assertLess(reactor.seconds() - started, source.client.timeout + 1.0)
        message = str(caught.exception)
        for part in parts:
            self.assertIn(part, message)
        logged = messages(self.events)
        self.assertEqual(len(logged), 1, logged)
        self.assertIn(message, logged[0])
        return message

    async def test_graphql_errors(self) -> None:
        for dialect in ("squid", "hydra"):
            del self.events[:]
            resource, url = await self.servers.serve(dialect)
            resource.fail_mode = "graphql_error"
            await self.assertUnavailable(
                self.servers.source(dialect, url), url, "getDataObjectDetails", "simulated GraphQL failure"
            )

    async def test_http_500(self) -> None:
        resource, url = await self.servers.serve("squid")
        resource.fail_mode = "http_500"
        await self.assertUnavailable(self.servers.source("squid", url), "HTTP 500")

    async def test_garbage(self) -> None:
        resource, url = await self.servers.serve("squid")
        resource.fail_mode = "garbage"
        await self.assertUnavailable(self.servers.source("squid", url), "not a JSON object")

    async def test_timeout_when_server_stalls(self) -> None:
        resource, url = await self.servers.serve("hydra")
        resource.fail_mode = "stall"
        source = self.servers.source("hydra", url, timeout=0.3)
        started = reactor.seconds()
        await self.assertUnavailable(source, "timed out after 0.3s")
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)

    async def test_timeout_covers_the_body(self) -> None:
        """Headers arrive but the body never ends: still bounded."""

        class Dribble(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> int:
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"data": ')
                return 1  # NOT_DONE_YET

        port = reactor.listenTCP(0, Site(Dribble()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = "http://127.0.0.1:%d/" % (port.getHost().port,)
        await self.assertUnavailable(self.servers.source("squid", url, timeout=0.3), "timed out")

    async def test_connection_refused(self) -> None:
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        url = "http://127.0.0.1:%d/graphql" % (port.getHost().port,)
        await port.stopListening()
        await self.assertUnavailable(self.servers.source("squid", url), "cannot connect")

    async def test_unexpected_shape(self) -> None:
        url = await self.servers.serve_fixed(200, b'{"data": {"storageDataObjectByUniqueInput": {"id": "1"}}}')
        shape_events = capture_log(self, sys_modules("jsdistributor.metadata._source"))
        with self.assertRaises(MetadataUnavailable) as caught:
            await self.servers.source("squid", url).get_object("1")
        self.assertIn("unexpected shape", str(caught.exception))
        self.assertIn("storageBag is missing", str(caught.exception))
        self.assertEqual(len(shape_events), 1)

    async def test_http_error_with_graphql_errors(self) -> None:
        url = await self.servers.serve_fixed(400, b'{"errors": [{"message": "Variable \\"$id\\" is bad"}]}')
        await self.assertUnavailable(self.servers.source("squid", url), "HTTP 400", "is bad")

    async def test_no_data(self) -> None:
        url = await self.servers.serve_fixed(200, b'{"data": null}')
        await self.assertUnavailable(self.servers.source("squid", url), "no data")

    async def test_listing_failure_mid_way(self) -> None:
        resource, url = await self.servers.serve("squid")
        source = self.servers.source("squid", url, batch_size=1)
        original = resource.execute

        def fail_second_batch(document: str, operation: str | None, variables: dict[str, Any]) -> dict[str, Any]:
            if resource.operations().count("getDataObjectsWithBagsByIds") == 1:
                resource.fail_mode = "http_500"
            return original(document, operation, variables)

        resource.execute = fail_second_batch  # type: ignore[method-assign]
        with self.assertRaises(MetadataUnavailable):
            await source.list_bucket_objects(BucketSelection(buckets=("0:1", "1:0", "0:0")))
        resource.fail_mode = None
        resource.execute = original  # type: ignore[method-assign]
        self.assertEqual(
            set(await source.list_bucket_objects(BucketSelection(buckets=("0:1", "1:0", "0:0")))), {"1", "2", "3", "5"}
        )


class CallerCancellationTests(SynchronousTestCase):
    """A caller giving up is not a service failure: nothing is logged."""

    def test_cancel_is_not_logged(self) -> None:
        events = capture_log(self, graphql_module)
        pending: Deferred[Any] = Deferred()

        class Http:
            def post(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                return pending

        client = GraphQLClient("http://x/graphql", Clock(), Http(), 5.0)
        d = client.query("query q { a }", "q", {})
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(events, [])

    def test_timeout_with_clock(self) -> None:
        events = capture_log(self, graphql_module)
        clock = Clock()

        class Http:
            def post(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                return Deferred()

        d = GraphQLClient("http://x/graphql", clock, Http(), 2.0).query("query q { a }", "q", {})
        clock.advance(1.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, MetadataUnavailable)
        self.assertIn("timed out after 2s", str(failure.value))
        self.assertEqual(len(events), 1)

    def test_request_body(self) -> None:
        sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        class Http:
            def post(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                sent.append((args, kwargs))
                return fail(MetadataUnavailable("stop here"))

        client = GraphQLClient("http://x/graphql", Clock(), Http(), 2.0)
        self.failureResultOf(client.query("query q($a: Int) { a }", "q", {"a": 1}), MetadataUnavailable)
        ((args, kwargs),) = sent
        self.assertEqual(args, ("http://x/graphql",))
        self.assertEqual(
            json.loads(kwargs["data"]), {"query": "query q($a: Int) { a }", "operationName": "q", "variables": {"a": 1}}
        )
        self.assertEqual(kwargs["headers"][b"Content-Type"], [b"application/json"])
        self.assertFalse(kwargs["allow_redirects"])
        self.flushLoggedErrors()
