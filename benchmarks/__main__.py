"""``python -m benchmarks run [...]`` times and checks; ``python -m benchmarks report`` rebuilds the page."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks"
PAGE = ROOT / "docs" / "benchmarks.md"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check and time every implementation; write JSON, then the page")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--quantities", nargs="+", metavar="Q", help="subset of quantities (default: all)")
    run.add_argument("--layers", nargs="+", metavar="PATTERN", help="layers whose id contains PATTERN or whose category is PATTERN")
    run.add_argument("--impls", nargs="+", metavar="NAME", help="only these implementations (plus each reference)")
    run.add_argument("--repeat", type=int, default=5, help="timed samples per implementation (median taken; default 5)")
    run.add_argument("--warmup", type=int, default=1,
                     help="untimed warm-up calls after the first (cold) call; the memory-profiled call counts as one (default 1)")
    run.add_argument("--budget", type=float, default=1.0,
                     help="seconds of samples per implementation beyond which fewer (≥ 3) samples are taken (default 1)")
    run.add_argument("--call-limit", type=float, default=30.0,
                     help="seconds after which one call is abandoned and reported as a timeout (default 30)")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, torch's default on GPU)")
    run.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions on GPU (default off)")
    run.add_argument("--check-batch", type=int, default=2, help="batch size of the float64 correctness check (0: the benchmark's)")
    run.add_argument("--no-check", action="store_true", help="skip the float64 correctness check (not for published numbers)")
    run.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    run.add_argument("--no-overhead", action="store_true", help="skip tnderiv's call-overhead and cold-plan measurement")
    run.add_argument("--no-probes", action="store_true", help="skip the correctness probes (reflect/circular/'same'/groups ...)")
    run.add_argument("--no-dense", action="store_true", help="skip the transformer dense layers")
    run.add_argument("--out", type=Path, default=None, help="JSON path (default docs/benchmarks/<device>.json)")
    run.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md afterwards")
    run.add_argument("--debug", action="store_true", help="print tracebacks of implementations that raise")
    report = sub.add_parser("report", help="regenerate docs/benchmarks.md and the plots from the JSON results")
    report.add_argument("--results", type=Path, nargs="+", default=None, help="JSON files (default docs/benchmarks/*.json)")
    report.add_argument("--page", type=Path, default=PAGE)
    return parser


def _results() -> list[Path]:
    """The finished result files (an interrupted run leaves ``*.partial.json``)."""
    return sorted(p for p in RESULTS.glob("*.json") if not p.name.endswith(".partial.json"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        from benchmarks.quantities import parse_quantities
        from benchmarks.runner import Settings, run

        device = args.device
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise SystemExit(f"--device {device!r}: expected cpu or cuda")
        settings = Settings(
            device=device, repeat=args.repeat, warmup=args.warmup,
            threads=args.threads if args.threads is not None else (1 if device == "cpu" else None),
            tf32=args.tf32, check=not args.no_check, check_batch=args.check_batch or None,
            memory=not args.no_memory, overhead=not args.no_overhead, impls=tuple(args.impls or ()),
            budget_s=args.budget, call_limit_s=args.call_limit,
        )
        out = args.out or RESULTS / f"{'cuda' if device.startswith('cuda') else 'cpu'}.json"
        command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        run(settings, parse_quantities(args.quantities), args.layers, not args.no_probes, not args.no_dense, out, command)
        if not args.no_report:
            from benchmarks.report import write_report

            write_report(_results() if out.parent == RESULTS else [out], PAGE if out.parent == RESULTS else out.with_suffix(".md"))
        return 0
    from benchmarks.report import write_report

    write_report(args.results or _results(), args.page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
