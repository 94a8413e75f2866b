"""The ``weightnorm`` command line: ``weightnorm bench`` (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for bad values (its default too)."""


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    def progress(msg: str) -> None:
        if args.progress:
            print(msg, file=sys.stderr, flush=True)

    try:
        results = bench.run_benchmarks(
            models=args.models,
            implementations=args.implementations,
            rounds=args.rounds,
            steps_per_round=args.steps,
            progress=progress,
        )
    except ValueError as err:
        print(f"weightnorm bench: error: {err}", file=sys.stderr)
        return 2
    print(bench.format_table(results))
    env = bench.environment()
    print(
        f"\nratios to the plain model, median [min-max] over {args.rounds} interleaved rounds; "
        f"torch {env['torch']}, {env['threads']} threads, {env['machine']}"
    )
    if args.json:
        from ._io import atomic_write_text

        atomic_write_text(args.json, bench.to_json(results))
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="weightnorm",
        description="Weight normalization (Salimans & Kingma, 2016) for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "bench",
        help="time a training step against the plain model",
        description="Time forward+backward+Adam of each model under each weight norm "
        "implementation, as ratios to the plain model measured in the same rounds.",
    )
    b.add_argument("--models", nargs="+", help="models to time (default: all)")
    b.add_argument("--implementations", nargs="+", help="implementations (default: all)")
    b.add_argument("--rounds", type=_positive, default=15, help="interleaved rounds (default 15)")
    b.add_argument("--steps", type=_positive, default=10, help="steps per round (default 10)")
    b.add_argument("--json", help="also write every number to this JSON file")
    b.add_argument("--no-progress", dest="progress", action="store_false")
    b.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``weightnorm`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
