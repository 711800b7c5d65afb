"""The node's configuration: the original node's (Argus) YAML/JSON format.

Pure: reading the file is the only I/O (``load_config``), and ``parse_config``
takes the already-decoded document so it can be tested without files.

The rules live in ``config_schema.json`` (JSON Schema, one ``description`` per
key); ``docs/config.md`` is rendered from it by ``render_config_reference``.
Every problem found becomes one line of ``ConfigError.problems``, named by its
dotted key (``limits.storage: '12X' is not a size like 500G``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml
from attrs import evolve, frozen
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from .buckets import normalize_bucket_id
from .sizes import format_size, parse_size

GiB = 1024**3


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` has one message per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@frozen
class Endpoints:
    query_node: str | None = None
    storage_squid: str | None = None
    joystream_node_ws: str | None = None
    #: Our static catalog (YAML/JSON), resolved against the config's folder.
    catalog: Path | None = None


@frozen
class Directories:
    assets: Path
    cache_state: Path


@frozen
class FileLog:
    path: Path
    level: str = "debug"
    max_files: int | None = None
    max_size: int | None = None
    frequency: str | None = None  # yearly | monthly | daily | hourly
    archive: bool = False


@frozen
class Logs:
    console_level: str | None = "info"
    file: FileLog | None = None
    #: ``logs.elastic`` was present: accepted, warned about, unused.
    elastic: bool = False


@frozen
class Limits:
    storage: int
    max_concurrent_storage_node_downloads: int = 100
    max_concurrent_outbound_connections: int = 300
    outbound_requests_timeout_ms: int = 5000
    pending_download_timeout_sec: int = 3600
    max_cached_item_size: int | None = None
    data_object_source_by_object_id_ttl: int = 60
    query_node_cache_ttl: int = 60


@frozen
class Intervals:
    save_cache_state: int = 60
    check_storage_node_response_times: int = 60
    cache_cleanup: int = 60


@frozen
class PublicApi:
    port: int
    interface: str = "0.0.0.0"
    #: jsdistributor only: extra processes serving cached objects on the
    #: public port (``SO_REUSEPORT``); 0: the node is one process.
    workers: int = 0


@frozen
class OperatorApi:
    port: int
    hmac_secret: str
    interface: str = "127.0.0.1"


@frozen
class Metrics:
    """jsdistributor only: a listener serving ``GET /metrics`` alone."""

    port: int
    interface: str = "127.0.0.1"


@frozen
class NodeConfig:
    id: str
    endpoints: Endpoints
    directories: Directories
    logs: Logs
    limits: Limits
    intervals: Intervals
    public_api: PublicApi
    operator_api: OperatorApi | None = None
    #: Distribution bucket ids as strings: ``"3"`` (integer index form) or
    #: ``"0:3"`` (``family:index`` form). ``None``: all buckets of ``worker_id``.
    buckets: tuple[str, ...] | None = None
    worker_id: int | None = None
    #: Where the config file lives (relative paths were resolved against it).
    source: Path | None = None
    #: Warnings found while parsing (logged at start-up).
    warnings: tuple[str, ...] = ()
    #: ``metrics``: a separate Prometheus listener (None: operator port only).
    metrics: Metrics | None = None



#: Environment variables starting with this override config keys.
ENV_PREFIX = "JOYSTREAM_DISTRIBUTOR__"
#: Below this ``limits.storage`` the original node refuses to start; we warn.
MIN_STORAGE = 20 * GiB
#: Below this ``limits.maxCachedItemSize`` the original node refuses to start; we warn.
MIN_MAX_CACHED_ITEM_SIZE = 1024**2
#: ``logs.file.maxSize`` must be at least this (as the original node).
MIN_LOG_FILE_SIZE = 1024
#: ``operatorApi.hmacSecret`` shorter than this is refused without ``--insecure-dev``.
MIN_SECRET_LENGTH = 16

_ENDPOINT_KEYS = ("queryNode", "storageSquid", "catalog")
_MASK = "***"
_UNSET_VALUES = frozenset({"off", "null", "undefined"})
_TRUE_VALUES = frozenset({"true", "yes", "on", "1"})
_FALSE_VALUES = frozenset({"false", "no", "0"})
_INTEGER_TEXT = re.compile(r"[-+]?[0-9]{1,30}", re.ASCII)


# ---------------------------------------------------------------------------
# Public entry points


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, override from the environment, validate and build the config.

    ``environ`` defaults to ``os.environ``; pass ``{}`` for no overrides.
    Every failure (missing file, YAML syntax, invalid values) is a
    ``ConfigError``.
    """
    path = Path(path)
    document = read_config_document(path)
    config = parse_config(
        document, path.absolute().parent, os.environ if environ is None else environ
    )
    return evolve(config, source=path.absolute())


def parse_config(document: Any, base: Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Validate a decoded config document and build the ``NodeConfig``.

    Pure: ``environ`` holds the overrides to apply (``None``: none, this
    function never reads ``os.environ`` itself); relative paths resolve
    against ``base``. ``document`` is not modified.
    """
    if document is None:
        raise ConfigError(["the config is empty"])
    if not isinstance(document, dict):
        raise ConfigError(
            [f"the config must be a mapping of keys to values, not {_kind(document)}"]
        )
    doc: dict[str, Any] = copy.deepcopy(document)
    problems: list[_Problem] = []
    warnings: list[str] = []
    origins: dict[tuple[str, ...], str] = {}
    if environ:
        _apply_environment(doc, environ, problems, warnings, origins)
    _switch_off_log_outputs(doc)
    problems.extend(_schema_problems(doc))
    problems.extend(_cross_check(doc))
    if problems:
        problems.sort(key=lambda problem: [str(part) for part in problem.path])
        raise ConfigError(_render_problems(problems, origins))
    return _build(doc, Path(base), warnings)


def check_secret_strength(config: NodeConfig, insecure_dev: bool) -> list[str]:
    """Problems with the operator API's secret (empty list: fine).

    Not enforced by ``parse_config`` (so ``config check`` and tests can load
    weak demo configs); the daemon refuses to start on any problem.
    """
    if config.operator_api is None or insecure_dev:
        return []
    if len(config.operator_api.hmac_secret) < MIN_SECRET_LENGTH:
        return [
            f"operatorApi.hmacSecret: must be at least {MIN_SECRET_LENGTH} characters "
            "(use --insecure-dev to allow a weak secret for local demos)"
        ]
    return []


def masked_config_dict(config: NodeConfig) -> dict[str, Any]:
    """The effective config in the file's shape (camelCase keys), secrets
    replaced by ``"***"``: for the start-up log and ``config check``.

    Sizes are written as ``500G``, paths as absolute strings, defaults filled
    in. The unused ``keys`` and ``logs.elastic``/``otlp`` sections are not
    kept by the parser, so they never appear here.
    """
    out: dict[str, Any] = {"id": config.id}
    endpoints: dict[str, Any] = {}
    for key, value in (
        ("queryNode", config.endpoints.query_node),
        ("storageSquid", config.endpoints.storage_squid),
        ("catalog", config.endpoints.catalog),
        ("joystreamNodeWs", config.endpoints.joystream_node_ws),
    ):
        if value is not None:
            endpoints[key] = str(value)
    out["endpoints"] = endpoints
    out["directories"] = {
        "assets": str(config.directories.assets),
        "cacheState": str(config.directories.cache_state),
    }
    logs: dict[str, Any] = {}
    if config.logs.console_level is not None:
        logs["console"] = {"level": config.logs.console_level}
    if config.logs.file is not None:
        file = config.logs.file
        file_out: dict[str, Any] = {"level": file.level, "path": str(file.path)}
        if file.max_files is not None:
            file_out["maxFiles"] = file.max_files
        if file.max_size is not None:
            file_out["maxSize"] = file.max_size  # an integer, as the original node wants
        if file.frequency is not None:
            file_out["frequency"] = file.frequency
        file_out["archive"] = file.archive
        logs["file"] = file_out
    out["logs"] = logs
    limits = config.limits
    limits_out: dict[str, Any] = {"storage": format_size(limits.storage)}
    limits_out.update(
        {
            "maxConcurrentStorageNodeDownloads": limits.max_concurrent_storage_node_downloads,
            "maxConcurrentOutboundConnections": limits.max_concurrent_outbound_connections,
            "outboundRequestsTimeoutMs": limits.outbound_requests_timeout_ms,
            "pendingDownloadTimeoutSec": limits.pending_download_timeout_sec,
        }
    )
    if limits.max_cached_item_size is not None:
        limits_out["maxCachedItemSize"] = format_size(limits.max_cached_item_size)
    limits_out["dataObjectSourceByObjectIdTTL"] = limits.data_object_source_by_object_id_ttl
    limits_out["queryNodeCacheTTL"] = limits.query_node_cache_ttl
    out["limits"] = limits_out
    out["intervals"] = {
        "saveCacheState": config.intervals.save_cache_state,
        "checkStorageNodeResponseTimes": config.intervals.check_storage_node_response_times,
        "cacheCleanup": config.intervals.cache_cleanup,
    }
    out["publicApi"] = {
        "port": config.public_api.port,
        "interface": config.public_api.interface,
        "workers": config.public_api.workers,
    }
    if config.operator_api is not None:
        out["operatorApi"] = {
            "port": config.operator_api.port,
            "hmacSecret": _MASK,
            "interface": config.operator_api.interface,
        }
    if config.metrics is not None:
        out["metrics"] = {"port": config.metrics.port, "interface": config.metrics.interface}
    if config.buckets is not None:
        out["buckets"] = [int(b) if b.isdigit() else b for b in config.buckets]
    if config.worker_id is not None:
        out["workerId"] = config.worker_id
    return out


def env_var_name(path: Sequence[str]) -> str:
    """``("limits", "queryNodeCacheTTL")`` -> ``JOYSTREAM_DISTRIBUTOR__LIMITS__QUERY_NODE_CACHE_TTL``."""
    return ENV_PREFIX + "__".join(_upper_snake(key) for key in path)


@functools.cache
def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``config_schema.json``); do not mutate."""
    text = resources.files(__package__).joinpath("config_schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# ---------------------------------------------------------------------------
# Reading the file


def read_config_document(path: Path) -> Any:
    """The decoded YAML (or, for ``.json`` files, JSON) document of ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    if path.suffix.lower() == ".json":
        return _load_json(text, path)
    return _load_yaml(text, path)


def _load_json(text: str, path: Path) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {key!r}")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(
            [f"{path}: JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}"]
        ) from None
    except (ValueError, RecursionError) as e:
        raise ConfigError([f"{path}: invalid JSON: {e}"]) from None


class _ConfigLoader(yaml.SafeLoader):
    """YAML with the scalar rules of YAML 1.2 (as the original node's parser).

    PyYAML follows YAML 1.1, where ``off``/``yes``/``no`` are booleans,
    ``1:2`` is the base-60 integer 62 (a bucket id would silently change)
    and ``010`` is octal. Here only ``true``/``false`` are booleans, integers
    are decimal (or ``0o``/``0x``), dates stay strings, and a key given twice
    in one mapping is an error.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                marker = (key_node.tag, key_node.value)
                if marker in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping",
                        node.start_mark,
                        f"found the key {key_node.value!r} twice",
                        key_node.start_mark,
                    )
                seen.add(marker)
        return super().construct_mapping(node, deep=deep)


_YAML11_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _load_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = e.problem or e.context or "invalid YAML"
        raise ConfigError([f"{path}: YAML syntax error{where}: {what}"]) from None
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
        raise ConfigError([f"{path}: invalid YAML: {e}"]) from None


# ---------------------------------------------------------------------------
# Environment overrides


def _apply_environment(
    doc: dict[str, Any],
    environ: Mapping[str, str],
    problems: list[_Problem],
    warnings: list[str],
    origins: dict[tuple[str, ...], str],
) -> None:
    """Apply ``JOYSTREAM_DISTRIBUTOR__A__B=value`` to ``doc["a"]["b"]``, as the
    original node does, minus its two bugs: segments match schema keys
    ignoring case and underscores (``QUERY_NODE_CACHE_TTL`` reaches
    ``queryNodeCacheTTL``), and ``false``/``no``/``0`` are False."""
    schema = config_schema()
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        found = _schema_path(schema, name[len(ENV_PREFIX) :].split("__"))
        if found is None:
            warnings.append(f"{name}: names no config key; ignored")
            continue
        path, leaf = found
        origins[path] = name
        value = environ[name]
        if value.strip().lower() in _UNSET_VALUES:
            _unset(doc, path)
            continue
        try:
            typed = _typed_env_value(value, leaf)
        except ValueError as e:
            problems.append(_Problem(path, str(e)))
            continue
        _set(doc, path, typed)


def _schema_path(
    schema: Mapping[str, Any], segments: Sequence[str]
) -> tuple[tuple[str, ...], Mapping[str, Any]] | None:
    """The schema keys named by env var segments, and the leaf's schema."""
    node: Mapping[str, Any] = schema
    path: list[str] = []
    for segment in segments:
        if not segment or node.get("type") != "object":
            return None
        wanted = segment.replace("_", "").lower()
        properties: Mapping[str, Any] = node.get("properties", {})
        matches = [key for key in properties if key.lower() == wanted]
        if matches:
            path.append(matches[0])
            node = properties[matches[0]]
        elif node.get("additionalProperties") is True:
            path.append(_camel(segment))
            node = {}
        else:
            return None
    if not path:
        return None
    return tuple(path), node


def _typed_env_value(value: str, leaf: Mapping[str, Any]) -> Any:
    declared = leaf.get("type", [])
    types = [declared] if isinstance(declared, str) else list(declared)
    if "array" in types or "object" in types:
        try:
            return json.loads(value)
        except ValueError as e:
            raise ValueError(f"{_show(value)} is not valid JSON ({e})") from None
    text = value.strip()
    if "integer" in types and _INTEGER_TEXT.fullmatch(text):
        return int(text)
    if "number" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "boolean" in types:
        if text.lower() in _TRUE_VALUES:
            return True
        if text.lower() in _FALSE_VALUES:
            return False
        raise ValueError(f"{_show(value)} is not a boolean (true/false, yes/no, 1/0)")
    # Strings, and values of the wrong type: validation names the problem.
    return value


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def _unset(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = doc
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _switch_off_log_outputs(doc: dict[str, Any]) -> None:
    """``logs.file: off`` (the original's "switch off") removes the output."""
    logs = doc.get("logs")
    if isinstance(logs, dict):
        for output in ("console", "file", "elastic"):
            value = logs.get(output)
            if value is False or (isinstance(value, str) and value.lower() == "off"):
                del logs[output]


# ---------------------------------------------------------------------------
# Validation


@frozen
class _Problem:
    path: tuple[str | int, ...]
    message: str


def _is_size(value: object) -> bool:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        parse_size(value)
    return True  # other types: the "type" rule reports them


def _is_bucket_id(value: object) -> bool:
    # JSON Schema's "integer" admits 0.0: normalize_bucket_id refuses floats.
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        normalize_bucket_id(value)
    return True


#: The schema's own formats; a ValueError's message becomes the problem.
_FORMATS = FormatChecker(formats=())
_FORMATS.checks("bytesize", raises=ValueError)(_is_size)
_FORMATS.checks("bucket-id", raises=ValueError)(_is_bucket_id)


@functools.cache
def _validator() -> Draft202012Validator:
    schema = config_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_FORMATS)


def _schema_problems(doc: dict[str, Any]) -> list[_Problem]:
    return [problem for error in _validator().iter_errors(doc) for problem in _describe(error)]


def _describe(error: ValidationError) -> list[_Problem]:
    path = tuple(error.absolute_path)
    rule = error.validator
    rule_value: Any = error.validator_value
    instance = error.instance
    secret = _is_secret(path)
    if rule == "required":
        return [_Problem(path + (key,), "required") for key in rule_value if key not in instance]
    if rule == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        return [
            _Problem(path + (str(key),), "unknown key" + _suggestion(str(key), allowed))
            for key in instance
            if key not in allowed
        ]
    if rule == "type":
        wanted = _type_phrase([rule_value] if isinstance(rule_value, str) else rule_value)
        got = "" if secret else f", got {_show(instance)}"
        return [_Problem(path, f"must be {wanted}{got}")]
    if rule == "format":
        return [_Problem(path, str(error.cause) if error.cause else f"{_show(instance)} is invalid")]
    if rule == "enum":
        choices = ", ".join(str(choice) for choice in rule_value)
        return [_Problem(path, f"{_show(instance)} is not one of: {choices}")]
    if rule in ("minLength", "minItems") and rule_value == 1:
        return [_Problem(path, "must not be empty")]
    if secret:
        return [_Problem(path, f"invalid value (rule {rule}: {rule_value})")]
    return [_Problem(path, error.message)]


def _cross_check(doc: dict[str, Any]) -> list[_Problem]:
    """Rules JSON Schema cannot say clearly."""
    problems: list[_Problem] = []
    endpoints = doc.get("endpoints")
    if isinstance(endpoints, dict):
        chosen = [f"endpoints.{key}" for key in _ENDPOINT_KEYS if key in endpoints]
        options = ", ".join(f"endpoints.{key}" for key in _ENDPOINT_KEYS)
        if not chosen:
            problems.append(_Problem(("endpoints",), f"set one of {options} (none is set)"))
        elif len(chosen) > 1:
            problems.append(
                _Problem(
                    ("endpoints",),
                    f"set only one of {options} (found {' and '.join(chosen)})",
                )
            )
    if "buckets" not in doc and "workerId" not in doc:
        problems.append(
            _Problem(
                ("workerId",),
                "required when buckets is not set (list the bucket ids to serve in "
                "buckets, or give the operator's workerId to serve all its buckets)",
            )
        )
    buckets = doc.get("buckets")
    if isinstance(buckets, list):
        seen: set[str] = set()
        for item in buckets:
            try:
                bucket = normalize_bucket_id(item)
            except ValueError:
                continue  # reported by the schema
            if bucket in seen:
                problems.append(_Problem(("buckets",), f"bucket id {bucket!r} is listed twice"))
            seen.add(bucket)
    logs = doc.get("logs")
    file = logs.get("file") if isinstance(logs, dict) else None
    if isinstance(file, dict) and "maxSize" in file:
        try:
            if parse_size(file["maxSize"]) < MIN_LOG_FILE_SIZE:
                problems.append(
                    _Problem(("logs", "file", "maxSize"), f"must be at least {format_size(MIN_LOG_FILE_SIZE)}")
                )
        except ValueError:
            pass  # reported by the schema
    return problems


def _render_problems(problems: Iterable[_Problem], origins: Mapping[tuple[str, ...], str]) -> list[str]:
    lines: list[str] = []
    for problem in problems:
        line = f"{_dotted(problem.path)}: {problem.message}" if problem.path else problem.message
        sources = [
            name
            for env_path, name in origins.items()
            if _is_prefix(env_path, problem.path) or _is_prefix(problem.path, env_path)
        ]
        if sources:
            line += f" (set by {', '.join(sorted(sources))})"
        if line not in lines:
            lines.append(line)
    return lines


# ---------------------------------------------------------------------------
# Building the model


def _build(doc: dict[str, Any], base: Path, warnings: list[str]) -> NodeConfig:
    endpoints_doc = doc["endpoints"]
    endpoints = Endpoints(
        query_node=endpoints_doc.get("queryNode"),
        storage_squid=endpoints_doc.get("storageSquid"),
        joystream_node_ws=endpoints_doc.get("joystreamNodeWs"),
        catalog=_resolve(base, endpoints_doc["catalog"]) if "catalog" in endpoints_doc else None,
    )
    directories = Directories(
        assets=_resolve(base, doc["directories"]["assets"]),
        cache_state=_resolve(base, doc["directories"]["cacheState"]),
    )

    logs_doc = doc.get("logs")
    if logs_doc is None:
        logs = Logs()
    else:
        console = logs_doc.get("console")
        file_doc = logs_doc.get("file")
        file = None
        if file_doc is not None:
            file = FileLog(
                path=_resolve(base, file_doc["path"]),
                max_size=parse_size(file_doc["maxSize"]) if "maxSize" in file_doc else None,
                **_fields(file_doc, ("level", "maxFiles", "frequency", "archive")),
            )
        logs = Logs(
            console_level=console["level"] if console is not None else None,
            file=file,
            elastic="elastic" in logs_doc,
        )
        if logs.elastic:
            warnings.append("logs.elastic is not supported; ignored")
    if "otlp" in doc:
        warnings.append("otlp is not supported; ignored")

    limits_doc = doc["limits"]
    limits = Limits(
        storage=parse_size(limits_doc["storage"]),
        max_cached_item_size=(
            parse_size(limits_doc["maxCachedItemSize"]) if "maxCachedItemSize" in limits_doc else None
        ),
        **_fields(
            limits_doc,
            (
                "maxConcurrentStorageNodeDownloads",
                "maxConcurrentOutboundConnections",
                "outboundRequestsTimeoutMs",
                "pendingDownloadTimeoutSec",
                "dataObjectSourceByObjectIdTTL",
                "queryNodeCacheTTL",
            ),
        ),
    )
    if limits.storage < MIN_STORAGE:
        warnings.append(
            f"limits.storage: {format_size(limits.storage)} is less than {format_size(MIN_STORAGE)}, "
            "the minimum of the original node (fine for a demo or a test)"
        )
    if limits.max_cached_item_size is not None and limits.max_cached_item_size < MIN_MAX_CACHED_ITEM_SIZE:
        warnings.append(
            f"limits.maxCachedItemSize: {format_size(limits.max_cached_item_size)} is less than "
            f"{format_size(MIN_MAX_CACHED_ITEM_SIZE)}, the minimum of the original node"
        )

    intervals = Intervals(
        **_fields(doc.get("intervals", {}), ("saveCacheState", "checkStorageNodeResponseTimes", "cacheCleanup"))
    )
    public_api = PublicApi(**_fields(doc["publicApi"], ("port", "interface", "workers")))
    operator_api = None
    if "operatorApi" in doc:
        operator_api = OperatorApi(**_fields(doc["operatorApi"], ("port", "hmacSecret", "interface")))
    buckets = None
    if "buckets" in doc:
        buckets = tuple(normalize_bucket_id(b) for b in doc["buckets"])
    metrics = Metrics(**_fields(doc["metrics"], ("port", "interface"))) if "metrics" in doc else None
    return NodeConfig(
        id=doc["id"],
        endpoints=endpoints,
        directories=directories,
        logs=logs,
        limits=limits,
        intervals=intervals,
        public_api=public_api,
        operator_api=operator_api,
        buckets=buckets,
        worker_id=doc.get("workerId"),
        warnings=tuple(warnings),
        metrics=metrics,
    )


def _fields(section: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """Model keyword arguments for the keys present (absent: model default)."""
    return {_snake(key): section[key] for key in keys if key in section}


def _resolve(base: Path, value: str) -> Path:
    return Path(os.path.abspath(os.path.join(base, os.path.expanduser(value))))


# ---------------------------------------------------------------------------
# The reference documentation (docs/config.md)

_REFERENCE_INTRO = """\
# Configuration reference

<!-- Generated from jsdistributor/config_schema.json: do not edit by hand.
     Regenerate with `jsdistributor config reference > docs/config.md`
     (tests/test_config.py fails when this file is out of date). -->

jsdistributor reads the configuration file of the original distributor node
(Argus): YAML, or JSON when the file name ends in `.json`. An annotated
example is `etc/config.example.yml`. Check a file, and see the effective
configuration with the secrets masked, with `jsdistributor config check PATH`.

## Conventions

- **Sizes** (`limits.storage`, `limits.maxCachedItemSize`, `logs.file.maxSize`):
  a number of bytes (`1048576`), or a number followed by a unit `B`, `K`, `M`,
  `G` or `T`, optionally followed by `B` or `iB`, any case: `500G`, `500GB`,
  `500GiB` are the same. Units are powers of 1024, as in the original node.
  A decimal fraction needs a unit K to T (`1.5G`) and is rounded down to a
  whole byte; the original node only accepts `<digits><unit>`.
- **Relative paths** (`directories`, `logs.file.path`, `endpoints.catalog`)
  are relative to the folder of the config file; a leading `~` is expanded.
- **Unknown keys** are errors, as in the original node, so that a misspelt
  key is not silently ignored (the message suggests the closest known key).
- **YAML** is read with YAML 1.2 rules, as the original node does: only
  `true`/`false` are booleans (`off`, `yes`, `no` are strings), `1:2` is a
  string (a bucket id), `010` is ten, and a key given twice is an error.
- **Environment variables** override the file, as in the original node:
  `JOYSTREAM_DISTRIBUTOR__` followed by the key's path, one segment per level
  separated by `__`, for example `JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE=100G`.
  Segments match keys ignoring case and underscores, so
  `JOYSTREAM_DISTRIBUTOR__LIMITS__QUERY_NODE_CACHE_TTL` reaches
  `limits.queryNodeCacheTTL` and `JOYSTREAM_DISTRIBUTOR__OPERATOR_API__HMAC_SECRET`
  reaches `operatorApi.hmacSecret` (the original node misses both). Values are
  typed by the key: integers; booleans `true`/`yes`/`on`/`1` and
  `false`/`no`/`0`; JSON for lists and sections
  (`JOYSTREAM_DISTRIBUTOR__BUCKETS='[1, "0:2"]'`). The value `off` or `null`
  removes the key (`JOYSTREAM_DISTRIBUTOR__LOGS__FILE=off`). Overrides may add
  keys the file does not have. A variable that names no key is ignored with a
  warning.
- **Secrets**: `operatorApi.hmacSecret` is never logged or printed (shown as
  `***`).

## Keys
"""


def render_config_reference() -> str:
    """``docs/config.md``: one section per key, from ``config_schema.json``."""
    schema = config_schema()
    lines = [_REFERENCE_INTRO]
    required = set(schema.get("required", []))
    for key, sub in schema["properties"].items():
        _render_key(lines, (key,), sub, key in required, parent_required=True)
    return "\n".join(lines).rstrip("\n") + "\n"


def _render_key(
    lines: list[str],
    path: tuple[str, ...],
    schema: Mapping[str, Any],
    required: bool,
    parent_required: bool,
) -> None:
    level = "#" * min(2 + len(path), 5)
    lines.append(f"{level} `{'.'.join(path)}`")
    lines.append("")
    lines.append(schema.get("description", ""))
    lines.append("")
    lines.append(f"- Type: {_schema_type_phrase(schema)}")
    if required and parent_required:
        lines.append("- Required")
    elif required:
        lines.append(f"- Required when `{'.'.join(path[:-1])}` is given")
    elif "default" in schema:
        lines.append(f"- Optional, default `{json.dumps(schema['default'])}`")
    else:
        lines.append("- Optional")
    lines.append(f"- Environment: `{env_var_name(path)}`")
    lines.append("")
    if schema.get("type") == "object":
        sub_required = set(schema.get("required", []))
        for key, sub in schema.get("properties", {}).items():
            _render_key(lines, path + (key,), sub, key in sub_required, required and parent_required)


def _schema_type_phrase(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    if fmt == "bytesize":
        return "size (`500G`, `20M`, or a number of bytes)"
    if fmt == "bucket-id":
        return 'bucket id (an integer, or `"family:index"`)'
    declared = schema.get("type", [])
    types = [declared] if isinstance(declared, str) else list(declared)
    if "enum" in schema:
        return "one of " + ", ".join(f"`{choice}`" for choice in schema["enum"])
    if types == ["object"]:
        free = " (any keys)" if schema.get("additionalProperties") is True else ""
        return "section" + free if "properties" in schema else "mapping"
    if types == ["array"]:
        items = schema.get("items", {})
        phrase = "list of " + _plural(_schema_type_phrase(items))
        if schema.get("minItems"):
            phrase += f", at least {schema['minItems']}"
        return phrase
    phrase = _type_phrase(types).removeprefix("a ").removeprefix("an ")
    if schema.get("minLength") == 1:
        phrase = "non-empty " + phrase
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        phrase += f", {low} to {high}"
    elif low is not None:
        phrase += f", at least {low}"
    return phrase


def _plural(phrase: str) -> str:
    head, _, tail = phrase.partition(" (")
    return head + "s" + (f" ({tail}" if tail else "")


# ---------------------------------------------------------------------------
# Small helpers

_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean (true or false)",
    "object": "a section (a mapping of keys to values)",
    "array": "a list",
    "null": "null",
}


def _type_phrase(types: Sequence[str]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t) for t in types)


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def _show(value: object) -> str:
    """A short, JSON-like rendering of a config value for messages."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggestion(key: str, allowed: Sequence[str]) -> str:
    by_case = [k for k in allowed if k.lower().replace("_", "") == key.lower().replace("_", "")]
    close = by_case or difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_secret(path: tuple[str | int, ...]) -> bool:
    return path[:2] == ("operatorApi", "hmacSecret") or path[:1] == ("keys",)


def _is_prefix(prefix: Sequence[object], path: Sequence[object]) -> bool:
    return len(prefix) <= len(path) and tuple(path[: len(prefix)]) == tuple(prefix)


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _upper_snake(key: str) -> str:
    """``queryNodeCacheTTL`` -> ``QUERY_NODE_CACHE_TTL``."""
    return _WORD_BOUNDARY.sub("_", key).upper()


def _snake(key: str) -> str:
    """``queryNodeCacheTTL`` -> ``query_node_cache_ttl`` (the model's field names)."""
    return _upper_snake(key).lower()


def _camel(segment: str) -> str:
    """``INDEX_PREFIX`` -> ``indexPrefix`` (keys the schema does not list)."""
    words = [w for w in segment.lower().split("_") if w]
    return words[0] + "".join(w.capitalize() for w in words[1:]) if words else segment


def _iter_leaf_paths(schema: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of the schema that is not a section (for tests and docs)."""
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield from _iter_leaf_paths(sub, path + (key,))
        else:
            yield path + (key,)
