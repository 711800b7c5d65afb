"""``jsdistributor demo``: a whole network on 127.0.0.1, the node's embedded
default (``./dev.sh run``).

It generates a sample set (images, audio, a video, large random objects)
into ``--dir`` (default ``./demo-data``), starts two storage-node
simulators serving it (``jsdistributor storage-sim`` child processes),
writes a catalog describing them, starts the node (``twistd -n
jsdistributor --config etc/demo.yml --insecure-dev``) and prints the URLs to
open, including the demo page ``/demo`` (``index.html`` beside this module,
served by the public API). Ctrl-C or SIGTERM stops every process; the exit
status is 0.

``samples`` makes the media, ``runner`` runs the processes; this module
only declares the command (kept import-light for ``jsdistributor --help``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cli import Console


def add_subcommand(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a demo network on 127.0.0.1 (two storage simulators, a catalog, the node)",
        description="Generate sample media, start two storage-node simulators and the node "
        "(twistd) on 127.0.0.1, print the URLs to open; Ctrl-C stops everything.",
    )
    parser.add_argument("--dir", default="demo-data", help="where the samples, catalog, cache and logs go (default demo-data)")
    parser.add_argument("--public-port", type=int, default=3334, metavar="N", help="the node's public API port (default 3334)")
    parser.add_argument(
        "--operator-port", type=int, default=3335, metavar="N", help="the node's operator API port (default 3335)"
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the node's config (default etc/demo.yml of the checkout; its catalog, directories and "
        "ports are overridden to match the other options)",
    )
    parser.add_argument(
        "--large-objects",
        default="50M,200M",
        metavar="SIZES",
        help="sizes of the pseudo-random large objects, comma-separated (default 50M,200M; none: no large objects)",
    )
    parser.add_argument("--no-ffmpeg", action="store_true", help="use the shipped video even if ffmpeg is installed")
    parser.add_argument("--keep-cache", action="store_true", help="keep the node's cache of an earlier run")
    parser.add_argument("--show-logs", action="store_true", help="let the processes log to this terminal, not to DIR/logs")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, console: Console) -> int:
    from .runner import options_from_args, run_demo

    try:
        options = options_from_args(args)
    except ValueError as e:
        console.complain(f"error: {e}")
        return 2
    return run_demo(options, console)
