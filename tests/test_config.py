"""The config loader: the original node's files, sizes, environment overrides,
one clear message per problem, the masked dump and the generated reference."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from jsdistributor import config as config_module
from jsdistributor.config import (
    ConfigError,
    FileLog,
    Intervals,
    Limits,
    NodeConfig,
    OperatorApi,
    PublicApi,
    check_secret_strength,
    config_schema,
    env_var_name,
    load_config,
    masked_config_dict,
    parse_config,
    render_config_reference,
)
from jsdistributor.sizes import format_size, parse_size

GiB = 1024**3
REFERENCE = Path("/work/shared/reference")
REPO = Path(__file__).resolve().parent.parent

# The original node's two sample files (giza and latest), copied so that the
# tests cover them without the reference folder.
ARGUS_GIZA = """\
id: test-node
endpoints:
  queryNode: http://localhost:8081/graphql
  joystreamNodeWs: ws://localhost:9944
directories:
  assets: ./local/data
  cacheState: ./local/cache
logs:
  file:
    level: debug
    path: ./local/logs
    maxFiles: 30 # 30 days or 30 * 50 MB
    maxSize: 50485760 # 50 MB
  console:
    level: verbose
  # elastic:
  #   level: info
  #   endpoint: http://localhost:9200
limits:
  storage: 100G
  maxConcurrentStorageNodeDownloads: 100
  maxConcurrentOutboundConnections: 300
  outboundRequestsTimeoutMs: 5000
  pendingDownloadTimeoutSec: 3600
  maxCachedItemSize: 1G
intervals:
  saveCacheState: 60
  checkStorageNodeResponseTimes: 60
  cacheCleanup: 60
publicApi:
  port: 3334
operatorApi:
  port: 3335
  hmacSecret: this-is-not-so-secret
keys:
  - suri: //Alice
  - suri: //testing//worker//Distribution//0
workerId: 0
"""

ARGUS_LATEST = """\
id: test-node
endpoints:
  storageSquid: http://localhost:4352/graphql
  joystreamNodeWs: ws://localhost:9944
directories:
  assets: ./local/data
  cacheState: ./local/cache
logs:
  file:
    level: debug
    path: ./local/logs
    maxFiles: 30 # 30 days or 30 * 50 MB
    maxSize: 50485760 # 50 MB
  console:
    level: verbose
limits:
  storage: 500G
  maxConcurrentStorageNodeDownloads: 100
  maxConcurrentOutboundConnections: 300
  outboundRequestsTimeoutMs: 5000
  pendingDownloadTimeoutSec: 3600
  maxCachedItemSize: 20G
  queryNodeCacheTTL: 60
intervals:
  saveCacheState: 60
  checkStorageNodeResponseTimes: 60
  cacheCleanup: 86400 # every 24h, cache cleanup currently is very heavy on QN
publicApi:
  port: 3334
operatorApi:
  port: 3335
  hmacSecret: this-is-not-so-secret
keys:
  - suri: //Alice
  - suri: //testing//worker//Distribution//0
workerId: 0
"""

# Every key, none at its default.
EVERY_KEY = """\
id: every-key-node
endpoints:
  catalog: ./catalog.yml
  joystreamNodeWs: ws://chain:9944
directories:
  assets: ./assets
  cacheState: /var/lib/jsd/state
logs:
  console:
    level: warn
  file:
    level: http
    path: logs
    maxFiles: 7
    maxSize: 20M
    frequency: hourly
    archive: true
  elastic:
    level: info
    endpoint: http://localhost:9200
limits:
  storage: 1T
  maxConcurrentStorageNodeDownloads: 11
  maxConcurrentOutboundConnections: 22
  outboundRequestsTimeoutMs: 3333
  pendingDownloadTimeoutSec: 444
  maxCachedItemSize: 2G
  dataObjectSourceByObjectIdTTL: 55
  queryNodeCacheTTL: 66
intervals:
  saveCacheState: 7
  checkStorageNodeResponseTimes: 8
  cacheCleanup: 9
publicApi:
  port: 8080
  interface: 127.0.0.2
operatorApi:
  port: 8081
  hmacSecret: a-long-enough-operator-secret
  interface: 127.0.0.3
keys:
  - suri: //Alice
buckets: [3, "1:2", 0:7]
workerId: 12
otlp:
  endpoint: http://apm:8200
  attributes: a=b
"""

MINIMAL: dict[str, Any] = {
    "id": "n",
    "endpoints": {"storageSquid": "http://squid/graphql"},
    "directories": {"assets": "/data", "cacheState": "/state"},
    "limits": {"storage": "100G"},
    "publicApi": {"port": 3334},
    "workerId": 1,
}


def minimal(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(MINIMAL))
    doc.update(changes)
    return doc


class ConfigTestCase(SynchronousTestCase):
    def write(self, name: str, text: str) -> Path:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return path

    def problems(self, document: Any, environ: dict[str, str] | None = None) -> list[str]:
        error = self.assertRaises(ConfigError, parse_config, document, Path("/etc/jsd"), environ)
        return error.problems

    def assertProblem(self, document: Any, expected: str, environ: dict[str, str] | None = None) -> None:
        problems = self.problems(document, environ)
        self.assertIn(expected, problems, f"expected {expected!r} among {problems!r}")


class EveryKeyTests(ConfigTestCase):
    def check_every_key(self, config: NodeConfig, folder: Path) -> None:
        self.assertEqual(config.id, "every-key-node")
        self.assertIsNone(config.endpoints.query_node)
        self.assertIsNone(config.endpoints.storage_squid)
        self.assertEqual(config.endpoints.catalog, folder / "catalog.yml")
        self.assertEqual(config.endpoints.joystream_node_ws, "ws://chain:9944")
        self.assertEqual(config.directories.assets, folder / "assets")
        self.assertEqual(config.directories.cache_state, Path("/var/lib/jsd/state"))
        self.assertEqual(config.logs.console_level, "warn")
        self.assertEqual(
            config.logs.file,
            FileLog(
                path=folder / "logs",
                level="http",
                max_files=7,
                max_size=20 * 1024**2,
                frequency="hourly",
                archive=True,
            ),
        )
        self.assertTrue(config.logs.elastic)
        self.assertEqual(
            config.limits,
            Limits(
                storage=1024**4,
                max_concurrent_storage_node_downloads=11,
                max_concurrent_outbound_connections=22,
                outbound_requests_timeout_ms=3333,
                pending_download_timeout_sec=444,
                max_cached_item_size=2 * GiB,
                data_object_source_by_object_id_ttl=55,
                query_node_cache_ttl=66,
            ),
        )
        self.assertEqual(
            config.intervals,
            Intervals(save_cache_state=7, check_storage_node_response_times=8, cache_cleanup=9),
        )
        self.assertEqual(config.public_api, PublicApi(port=8080, interface="127.0.0.2"))
        self.assertEqual(
            config.operator_api,
            OperatorApi(port=8081, hmac_secret="a-long-enough-operator-secret", interface="127.0.0.3"),
        )
        self.assertEqual(config.buckets, ("3", "1:2", "0:7"))
        self.assertEqual(config.worker_id, 12)
        self.assertEqual(
            config.warnings,
            ("logs.elastic is not supported; ignored", "otlp is not supported; ignored"),
        )

    def test_yaml_file(self) -> None:
        path = self.write("config.yml", EVERY_KEY)
        config = load_config(path, environ={})
        self.check_every_key(config, path.parent.absolute())
        self.assertEqual(config.source, path.absolute())

    def test_json_file(self) -> None:
        path = self.write("config.yml", EVERY_KEY)
        document = config_module.read_config_document(path)
        json_path = path.with_suffix(".json")
        json_path.write_text(json.dumps(document), encoding="utf-8")
        config = load_config(json_path, environ={})
        self.check_every_key(config, json_path.parent.absolute())

    def test_defaults(self) -> None:
        config = parse_config(MINIMAL, Path("/etc/jsd"))
        self.assertEqual(config.limits, Limits(storage=100 * GiB))
        self.assertEqual(config.intervals, Intervals())
        self.assertEqual(config.public_api, PublicApi(port=3334, interface="0.0.0.0"))
        self.assertIsNone(config.operator_api)
        self.assertIsNone(config.buckets)
        self.assertEqual(config.worker_id, 1)
        self.assertEqual(config.logs.console_level, "info")
        self.assertIsNone(config.logs.file)
        self.assertEqual(config.warnings, ())

    def test_operator_api_interface_default(self) -> None:
        config = parse_config(minimal(operatorApi={"port": 1, "hmacSecret": "s" * 16}), Path("/"))
        self.assertEqual(config.operator_api, OperatorApi(port=1, hmac_secret="s" * 16))
        self.assertEqual(config.operator_api.interface, "127.0.0.1")

    def test_schema_defaults_match_model(self) -> None:
        """The documented defaults are the model's defaults."""
        models = {
            "limits": Limits,
            "intervals": Intervals,
            "publicApi": PublicApi,
            "operatorApi": OperatorApi,
        }
        schema = config_schema()
        checked = 0
        for section, model in models.items():
            fields = {f.name: f for f in attrs.fields(model)}
            for key, sub in schema["properties"][section]["properties"].items():
                if "default" in sub:
                    field = fields[config_module._snake(key)]
                    self.assertEqual(sub["default"], field.default, f"{section}.{key}")
                    checked += 1
        file_fields = {f.name: f for f in attrs.fields(FileLog)}
        for key, sub in schema["properties"]["logs"]["properties"]["file"]["properties"].items():
            if "default" in sub:
                self.assertEqual(sub["default"], file_fields[config_module._snake(key)].default, key)
                checked += 1
        self.assertGreater(checked, 10)

    def test_document_not_modified(self) -> None:
        document = minimal(logs={"file": "off"})
        before = json.dumps(document)
        parse_config(document, Path("/"), {"JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE": "30G"})
        self.assertEqual(json.dumps(document), before)


class ArgusSampleTests(ConfigTestCase):
    def check_sample(self, config: NodeConfig, folder: Path, storage: int, cached: int) -> None:
        self.assertEqual(config.id, "test-node")
        self.assertEqual(config.limits.storage, storage)
        self.assertEqual(config.limits.max_cached_item_size, cached)
        self.assertEqual(config.directories.assets, folder / "local" / "data")
        self.assertEqual(config.logs.console_level, "verbose")
        self.assertEqual(config.logs.file.max_size, 50485760)
        self.assertEqual(config.operator_api.hmac_secret, "this-is-not-so-secret")
        self.assertEqual(config.worker_id, 0)
        self.assertEqual(config.warnings, ())

    def test_giza_copy(self) -> None:
        path = self.write("argus-config.giza.yml", ARGUS_GIZA)
        config = load_config(path, environ={})
        self.check_sample(config, path.parent.absolute(), 100 * GiB, GiB)
        self.assertEqual(config.endpoints.query_node, "http://localhost:8081/graphql")

    def test_latest_copy(self) -> None:
        path = self.write("argus-config.latest.yml", ARGUS_LATEST)
        config = load_config(path, environ={})
        self.check_sample(config, path.parent.absolute(), 500 * GiB, 20 * GiB)
        self.assertEqual(config.endpoints.storage_squid, "http://localhost:4352/graphql")
        self.assertEqual(config.intervals.cache_cleanup, 86400)

    def test_reference_files(self) -> None:
        if not REFERENCE.is_dir():
            raise self.skipTest(
                f"{REFERENCE} is absent (a fresh clone does not have it); "
                "the samples are covered by test_giza_copy and test_latest_copy"
            )
        giza = load_config(REFERENCE / "argus-config.giza.yml", environ={})
        self.check_sample(giza, REFERENCE, 100 * GiB, GiB)
        latest = load_config(REFERENCE / "argus-config.latest.yml", environ={})
        self.check_sample(latest, REFERENCE, 500 * GiB, 20 * GiB)

    def test_example_config(self) -> None:
        """etc/config.example.yml loads and mentions every key."""
        path = REPO / "etc" / "config.example.yml"
        config = load_config(path, environ={})
        self.assertEqual(config.limits.storage, 500 * GiB)
        self.assertIsNotNone(config.operator_api)
        self.assertEqual(check_secret_strength(config, insecure_dev=False), [])
        text = path.read_text("utf-8")
        for leaf in config_module._iter_leaf_paths(config_schema()):
            self.assertIn(leaf[-1] + ":", text, f"{'.'.join(leaf)} missing from the example")


class SizeTests(SynchronousTestCase):
    def test_examples(self) -> None:
        cases = {
            "500G": 500 * GiB,
            "20M": 20 * 1024**2,
            "1024": 1024,
            "1024B": 1024,
            "1T": 1024**4,
            "3K": 3072,
            "500GB": 500 * GiB,
            "500GiB": 500 * GiB,
            "500 gib": 500 * GiB,
            "1.5G": 1536 * 1024**2,
            "0.5K": 512,
            "0": 0,
            " 5G\n": 5 * GiB,
        }
        for text, expected in cases.items():
            self.assertEqual(parse_size(text), expected, text)
        self.assertEqual(parse_size(4096), 4096)

    def test_garbage(self) -> None:
        for value in ["12X", "", "G", "-5G", "1.5", "1.5B", "5iB", "1e3", "5 G B", "٣G", "5G\nX", True, -1, 1.5, None]:
            error = self.assertRaises(ValueError, parse_size, value)  # type: ignore[arg-type]
            self.assertIn("is not a size like 500G", str(error))
        self.assertEqual(str(self.assertRaises(ValueError, parse_size, "12X")), "'12X' is not a size like 500G")

    def test_format(self) -> None:
        self.assertEqual(format_size(0), "0B")
        self.assertEqual(format_size(1536), "1536B")
        self.assertEqual(format_size(2048), "2K")
        self.assertEqual(format_size(500 * GiB), "500G")
        self.assertEqual(format_size(2 * 1024**5), "2048T")
        self.assertRaises(ValueError, format_size, -1)

    @settings(deadline=None, max_examples=300)
    @given(st.integers(min_value=0, max_value=2**80))
    def test_round_trip(self, n: int) -> None:
        text = format_size(n)
        self.assertEqual(parse_size(text), n)
        # The original node's pattern accepts it too.
        self.assertRegex(text, r"^[0-9]+(B|K|M|G|T)$")

    @settings(deadline=None, max_examples=300)
    @given(
        st.one_of(
            st.text(max_size=40),
            st.from_regex(r"[-+ ]?[0-9.]{0,6}\s?[BKMGTbkmgtIi]{0,3}", fullmatch=True),
            st.integers(),
        )
    )
    def test_never_anything_but_value_error(self, value: str | int) -> None:
        try:
            result = parse_size(value)
        except ValueError:
            return
        self.assertIsInstance(result, int)
        self.assertGreaterEqual(result, 0)


class EnvironmentTests(ConfigTestCase):
    def parse(self, environ: dict[str, str], document: dict[str, Any] | None = None) -> NodeConfig:
        return parse_config(document if document is not None else minimal(), Path("/etc/jsd"), environ)

    def test_storage(self) -> None:
        config = self.parse({"JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE": "250G"})
        self.assertEqual(config.limits.storage, 250 * GiB)

    def test_case_and_underscores_ignored(self) -> None:
        """The original's camelCase conversion made these unreachable."""
        config = self.parse(
            {
                "JOYSTREAM_DISTRIBUTOR__LIMITS__QUERY_NODE_CACHE_TTL": "120",
                "JOYSTREAM_DISTRIBUTOR__LIMITS__DATA_OBJECT_SOURCE_BY_OBJECT_ID_TTL": "30",
                "JOYSTREAM_DISTRIBUTOR__OPERATOR_API__HMAC_SECRET": "from-the-environment-1234",
                "JOYSTREAM_DISTRIBUTOR__OPERATOR_API__PORT": "3335",
                "JOYSTREAM_DISTRIBUTOR__publicapi__Port": "4000",
            }
        )
        self.assertEqual(config.limits.query_node_cache_ttl, 120)
        self.assertEqual(config.limits.data_object_source_by_object_id_ttl, 30)
        self.assertEqual(config.operator_api, OperatorApi(port=3335, hmac_secret="from-the-environment-1234"))
        self.assertEqual(config.public_api.port, 4000)

    def test_booleans(self) -> None:
        document = minimal(logs={"file": {"path": "/l", "archive": True}})
        for text, expected in [("false", False), ("0", False), ("no", False), ("FALSE", False), ("true", True), ("yes", True), ("1", True)]:
            config = self.parse({"JOYSTREAM_DISTRIBUTOR__LOGS__FILE__ARCHIVE": text}, document)
            self.assertIs(config.logs.file.archive, expected, text)

    def test_bad_boolean(self) -> None:
        self.assertProblem(
            minimal(),
            "logs.file.archive: 'maybe' is not a boolean (true/false, yes/no, 1/0) "
            "(set by JOYSTREAM_DISTRIBUTOR__LOGS__FILE__ARCHIVE)",
            {"JOYSTREAM_DISTRIBUTOR__LOGS__FILE__ARCHIVE": "maybe"},
        )

    def test_json_array(self) -> None:
        config = self.parse({"JOYSTREAM_DISTRIBUTOR__BUCKETS": '[1, "0:2", "3"]'})
        self.assertEqual(config.buckets, ("1", "0:2", "3"))

    def test_bad_json(self) -> None:
        problems = self.problems(minimal(), {"JOYSTREAM_DISTRIBUTOR__BUCKETS": "[1, 2"})
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("buckets: '[1, 2' is not valid JSON"), problems)
        self.assertTrue(problems[0].endswith("(set by JOYSTREAM_DISTRIBUTOR__BUCKETS)"), problems)

    def test_off_unsets(self) -> None:
        document = minimal(
            limits={"storage": "100G", "maxCachedItemSize": "1G"},
            logs={"console": {"level": "info"}, "file": {"path": "/l"}},
        )
        config = self.parse(
            {
                "JOYSTREAM_DISTRIBUTOR__LIMITS__MAX_CACHED_ITEM_SIZE": "off",
                "JOYSTREAM_DISTRIBUTOR__LOGS__FILE": "null",
                "JOYSTREAM_DISTRIBUTOR__ENDPOINTS__JOYSTREAM_NODE_WS": "off",  # absent: no-op
            },
            document,
        )
        self.assertIsNone(config.limits.max_cached_item_size)
        self.assertIsNone(config.logs.file)
        self.assertEqual(config.logs.console_level, "info")

    def test_unset_required_is_a_problem(self) -> None:
        self.assertProblem(
            minimal(),
            "limits.storage: required (set by JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE)",
            {"JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE": "off"},
        )

    def test_creates_absent_keys(self) -> None:
        document = minimal()
        del document["workerId"]
        config = self.parse(
            {
                "JOYSTREAM_DISTRIBUTOR__WORKER_ID": "7",
                "JOYSTREAM_DISTRIBUTOR__INTERVALS__CACHE_CLEANUP": "600",
                "JOYSTREAM_DISTRIBUTOR__LOGS__FILE__PATH": "logs",
            },
            document,
        )
        self.assertEqual(config.worker_id, 7)
        self.assertEqual(config.intervals.cache_cleanup, 600)
        self.assertEqual(config.logs.file.path, Path("/etc/jsd/logs"))

    def test_unknown_key_is_a_warning(self) -> None:
        config = self.parse(
            {
                "JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE_SIZE": "1G",
                "JOYSTREAM_DISTRIBUTOR__": "x",
                "JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE__DEEPER": "x",
                "OTHER_PREFIX__LIMITS__STORAGE": "1G",
            }
        )
        self.assertEqual(config.limits.storage, 100 * GiB)
        self.assertEqual(
            config.warnings,
            (
                "JOYSTREAM_DISTRIBUTOR__: names no config key; ignored",
                "JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE_SIZE: names no config key; ignored",
                "JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE__DEEPER: names no config key; ignored",
            ),
        )

    def test_wrong_type_names_the_variable(self) -> None:
        self.assertProblem(
            minimal(),
            "publicApi.port: must be an integer, got 'http' (set by JOYSTREAM_DISTRIBUTOR__PUBLIC_API__PORT)",
            {"JOYSTREAM_DISTRIBUTOR__PUBLIC_API__PORT": "http"},
        )

    def test_every_documented_variable_reaches_its_key(self) -> None:
        schema = config_schema()
        for leaf in config_module._iter_leaf_paths(schema):
            found = config_module._schema_path(schema, env_var_name(leaf)[len("JOYSTREAM_DISTRIBUTOR__") :].split("__"))
            self.assertIsNotNone(found, leaf)
            self.assertEqual(found[0], leaf)

    def test_load_config_reads_os_environ(self) -> None:
        path = self.write("c.yml", ARGUS_LATEST)
        with mock.patch.dict(os.environ, {"JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE": "42G"}):
            self.assertEqual(load_config(path).limits.storage, 42 * GiB)
            self.assertEqual(load_config(path, environ={}).limits.storage, 500 * GiB)

    @settings(deadline=None, max_examples=150)
    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE",
                    "JOYSTREAM_DISTRIBUTOR__BUCKETS",
                    "JOYSTREAM_DISTRIBUTOR__WORKER_ID",
                    "JOYSTREAM_DISTRIBUTOR__LOGS",
                    "JOYSTREAM_DISTRIBUTOR__LOGS__FILE__ARCHIVE",
                    "JOYSTREAM_DISTRIBUTOR__PUBLIC_API__PORT",
                    "JOYSTREAM_DISTRIBUTOR__ENDPOINTS",
                    "JOYSTREAM_DISTRIBUTOR__OPERATOR_API__HMAC_SECRET",
                    "JOYSTREAM_DISTRIBUTOR__NOPE",
                ]
            ),
            st.one_of(st.text(max_size=20), st.sampled_from(["off", "[]", "{}", "[1]", "0", "1e9", "null"])),
        )
    )
    def test_any_environment_gives_config_or_config_error(self, environ: dict[str, str]) -> None:
        try:
            parse_config(minimal(), Path("/etc/jsd"), environ)
        except ConfigError as e:
            self.assertTrue(e.problems)


class InvalidConfigTests(ConfigTestCase):
    def test_bad_size(self) -> None:
        self.assertProblem(minimal(limits={"storage": "12X"}), "limits.storage: '12X' is not a size like 500G")
        self.assertProblem(
            minimal(limits={"storage": "1G", "maxCachedItemSize": "lots"}),
            "limits.maxCachedItemSize: 'lots' is not a size like 500G",
        )

    def test_wrong_type(self) -> None:
        self.assertProblem(
            minimal(intervals={"cacheCleanup": "often"}),
            "intervals.cacheCleanup: must be an integer, got 'often'",
        )
        self.assertProblem(minimal(limits=[1]), "limits: must be a section (a mapping of keys to values), got [1]")
        self.assertProblem(minimal(workerId=True), "workerId: must be an integer, got true")

    def test_port_range(self) -> None:
        self.assertProblem(minimal(publicApi={"port": -1}), "publicApi.port: -1 is less than the minimum of 0")
        self.assertProblem(
            minimal(publicApi={"port": 70000}), "publicApi.port: 70000 is greater than the maximum of 65535"
        )

    def test_missing_required(self) -> None:
        self.assertProblem(minimal(operatorApi={"port": 3335}), "operatorApi.hmacSecret: required")
        document = minimal()
        del document["id"]
        del document["directories"]
        problems = self.problems(document)
        self.assertEqual(problems, ["directories: required", "id: required"])

    def test_no_endpoint(self) -> None:
        self.assertProblem(
            minimal(endpoints={"joystreamNodeWs": "ws://x"}),
            "endpoints: set one of endpoints.queryNode, endpoints.storageSquid, endpoints.catalog (none is set)",
        )

    def test_two_endpoints(self) -> None:
        self.assertProblem(
            minimal(endpoints={"queryNode": "http://a", "catalog": "c.yml"}),
            "endpoints: set only one of endpoints.queryNode, endpoints.storageSquid, endpoints.catalog "
            "(found endpoints.queryNode and endpoints.catalog)",
        )

    def test_neither_buckets_nor_worker(self) -> None:
        document = minimal()
        del document["workerId"]
        problems = self.problems(document)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith("workerId: required when buckets is not set"), problems)

    def test_bad_bucket_ids(self) -> None:
        problems = self.problems(minimal(buckets=[1, "a:b", -2, None, "1"]))
        self.assertEqual(
            problems,
            [
                "buckets: bucket id '1' is listed twice",
                "buckets[1]: 'a:b' is not a bucket id (an integer or 'family:index')",
                "buckets[2]: -2 is not a bucket id (must be >= 0)",
                "buckets[3]: must be an integer or a string, got null",
            ],
        )
        self.assertProblem(minimal(buckets=[]), "buckets: must not be empty")

    def test_unknown_keys(self) -> None:
        self.assertProblem(minimal(unknownTopLevelKey=1), "unknownTopLevelKey: unknown key")
        self.assertProblem(
            minimal(limits={"storage": "30G", "querynodecachettl": 5}),
            "limits.querynodecachettl: unknown key (did you mean 'queryNodeCacheTTL'?)",
        )

    def test_enum(self) -> None:
        self.assertProblem(
            minimal(logs={"console": {"level": "loud"}}),
            "logs.console.level: 'loud' is not one of: error, warn, info, http, verbose, debug, silly",
        )

    def test_log_file_size_minimum(self) -> None:
        self.assertProblem(
            minimal(logs={"file": {"path": "/l", "maxSize": 100}}), "logs.file.maxSize: must be at least 1K"
        )

    def test_secret_value_never_in_messages(self) -> None:
        problems = self.problems(minimal(operatorApi={"port": 1, "hmacSecret": 123456789123}))
        self.assertEqual(problems, ["operatorApi.hmacSecret: must be a string"])

    def test_all_problems_at_once(self) -> None:
        problems = self.problems(
            minimal(limits={"storage": "12X"}, publicApi={"port": "x"}, extra=1)
        )
        self.assertEqual(
            problems,
            [
                "extra: unknown key",
                "limits.storage: '12X' is not a size like 500G",
                "publicApi.port: must be an integer, got 'x'",
            ],
        )

    def test_not_a_mapping(self) -> None:
        self.assertEqual(self.problems(None), ["the config is empty"])
        self.assertEqual(self.problems([1]), ["the config must be a mapping of keys to values, not a list"])

    def test_yaml_syntax_error(self) -> None:
        path = self.write("bad.yml", "id: x\nlimits: [1, 2\nother: 3\n")
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(len(error.problems), 1)
        self.assertIn(f"{path}: YAML syntax error at line 3", error.problems[0])

    def test_json_syntax_error(self) -> None:
        path = self.write("bad.json", '{"id": "x",}')
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(error.problems, [f"{path}: JSON syntax error at line 1, column 12: Expecting property name enclosed in double quotes"])

    def test_duplicate_keys(self) -> None:
        path = self.write("dup.yml", ARGUS_LATEST + "workerId: 3\n")
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertIn("found the key 'workerId' twice", error.problems[0])
        path = self.write("dup.json", '{"id": "a", "id": "b"}')
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(error.problems, [f"{path}: invalid JSON: duplicate key 'id'"])

    def test_missing_file(self) -> None:
        path = Path(self.mktemp()) / "nope.yml"
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(error.problems, [f"{path}: no such file"])

    def test_directory(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        error = self.assertRaises(ConfigError, load_config, folder, {})
        self.assertEqual(error.problems, [f"{folder}: is a directory, not a config file"])

    def test_empty_and_binary_files(self) -> None:
        path = self.write("empty.yml", "# nothing\n")
        self.assertEqual(self.assertRaises(ConfigError, load_config, path, {}).problems, ["the config is empty"])
        path.write_bytes(b"id: \xff\xfe\n")
        problems = self.assertRaises(ConfigError, load_config, path, {}).problems
        self.assertEqual(problems, [f"{path}: not UTF-8 text (byte 4)"])

    def test_bad_explicit_tag(self) -> None:
        path = self.write("tag.yml", "id: !!int nope\n")
        problems = self.assertRaises(ConfigError, load_config, path, {}).problems
        self.assertTrue(problems[0].startswith(f"{path}: invalid YAML:"), problems)

    @settings(deadline=None, max_examples=200)
    @given(
        st.dictionaries(
            st.sampled_from(list(MINIMAL) + ["logs", "buckets", "operatorApi", "intervals", "otlp", "x"]),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                max_leaves=10,
            ),
        )
    )
    def test_any_document_gives_config_or_config_error(self, changes: dict[str, Any]) -> None:
        try:
            parse_config(minimal(**changes), Path("/etc/jsd"))
        except ConfigError as e:
            self.assertTrue(e.problems)
            for problem in e.problems:
                self.assertIsInstance(problem, str)


class YamlRulesTests(ConfigTestCase):
    """The original node parses YAML 1.2; PyYAML defaults to YAML 1.1."""

    def test_scalars(self) -> None:
        path = self.write(
            "c.yml",
            "a: 1:2\nb: off\nc: yes\nd: 010\ne: 0x1f\nf: 2001-12-14\ng: true\nh: 1.5\ni: ~\nj: 0o17\n",
        )
        document = config_module.read_config_document(path)
        self.assertEqual(
            document,
            {"a": "1:2", "b": "off", "c": "yes", "d": 10, "e": 31, "f": "2001-12-14", "g": True, "h": 1.5, "i": None, "j": 15},
        )

    def test_log_output_off(self) -> None:
        path = self.write(
            "c.yml",
            ARGUS_LATEST.replace("  file:\n    level: debug", "  elastic: off\n  file:\n    level: debug").replace(
                "  console:\n    level: verbose", "  console: off"
            ),
        )
        config = load_config(path, environ={})
        self.assertIsNone(config.logs.console_level)
        self.assertFalse(config.logs.elastic)
        self.assertEqual(config.warnings, ())

    def test_logs_without_console(self) -> None:
        config = parse_config(minimal(logs={"file": {"path": "l"}}), Path("/etc/jsd"))
        self.assertIsNone(config.logs.console_level)
        self.assertEqual(config.logs.file, FileLog(path=Path("/etc/jsd/l")))


class PathTests(ConfigTestCase):
    def test_relative_paths_resolve_against_config_folder(self) -> None:
        path = self.write(
            "node.yml",
            ARGUS_LATEST.replace("storageSquid: http://localhost:4352/graphql", "catalog: ../cat/catalog.json")
            .replace("./local/cache", "/abs/cache")
            .replace("./local/logs", "logs/here"),
        )
        folder = path.parent.absolute()
        config = load_config(path, environ={})
        self.assertEqual(config.directories.assets, folder / "local" / "data")
        self.assertEqual(config.directories.cache_state, Path("/abs/cache"))
        self.assertEqual(config.logs.file.path, folder / "logs" / "here")
        self.assertEqual(config.endpoints.catalog, folder.parent / "cat" / "catalog.json")

    def test_home_expanded(self) -> None:
        with mock.patch.dict(os.environ, {"HOME": "/home/op"}):
            config = parse_config(minimal(directories={"assets": "~/a", "cacheState": "s"}), Path("/etc/jsd"))
        self.assertEqual(config.directories.assets, Path("/home/op/a"))
        self.assertEqual(config.directories.cache_state, Path("/etc/jsd/s"))


class WarningTests(ConfigTestCase):
    def test_small_storage(self) -> None:
        config = parse_config(minimal(limits={"storage": "1G", "maxCachedItemSize": "10K"}), Path("/"))
        self.assertEqual(config.limits.storage, GiB)
        self.assertEqual(
            config.warnings,
            (
                "limits.storage: 1G is less than 20G, the minimum of the original node (fine for a demo or a test)",
                "limits.maxCachedItemSize: 10K is less than 1M, the minimum of the original node",
            ),
        )

    def test_storage_at_minimum(self) -> None:
        self.assertEqual(parse_config(minimal(limits={"storage": "20G"}), Path("/")).warnings, ())

    def test_secret_strength(self) -> None:
        weak = parse_config(minimal(operatorApi={"port": 1, "hmacSecret": "short"}), Path("/"))
        self.assertEqual(
            check_secret_strength(weak, insecure_dev=False),
            [
                "operatorApi.hmacSecret: must be at least 16 characters "
                "(use --insecure-dev to allow a weak secret for local demos)"
            ],
        )
        self.assertEqual(check_secret_strength(weak, insecure_dev=True), [])
        strong = parse_config(minimal(operatorApi={"port": 1, "hmacSecret": "x" * 16}), Path("/"))
        self.assertEqual(check_secret_strength(strong, insecure_dev=False), [])
        self.assertEqual(check_secret_strength(parse_config(minimal(), Path("/")), insecure_dev=False), [])


class MaskedDictTests(ConfigTestCase):
    def test_no_secret(self) -> None:
        path = self.write("c.yml", EVERY_KEY)
        config = load_config(path, environ={})
        masked = masked_config_dict(config)
        self.assertEqual(masked["operatorApi"]["hmacSecret"], "***")
        self.assertNotIn("a-long-enough-operator-secret", json.dumps(masked))
        self.assertNotIn("keys", masked)
        self.assertEqual(masked["limits"]["storage"], "1T")
        self.assertEqual(masked["buckets"], [3, "1:2", "0:7"])

    def test_round_trip(self) -> None:
        """With the secret put back, the masked dict is the same config."""
        path = self.write("c.yml", EVERY_KEY.replace("  elastic:\n    level: info\n    endpoint: http://localhost:9200\n", ""))
        config = load_config(path, environ={})
        document = masked_config_dict(config)
        document["operatorApi"]["hmacSecret"] = config.operator_api.hmac_secret
        again = parse_config(document, Path("/elsewhere"))
        self.assertEqual(attrs.evolve(again, source=config.source, warnings=config.warnings), config)


class ReferenceDocTests(SynchronousTestCase):
    def test_docs_up_to_date(self) -> None:
        docs = REPO / "docs" / "config.md"
        if not (REPO / "setup.cfg").exists():
            raise self.skipTest("not running from a source tree")
        self.assertEqual(
            docs.read_text("utf-8"),
            render_config_reference(),
            "docs/config.md is out of date: run `jsdistributor config reference > docs/config.md`",
        )

    def test_every_key_documented(self) -> None:
        text = render_config_reference()
        for leaf in config_module._iter_leaf_paths(config_schema()):
            self.assertIn(f"`{'.'.join(leaf)}`", text)
            self.assertIn(env_var_name(leaf), text)

    def test_schema_is_valid(self) -> None:
        from jsonschema import Draft202012Validator

        Draft202012Validator.check_schema(config_schema())
        for leaf in config_module._iter_leaf_paths(config_schema()):
            node: Any = config_schema()
            for key in leaf:
                node = node["properties"][key]
            self.assertTrue(node.get("description"), f"{'.'.join(leaf)} has no description")

    def test_env_var_names(self) -> None:
        self.assertEqual(
            env_var_name(("limits", "queryNodeCacheTTL")), "JOYSTREAM_DISTRIBUTOR__LIMITS__QUERY_NODE_CACHE_TTL"
        )
        self.assertEqual(
            env_var_name(("operatorApi", "hmacSecret")), "JOYSTREAM_DISTRIBUTOR__OPERATOR_API__HMAC_SECRET"
        )
