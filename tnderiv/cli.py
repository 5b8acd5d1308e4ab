"""The ``tnderiv`` command line: ``demo``, ``quantities``, ``render``, ``explore`` (subcommands in a registry)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from tnderiv.demo import run_demo

    errors = run_demo(batch=args.batch)
    return 0 if max(errors.values()) < 1e-8 else 1


def _quantities(args: argparse.Namespace) -> int:
    from tnderiv.calculus import QUANTITIES

    for name, kind in sorted(QUANTITIES.items()):
        suffix = {"none": "", "operand": "_<operand>", "param": "_<param>"}[kind.wrt]
        print(f"{name}{suffix:12s}  {kind.doc.splitlines()[0] if kind.doc else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tnderiv", description="Neural-network layers as tensor-network diagrams.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the demo CNN: every quantity checked against torch.autograd")
    demo.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    demo.set_defaults(run=_demo)
    quantities = commands.add_parser("quantities", help="list the quantities tnderiv derives")
    quantities.set_defaults(run=_quantities)
    try:
        from tnderiv.render.command import add_render_parser
    except ImportError:
        pass
    else:
        add_render_parser(commands)
    from tnderiv.explore.command import add_explore_parser

    add_explore_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
