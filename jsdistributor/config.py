"""The node's configuration: the original node's (Argus) YAML/JSON format.

Pure: reading the file is the only I/O, and ``parse_config`` takes the
already-decoded document so it can be tested without files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from attrs import frozen

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


@frozen
class OperatorApi:
    port: int
    hmac_secret: str
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


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, override from the environment, validate and build the config."""
    raise NotImplementedError  # replaced below by the full loader


def parse_config(document: Any, base: Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    raise NotImplementedError
