"""``tnderiv explore``: serve the explorer page on the loopback interface, or write it as one static file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """examples:
  tnderiv explore conv2d vjp_weight                              (serves on 127.0.0.1, a free port)
  tnderiv explore "conv2d:stride=2,groups=2" per_sample_grad --shapes x=8x4x16x16
  tnderiv explore conv1d vjp_x --shapes x=4x2x32 --port 8765 --open
  tnderiv explore linear:shared=1 forward --static explorer.html  (self-contained, no server)

SPEC is the `tnderiv render` layer syntax: KIND[:key=value,...]. See docs/explorer.md."""


def add_explore_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``explore`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "explore",
        help="explore a quantity's contraction orders in the browser (local page or a static file)",
        description="Serve an interactive page: the diagram, candidate contraction orders, their steps and costs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", help="the layer, e.g. conv2d or 'conv2d:stride=2,groups=2'")
    parser.add_argument("quantity", help="e.g. forward, vjp_x, vjp_weight, per_sample_grad (see `tnderiv quantities`)")
    parser.add_argument("--shapes", nargs="+", metavar="NAME=AxB", default=[],
                        help="operand shapes, e.g. x=4x2x8x8 (comma- or space-separated); default: small sizes")  # fmt: skip
    parser.add_argument("--static", metavar="FILE.html", help="write a self-contained page instead of serving")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1; nothing else)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--no-simplify", action="store_true", help="start with simplify off")
    parser.add_argument("--open", action="store_true", help="also open the page in the default web browser")
    parser.set_defaults(run=run_explore)
    return parser


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``["x=4x2x8x8", "grad_out=4x2x6x6"]`` (or one comma-separated item) → ``{"x": (4, 2, 8, 8), ...}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        name, eq, dims = item.partition("=")
        parts = dims.strip().lower().split("x")
        if not eq or not name.strip() or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"--shapes item {item!r}: expected NAME=AxBxC, e.g. x=4x2x8x8")
        shapes[name.strip()] = tuple(int(p) for p in parts)
    return shapes


def run_explore(args: argparse.Namespace) -> int:
    """Carry out ``tnderiv explore``; returns the exit status."""
    from tnderiv.explore import Explorer, ExplorerServer, Session, check_host, initial_settings
    from tnderiv.explore.settings import Settings, make_target

    try:
        if not args.static:
            check_host(args.host)  # a non-loopback address is refused before any work
        target = make_target(args.spec)
        settings = initial_settings(target, args.quantity, parse_shapes(args.shapes))
        if args.no_simplify:
            settings = Settings(settings.spec, settings.quantity, settings.sizes, False, settings.term)
        session = Session(target, settings)
        session.report(settings)
        if args.static:
            path = Explorer(session).save(args.static)
            print(f"wrote {path}")
            return 0
        server = ExplorerServer(session, args.host, args.port)
    except (ValueError, TypeError, KeyError, OSError) as error:
        print(f"tnderiv explore: error: {error}", file=sys.stderr)
        return 2
    print(f"tnderiv explore: serving {target.label} {args.quantity} at {server.url}  (Ctrl-C stops)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\ntnderiv explore: stopped")
    finally:
        server.httpd.server_close()
    return 0
