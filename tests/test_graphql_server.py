"""The GraphQL test server (jsdistributor.testing.graphql_server): its
schemas accept exactly the node's documents, it answers from a Dataset, and
its knobs behave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import treq
from graphql import parse, validate
from graphql.language import OperationDefinitionNode
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from jsdistributor.metadata._shapes import load_document
from jsdistributor.metadata.catalog import parse_catalog
from jsdistributor.testing.graphql_server import (
    Dialect,
    GraphQLResource,
    graphql_schema,
    sample_catalog,
    start_graphql_server,
    stop_graphql_server,
)

DOCUMENTS: dict[Dialect, str] = {"squid": "squid_queries.graphql", "hydra": "hydra_queries.graphql"}
REFERENCE = Path("/work/shared/reference")


def operation_names(document: str) -> list[str]:
    return [d.name.value for d in parse(document).definitions if isinstance(d, OperationDefinitionNode) and d.name]


class SchemaTests(SynchronousTestCase):
    def test_node_documents_validate(self) -> None:
        for dialect, name in DOCUMENTS.items():
            errors = validate(graphql_schema(dialect), parse(load_document(name)))
            self.assertEqual(errors, [], "%s documents do not validate: %s" % (dialect, errors))

    def test_dialects_differ(self) -> None:
        """Each dialect rejects the other's documents (the shapes differ)."""
        squid_doc = parse(load_document(DOCUMENTS["squid"]))
        hydra_doc = parse(load_document(DOCUMENTS["hydra"]))
        self.assertNotEqual(validate(graphql_schema("hydra"), squid_doc), [])
        self.assertNotEqual(validate(graphql_schema("squid"), hydra_doc), [])

    def test_unknown_field_rejected(self) -> None:
        errors = validate(graphql_schema("squid"), parse("query q { storageBags { id nonsense } }"))
        self.assertEqual(len(errors), 1)
        self.assertIn("nonsense", errors[0].message)

    def test_unknown_dialect(self) -> None:
        self.assertRaises(ValueError, graphql_schema, "postgres")  # type: ignore[arg-type]

    def test_documents_match_reference(self) -> None:
        """The shipped documents are the original node's, byte for byte."""
        pairs = {
            "squid_queries.graphql": "storage-squid-queries.latest.graphql",
            "hydra_queries.graphql": "querynode-queries.giza.graphql",
        }
        if not REFERENCE.is_dir():
            raise self.skipTest("reference folder %s absent" % (REFERENCE,))
        for ours, theirs in pairs.items():
            self.assertEqual(load_document(ours), (REFERENCE / theirs).read_text("utf-8"), ours)


class ExecuteTests(SynchronousTestCase):
    """Answers computed from the sample catalog, without HTTP."""

    def setUp(self) -> None:
        self.dataset = parse_catalog(sample_catalog())

    def run_op(self, dialect: Dialect, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        resource = GraphQLResource.for_dialect(dialect, self.dataset)
        answer = resource.execute(load_document(DOCUMENTS[dialect]), operation, variables)
        self.assertNotIn("errors", answer, answer.get("errors"))
        data: dict[str, Any] = answer["data"]
        return data

    def test_squid_object(self) -> None:
        data = self.run_op("squid", "getDataObjectDetails", {"id": "5"})
        obj = data["storageDataObjectByUniqueInput"]
        self.assertEqual(obj["size"], "77")
        self.assertEqual(obj["type"], {"subtitle": {"mimeType": "text/vtt"}})
        buckets = [b["storageBucket"] for b in obj["storageBag"]["storageBuckets"]]
        self.assertEqual([b["id"] for b in buckets], ["0", "1", "2", "3", "4"])
        self.assertEqual(buckets[0]["operatorStatus"], {"__typename": "StorageBucketOperatorStatusActive"})
        self.assertEqual(buckets[3]["operatorStatus"], {"__typename": "StorageBucketOperatorStatusInvited"})
        self.assertIsNone(buckets[4]["operatorMetadata"])
        distribution = obj["storageBag"]["distributionBuckets"][0]["distributionBucket"]
        self.assertEqual(distribution, {"id": "0:0", "operators": [{"workerId": 7, "status": "ACTIVE"}]})

    def test_squid_missing_object(self) -> None:
        data = self.run_op("squid", "getDataObjectDetails", {"id": "999"})
        self.assertIsNone(data["storageDataObjectByUniqueInput"])

    def test_squid_buckets_by_worker_active_only(self) -> None:
        data = self.run_op("squid", "getDistributionBucketsWithBagsByWorkerId", {"workerId": 7})
        self.assertEqual([b["id"] for b in data["distributionBuckets"]], ["0:0"])
        self.assertEqual(data["distributionBuckets"][0]["bags"], [{"bag": {"id": "dynamic:channel:1"}}])

    def test_squid_bags_limit(self) -> None:
        data = self.run_op(
            "squid",
            "getDataObjectsWithBagsByIds",
            {"bagIds": ["dynamic:channel:1", "dynamic:channel:2"], "limit": 1},
        )
        self.assertEqual(len(data["storageBags"]), 1)

    def test_squid_active_storage_operators(self) -> None:
        data = self.run_op("squid", "getActiveStorageBucketOperatorsData", {})
        self.assertEqual([b["id"] for b in data["storageBuckets"]], ["0", "1", "2"])

    def test_squid_status(self) -> None:
        self.assertEqual(self.run_op("squid", "squidStatus", {}), {"squidStatus": {"height": 1000}})
        self.assertEqual(self.run_op("squid", "getSquidVersion", {}), {"squidVersion": {"version": "4.0.0-test"}})

    def test_hydra_object(self) -> None:
        data = self.run_op("hydra", "getDataObjectDetails", {"id": "3"})
        obj = data["storageDataObjectByUniqueInput"]
        self.assertEqual(obj["size"], "3000000000")
        self.assertEqual([b["id"] for b in obj["storageBag"]["storageBuckets"]], ["1"])
        self.assertEqual([b["id"] for b in obj["storageBag"]["distributionBuckets"]], ["0:1", "1:0"])

    def test_hydra_buckets_with_objects(self) -> None:
        data = self.run_op("hydra", "getDistributionBucketsWithObjectsByIds", {"ids": ["1:0"]})
        self.assertEqual(
            data["distributionBuckets"],
            [{"id": "1:0", "bags": [{"objects": [{"id": "3", "size": "3000000000", "ipfsHash": "gWbig"}]}]}],
        )

    def test_hydra_pagination(self) -> None:
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            data = self.run_op("hydra", "getActiveStorageBucketOperatorsData", {"limit": 2, "lastCursor": cursor})
            connection = data["storageBucketsConnection"]
            seen.extend(e["node"]["id"] for e in connection["edges"])
            if not connection["pageInfo"]["hasNextPage"]:
                break
            cursor = connection["pageInfo"]["endCursor"]
        self.assertEqual(seen, ["0", "1", "2"])

    def test_dialect_inferred_from_schema(self) -> None:
        self.assertEqual(GraphQLResource(graphql_schema("hydra"), self.dataset).dialect, "hydra")
        self.assertEqual(GraphQLResource(graphql_schema("squid"), self.dataset).dialect, "squid")

    def test_invalid_document_is_an_error_answer(self) -> None:
        resource = GraphQLResource.for_dialect("squid", self.dataset)
        answer = resource.execute("query q { storageBags { nope } }", "q", {})
        self.assertIn("errors", answer)
        self.assertEqual(len(resource.errors), 1)


class HttpTests(TestCase):
    """The server over real sockets on 127.0.0.1."""

    async def start(self) -> tuple[GraphQLResource, str]:
        resource = GraphQLResource.for_dialect("squid", parse_catalog(sample_catalog()), reactor)
        port, url = await start_graphql_server(reactor, "squid", resource=resource)
        self.addCleanup(stop_graphql_server, port)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        return resource, url

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        response = await self.http.post(url, data=body, headers={b"content-type": [b"application/json"]})
        return response.code, await response.content()

    async def test_round_trip(self) -> None:
        resource, url = await self.start()
        self.assertTrue(url.startswith("http://127.0.0.1:"))
        body = json.dumps(
            {"query": load_document("squid_queries.graphql"), "operationName": "squidStatus", "variables": {}}
        ).encode()
        code, content = await self.post(url, body)
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(content), {"data": {"squidStatus": {"height": 1000}}})
        self.assertEqual(resource.requests, [("squidStatus", {})])
        self.assertEqual(resource.request_count, 1)

    async def test_invalid_document(self) -> None:
        resource, url = await self.start()
        body = json.dumps({"query": "query q { nothing }", "operationName": "q"}).encode()
        code, content = await self.post(url, body)
        self.assertEqual(code, 200)
        self.assertIn("errors", json.loads(content))
        self.assertEqual(len(resource.errors), 1)

    async def test_malformed_request(self) -> None:
        _, url = await self.start()
        code, content = await self.post(url, b"{not json")
        self.assertEqual(code, 400)
        self.assertIn("bad GraphQL request", json.loads(content)["errors"][0]["message"])

    async def test_fail_modes(self) -> None:
        resource, url = await self.start()
        body = json.dumps({"query": "query q { squidStatus { height } }", "operationName": "q"}).encode()
        resource.fail_mode = "http_500"
        self.assertEqual((await self.post(url, body))[0], 500)
        resource.fail_mode = "garbage"
        code, content = await self.post(url, body)
        self.assertEqual(code, 200)
        self.assertRaises(ValueError, json.loads, content)
        resource.fail_mode = "graphql_error"
        code, content = await self.post(url, body)
        self.assertEqual(json.loads(content)["errors"][0]["message"], "simulated GraphQL failure")
        self.assertEqual(resource.request_count, 3)

    async def test_stalled_request_released_on_stop(self) -> None:
        resource = GraphQLResource.for_dialect("squid", parse_catalog(sample_catalog()), reactor)
        resource.fail_mode = "stall"
        port, url = await start_graphql_server(reactor, "squid", resource=resource)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        pending = http.post(url, data=b'{"query": "{ squidStatus { height } }"}')
        answered: list[object] = []

        def record(result: object) -> object:
            answered.append(result)
            return result

        pending.addBoth(record)
        while resource.in_flight == 0:
            from twisted.internet.task import deferLater

            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(answered, [])
        await stop_graphql_server(port)
        response = await pending
        self.assertEqual(response.code, 503)
        await response.content()

    async def test_dataset_changes_at_runtime(self) -> None:
        resource, url = await self.start()
        body = json.dumps(
            {
                "query": load_document("squid_queries.graphql"),
                "operationName": "getDataObjectDetails",
                "variables": {"id": "77"},
            }
        ).encode()
        self.assertIsNone(json.loads((await self.post(url, body))[1])["data"]["storageDataObjectByUniqueInput"])
        catalog = sample_catalog()
        catalog["bags"]["static:council"]["objects"].append({"id": "77", "size": 1, "ipfsHash": "x"})
        resource.dataset = parse_catalog(catalog)
        obj = json.loads((await self.post(url, body))[1])["data"]["storageDataObjectByUniqueInput"]
        self.assertEqual(obj["id"], "77")
