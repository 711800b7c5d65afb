"""The ``jsdistributor`` command: operator commands and config tools.

``jsdistributor node set-buckets|set-worker|start-public-api|stop-public-api|shutdown``
send one signed request to a running node's operator API, as the original
node's CLI does; ``jsdistributor config check|reference`` validate a config
file and print the config reference.

Adding a command: write ``add_subcommand(subparsers)`` in your module; it
calls ``subparsers.add_parser(...)`` and ``parser.set_defaults(run=handler)``,
where ``handler(args, console) -> int`` returns the exit code and writes only
through ``console`` (so tests capture the output). Then append it to
``SUBCOMMANDS`` below. Import heavy modules inside the handler, not at the
top of your module, so ``jsdistributor --help`` stays fast.

A one-shot command has no reactor to run: the HTTP request uses
``urllib.request``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence, TextIO

from attrs import frozen

DEFAULT_OPERATOR_URL = "http://127.0.0.1:3335"

#: Exit codes: 1 the request or the node failed, 2 bad input (usage, config).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@frozen
class Console:
    """Where a command writes: ``say`` for results, ``complain`` for errors."""

    stdout: TextIO
    stderr: TextIO

    def say(self, text: str) -> None:
        print(text, file=self.stdout)

    def complain(self, text: str) -> None:
        print(text, file=self.stderr)


Handler = Callable[[argparse.Namespace, Console], int]


# ---------------------------------------------------------------------------
# node: operator API requests


@frozen
class _NodeAction:
    name: str
    route: str
    help: str


_NODE_ACTIONS = (
    _NodeAction("set-buckets", "/api/v1/set-buckets", "change the set of buckets the node distributes"),
    _NodeAction("set-worker", "/api/v1/set-worker", "change the node operator's worker id"),
    _NodeAction("start-public-api", "/api/v1/start-api", "turn the public API on"),
    _NodeAction("stop-public-api", "/api/v1/stop-api", "turn the public API off"),
    _NodeAction("shutdown", "/api/v1/shutdown", "shut the node down"),
)


def add_node_subcommand(subparsers: Any) -> None:
    node = subparsers.add_parser(
        "node",
        help="send a command to a running node's operator API",
        description="Send one JWT-signed request to a running node's operator API "
        "(as the original node's `node:*` commands).",
    )
    actions = node.add_subparsers(dest="node_action", metavar="ACTION", required=True)
    for action in _NODE_ACTIONS:
        parser = actions.add_parser(action.name, help=action.help, description=action.help.capitalize() + ".")
        _add_connection_options(parser)
        if action.name == "set-buckets":
            which = parser.add_mutually_exclusive_group(required=True)
            which.add_argument(
                "--bucket-ids",
                "--bucketIds",
                dest="bucket_ids",
                nargs="+",
                type=_bucket_id_argument,
                metavar="ID",
                help="bucket ids to distribute: `family:index` (sent as strings) or "
                "`index` (sent as integers), separated by spaces",
            )
            which.add_argument(
                "-a",
                "--all",
                action="store_true",
                help="distribute every bucket of the configured worker",
            )
        elif action.name == "set-worker":
            parser.add_argument(
                "-w",
                "--worker-id",
                "--workerId",
                dest="worker_id",
                type=_worker_id_argument,
                required=True,
                metavar="N",
                help="the operator's worker id (an integer >= 0)",
            )
        parser.set_defaults(run=_run_node_action, node_route=action.route)


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-u",
        "--url",
        help="operator API base URL (default: from --config's operatorApi, "
        f"else {DEFAULT_OPERATOR_URL})",
    )
    parser.add_argument(
        "-s",
        "--secret",
        help="HMAC secret (operatorApi.hmacSecret); prefer --config, a command line "
        "is visible to other users of the machine",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help="the node's config file: its operatorApi gives the secret and, unless "
        "--url is given, the address",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up after this long (default: 30)",
    )


def _bucket_id_argument(text: str) -> int | str:
    from .buckets import normalize_bucket_id

    try:
        bucket = normalize_bucket_id(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return int(bucket) if bucket.isdigit() else bucket


def _worker_id_argument(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker id (an integer >= 0)")
    return int(text)


def _node_request_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.node_action == "set-buckets":
        return {} if args.all else {"buckets": list(args.bucket_ids)}
    if args.node_action == "set-worker":
        return {"workerId": args.worker_id}
    return {}


def _run_node_action(args: argparse.Namespace, console: Console) -> int:
    from .config import ConfigError, load_config
    from .jwtauth import sign_operator_request

    secret: str | None = args.secret
    base_url: str | None = args.url
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            for problem in e.problems:
                console.complain(f"error: {problem}")
            return EXIT_USAGE
        if config.operator_api is None:
            if secret is None:
                console.complain(f"error: {args.config} has no operatorApi section (no secret to sign with)")
                return EXIT_USAGE
        else:
            if secret is None:
                secret = config.operator_api.hmac_secret
            if base_url is None:
                base_url = _operator_url(config.operator_api.interface, config.operator_api.port)
    if secret is None:
        console.complain("error: give --secret, or --config to read operatorApi.hmacSecret from")
        return EXIT_USAGE
    if base_url is None:
        base_url = DEFAULT_OPERATOR_URL
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        console.complain(f"error: --url must be an http:// or https:// URL, not {base_url!r}")
        return EXIT_USAGE

    route: str = args.node_route
    body = _node_request_body(args)
    token = sign_operator_request(secret, route, body, now=time.time())
    url = base_url.rstrip("/") + route
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        method="POST",
        headers={"content-type": "application/json", "authorization": f"bearer {token}"},
    )
    # The operator API is contacted directly: no proxies from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as e:
        with e:
            detail = _error_detail(e.read())
        console.complain(f"error: the node refused: HTTP {e.code}: {detail or e.reason}")
        return EXIT_FAILED
    except urllib.error.URLError as e:
        console.complain(f"error: cannot reach the operator API at {base_url}: {_reason(e.reason)}")
        return EXIT_FAILED
    except (OSError, ValueError) as e:  # a timeout while reading, an invalid port
        console.complain(f"error: cannot reach the operator API at {base_url}: {_reason(e)}")
        return EXIT_FAILED
    text = answer.decode("utf-8", "replace").strip()
    console.say(text if text else "OK")
    return EXIT_OK


def _operator_url(interface: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(interface, interface)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _error_detail(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return text[:500]


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


# ---------------------------------------------------------------------------
# config: check a file, print the reference


def add_config_subcommand(subparsers: Any) -> None:
    config = subparsers.add_parser("config", help="check a config file; print the config reference")
    actions = config.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate a config file and print the effective config",
        description="Validate a config file (after JOYSTREAM_DISTRIBUTOR__* environment "
        "overrides) and print the effective config as YAML, secrets masked. "
        "Exit 0 when valid, 2 otherwise.",
    )
    check.add_argument("path", metavar="PATH")
    check.add_argument(
        "--insecure-dev",
        action="store_true",
        help="accept a weak operatorApi.hmacSecret, as the node does with --insecure-dev",
    )
    check.set_defaults(run=_run_config_check)
    reference = actions.add_parser(
        "reference", help="print the config reference (docs/config.md) as Markdown"
    )
    reference.set_defaults(run=_run_config_reference)


def _run_config_check(args: argparse.Namespace, console: Console) -> int:
    import yaml

    from .config import ConfigError, check_secret_strength, load_config, masked_config_dict

    try:
        config = load_config(args.path)
    except ConfigError as e:
        for problem in e.problems:
            console.complain(f"error: {problem}")
        return EXIT_USAGE
    problems = check_secret_strength(config, insecure_dev=args.insecure_dev)
    for problem in problems:
        console.complain(f"error: {problem}")
    for warning in config.warnings:
        console.complain(f"warning: {warning}")
    if problems:
        return EXIT_USAGE
    console.say(yaml.safe_dump(masked_config_dict(config), sort_keys=False).rstrip("\n"))
    return EXIT_OK


def _run_config_reference(args: argparse.Namespace, console: Console) -> int:
    from .config import render_config_reference

    console.stdout.write(render_config_reference())
    return EXIT_OK


# ---------------------------------------------------------------------------
# The parser and main

from .demo import add_subcommand as add_demo_subcommand  # noqa: E402 - light modules
from .storage_sim_cli import add_subcommand as add_storage_sim_subcommand  # noqa: E402

#: One function per top-level command, each ``add_subcommand(subparsers)``.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    add_node_subcommand,
    add_config_subcommand,
    add_storage_sim_subcommand,
    add_demo_subcommand,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="jsdistributor",
        description="Joystream distributor node tools. The node itself runs with "
        "`twistd jsdistributor --config PATH`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the exit code."""
    console = Console(stdout or sys.stdout, stderr or sys.stderr)
    parser = build_parser()
    with contextlib.redirect_stdout(console.stdout), contextlib.redirect_stderr(console.stderr):
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version, usage errors
            return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    handler: Handler = args.run
    try:
        return handler(args, console)
    except KeyboardInterrupt:
        console.complain("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
