"""``jsdistributor storage-sim``: a storage node simulator as a program.

Serves the files of a directory, each named by its object id, as a storage
node does (``GET``/``HEAD /api/v1/files/{id}``, ``GET /api/v1/version``,
plus ``GET /api/v1/_stats``) until Ctrl-C or SIGTERM::

    jsdistributor storage-sim --dir ./objects --port 3333
    jsdistributor storage-sim --dir ./objects --port 3333 --catalog catalog.yml

With ``--catalog`` it first writes a catalog of those files (sizes and
hashes; ``-`` prints it) naming this simulator as storage bucket
``--bucket-id``, so a node configured with ``endpoints.catalog`` can be tried
against it. The demo and the benchmarks run their simulators this way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cli import Console

# The exit codes of ``jsdistributor.cli`` (not imported: cli imports us).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

#: The bag and distribution bucket of a ``--catalog``.
CATALOG_BAG = "dynamic:channel:1"
CATALOG_DISTRIBUTION_BUCKET = "0:0"


def add_subcommand(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "storage-sim",
        help="serve a directory of objects as a storage node (simulator)",
        description="Serve the files in DIR (each named by its object id) as a storage node "
        "does, until Ctrl-C or SIGTERM. Prints the URL to register.",
    )
    parser.add_argument("--dir", required=True, metavar="DIR", help="directory of objects, one file per object id")
    parser.add_argument("--port", type=int, default=3333, metavar="N", help="TCP port (0: any free one; default 3333)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--catalog",
        metavar="PATH",
        help="first write a catalog of DIR's objects with this simulator as their storage node "
        "(YAML, or JSON for *.json; `-` prints it)",
    )
    parser.add_argument(
        "--bucket-id", default="0", metavar="ID", help="the storage bucket id of this node in --catalog (default 0)"
    )
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="delay every file response")
    parser.add_argument("--rate", type=float, default=None, metavar="BYTES", help="throttle bodies to BYTES/s")
    parser.add_argument(
        "--send-marks",
        type=int,
        default=0,
        metavar="BYTES",
        help="record in /api/v1/_stats when every BYTES-th body byte was sent (benchmarks)",
    )
    parser.set_defaults(run=_run)


def catalog_for_directory(directory: Path, storage_url: str, bucket_id: str = "0") -> dict[str, Any]:
    """A catalog of every file in ``directory`` named by an object id: one
    bag in distribution bucket 0:0 (worker 0), stored by ``storage_url``."""
    import filetype

    from .metadata.catalog import CatalogBuilder, catalog_entry_for_file
    from .model import is_valid_object_id

    builder = CatalogBuilder()
    builder.add_storage_node(bucket_id, storage_url)
    builder.add_distribution_bucket(CATALOG_DISTRIBUTION_BUCKET, worker_id=0)
    builder.add_bag(CATALOG_BAG, [bucket_id], [CATALOG_DISTRIBUTION_BUCKET])
    names = sorted((p.name for p in directory.iterdir() if p.is_file() and is_valid_object_id(p.name)), key=int)
    for name in names:
        path = directory / name
        kind = filetype.guess(str(path)) if path.stat().st_size else None
        builder.add_object(
            CATALOG_BAG, catalog_entry_for_file(path, name, mime_type=kind.mime if kind is not None else None)
        )
    return builder.build()


def _host(interface: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(interface, interface)
    return f"[{host}]" if ":" in host else host


def _run(args: argparse.Namespace, console: Console) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        console.complain(f"error: --dir {directory} is not a directory")
        return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        console.complain(f"error: --port {args.port} is not a TCP port")
        return EXIT_USAGE
    port: int = args.port
    if args.catalog is not None:
        if port == 0:
            from .testing.network import free_port

            port = free_port()  # the catalog must name the port before we listen
        url = f"http://{_host(args.interface)}:{port}/"
        if not _write_catalog(args, directory, url, console):
            return EXIT_FAILED

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from .testing.storage_sim import RunningSim, start_storage_sim

    started: list[RunningSim] = []
    try:
        start_storage_sim(reactor, directory=directory, port=port, interface=args.interface).addCallback(
            started.append
        )
    except CannotListenError as e:
        console.complain(f"error: cannot listen on {args.interface}:{port}: {e.socketError}")
        return EXIT_FAILED
    (running,) = started  # start_storage_sim answers at once
    if args.latency or args.rate:
        running.sim.configure(latency=args.latency, rate=args.rate)
    running.sim.send_mark_every = max(0, args.send_marks)
    url = f"http://{_host(args.interface)}:{running.port}/"
    reactor.addSystemEventTrigger("before", "shutdown", running.stop)
    if args.catalog != "-":
        console.say(f"storage node simulator serving {os.path.abspath(directory)} at {url} (API root {url}api/v1)")
    console.complain("Ctrl-C or SIGTERM stops it")
    _flush(console)
    reactor.run()
    return EXIT_OK


def _write_catalog(args: argparse.Namespace, directory: Path, url: str, console: Console) -> bool:
    from .config import ConfigError
    from .metadata.catalog import write_catalog

    try:
        document = catalog_for_directory(directory, url, args.bucket_id)
        if args.catalog == "-":
            import yaml

            console.say(yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=120).rstrip())
        else:
            write_catalog(args.catalog, document)
            count = len(document["bags"][CATALOG_BAG]["objects"])
            console.complain(f"wrote a catalog of {count} objects to {args.catalog}")
    except ConfigError as e:
        for problem in e.problems:
            console.complain(f"error: {problem}")
        return False
    except OSError as e:
        console.complain(f"error: cannot write the catalog {args.catalog}: {e.strerror or e}")
        return False
    return True


def _flush(console: Console) -> None:
    for stream in (console.stdout, console.stderr, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
