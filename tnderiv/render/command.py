"""``tnderiv render``: draw one quantity of a layer to a file, or regenerate the gallery."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """examples:
  tnderiv render conv2d vjp_weight -o vjp_weight.pdf
  tnderiv render "conv2d:stride=2,groups=2" per_sample_grad -o psg.svg
  tnderiv render linear:shared=1 forward -o -            (TikZ snippet on stdout)
  tnderiv render conv1d vjp_weight --trace -o strip.png  (the derivation, rule by rule)
  tnderiv render --gallery diagrams/

SPEC is KIND[:key=value,...]; KIND is one of {kinds}.
Tuples per spatial dimension are written 2x1. See docs/rendering.md."""


def add_render_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``render`` subcommand to an ``argparse`` subparsers object."""
    from tnderiv.render.spec import LAYER_KINDS

    parser = subparsers.add_parser(
        "render",
        help="draw a layer's quantity as TikZ/SVG/PDF/PNG, or regenerate the diagram gallery",
        description="Draw the (simplified) diagram of a layer's quantity.",
        epilog=EPILOG.format(kinds=", ".join(sorted(LAYER_KINDS))),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", nargs="?", help="the layer, e.g. conv2d or 'conv2d:stride=2,groups=2'")
    parser.add_argument(
        "quantity", nargs="?", help="e.g. forward, vjp_x, vjp_weight, per_sample_grad (see `tnderiv quantities`)"
    )
    parser.add_argument("-o", "--output", help="file to write: .tex, .svg, .pdf or .png ('-': TikZ on stdout)")
    parser.add_argument("--gallery", metavar="DIR", help="regenerate the gallery in DIR (e.g. diagrams/)")
    parser.add_argument("--trace", action="store_true", help="draw the simplification rule by rule (a strip)")
    parser.add_argument("--raw", action="store_true", help="draw the diagram before simplification")
    parser.add_argument("--all-legs", action="store_true", help="also draw legs of size 1")
    parser.add_argument("--dpi", type=int, default=300, help="resolution of .png output (default 300)")
    parser.set_defaults(run=run_render)
    return parser


def run_render(args: argparse.Namespace) -> int:
    """Carry out ``tnderiv render``; returns the exit status."""
    from tnderiv.render import save, to_tikz

    if args.gallery:
        if args.spec or args.quantity or args.output:
            return _fail("--gallery takes no SPEC, QUANTITY or -o")
        from tnderiv.render.gallery import write_gallery

        written = write_gallery(args.gallery)
        print(f"wrote {len(written)} files under {args.gallery}")
        return 0
    if not (args.spec and args.quantity and args.output):
        return _fail("expected SPEC QUANTITY -o FILE (or --gallery DIR)")
    if args.trace and args.raw:
        return _fail("--trace and --raw exclude each other")
    try:
        drawable = _drawable(args.spec, args.quantity, trace=args.trace, raw=args.raw)
        options = {"hide_unit_legs": not args.all_legs}
        if args.output == "-":
            sys.stdout.write(to_tikz(drawable, **options))
        else:
            path = save(drawable, args.output, dpi=args.dpi, **options)
            print(f"wrote {path}")
    except (ValueError, TypeError, RuntimeError) as error:
        return _fail(str(error))
    return 0


def _drawable(spec_text: str, quantity: str, *, trace: bool, raw: bool) -> Any:
    from tnderiv.calculus import derive, parse_quantity
    from tnderiv.render.spec import parse_spec
    from tnderiv.simplify import simplify

    spec, shapes = parse_spec(spec_text)
    network = spec.network(shapes)
    if not (trace or raw):
        return derive(network, quantity)
    kind, wrt = parse_quantity(quantity, network)
    expr = kind.build(network, wrt)
    return simplify(expr, trace=True) if trace else expr


def _fail(message: str) -> int:
    print(f"tnderiv render: error: {message}", file=sys.stderr)
    return 2
