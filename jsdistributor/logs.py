"""Logging set-up: the effective config (secrets masked) and config
warnings at start-up, and the JSON-lines log file (``logs.file``)."""

from __future__ import annotations

import json
import os

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python.logfile import LogFile

from .config import NodeConfig, masked_config_dict

log = Logger()

#: The original node's level names (winston) mapped to twisted's.
LEVELS = {
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "http": LogLevel.info,
    "verbose": LogLevel.debug,
    "debug": LogLevel.debug,
    "silly": LogLevel.debug,
}


def level_of(name: str | None) -> LogLevel:
    return LEVELS.get((name or "info").lower(), LogLevel.info)


def configure_logging(config: NodeConfig) -> None:
    if config.logs.file is not None:
        file_conf = config.logs.file
        path = str(file_conf.path)
        if os.path.isdir(path) or path.endswith(os.sep):
            path = os.path.join(path, "jsdistributor.log")
        directory, name = os.path.split(path)
        os.makedirs(directory or ".", exist_ok=True)
        logfile = LogFile(
            name,
            directory or ".",
            rotateLength=file_conf.max_size or 50 * 1024 * 1024,
            maxRotatedFiles=file_conf.max_files,
        )
        predicate = LogLevelFilterPredicate(defaultLogLevel=level_of(file_conf.level))
        globalLogPublisher.addObserver(FilteringLogObserver(jsonFileLogObserver(logfile), [predicate]))
    for warning in config.warnings:
        log.warn("config: {warning}", warning=warning)
    log.info("effective config: {config}", config=json.dumps(masked_config_dict(config), default=str))
