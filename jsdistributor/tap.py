"""``twistd jsdistributor``: options and the service tree."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .config import ConfigError, NodeConfig, check_secret_strength, load_config


class Options(usage.Options):
    synopsis = "--config PATH [--insecure-dev]"
    longdesc = (
        "Runs a Joystream distributor node. PATH is the original node's (Argus) "
        "YAML or JSON config file; JOYSTREAM_DISTRIBUTOR__* environment variables "
        "override its keys (e.g. JOYSTREAM_DISTRIBUTOR__LIMITS__STORAGE=100G)."
    )
    optParameters = [
        ["config", "c", None, "Path to the node's YAML or JSON config file (the original node's format)."],
    ]
    optFlags = [
        ["insecure-dev", None, "Allow an operatorApi.hmacSecret shorter than 16 characters (local demos only)."],
    ]

    node_config: NodeConfig

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required")
        try:
            config = load_config(self["config"], os.environ)
            problems = check_secret_strength(config, bool(self["insecure-dev"]))
            problems += prepare_directories(config)
        except ConfigError as e:
            problems = e.problems
        if problems:
            # Not a UsageError: twistd would print the whole option list
            # first and bury the problems. One line per problem, exit 2.
            sys.stderr.write("jsdistributor: " + _problems_text(self["config"], problems) + "\n")
            sys.stderr.flush()
            raise SystemExit(2)
        self.node_config = config


def _problems_text(path: str, problems: list[str]) -> str:
    return f"invalid configuration {path}:\n  " + "\n  ".join(problems)


def prepare_directories(config: NodeConfig) -> list[str]:
    """Create the directories if missing; one problem per unusable one."""
    problems = []
    for key, path in (
        ("directories.assets", config.directories.assets),
        ("directories.cacheState", config.directories.cache_state),
    ):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            problems.append(f"{key}: cannot create {path}: {e.strerror}")
            continue
        if not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"{key}: {path} is not writable")
    return problems


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from .logs import configure_logging
    from .node import DistributorNode

    outputs = configure_logging(
        options.node_config, reactor, twistd_options=getattr(options, "parent", None)
    )
    node = DistributorNode(options.node_config, reactor)
    # twistd makes the node a child of its Application before starting its
    # own logging; the node hands it this observer then (see
    # DistributorNode.setServiceParent and jsdistributor.logs).
    node.console_observer = outputs.console
    return node
