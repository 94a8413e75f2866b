"""``weightnorm bench``: a training step's time and memory under each weight-norm implementation."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import UsageError, check_device, check_writable_file, positive

__all__ = ["add_parser", "run"]

_SETTINGS = (
    "models",
    "zoo",
    "implementations",
    "rounds",
    "steps",
    "compile",
    "threads",
    "stable_allocator",
    "device",
    "autocast",
)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed ``args`` describe; print its tables."""
    import torch

    from ..experiments import bench, zoo

    if args.json:  # checked before the benchmark, not after it
        check_writable_file(args.json, "--json")
    if args.device == "cuda":
        check_device(args.device)

    def progress(msg: str) -> None:
        if args.progress:
            print(msg, file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    runs: list[tuple[str, str | None]] = [(args.device, args.autocast)]
    if args.device == "auto":
        runs = [("cpu", args.autocast)]
        if torch.cuda.is_available():  # the fused CUDA path; fp32 and bf16 autocast by default
            runs += [("cuda", a) for a in ([args.autocast] if args.autocast else [None, "bf16"])]
    # --zoo: the zoo models whose packages are installed here (all of them if none is, for the
    # error that says what to install)
    models = args.models or ((zoo.installed() or list(zoo.ZOO)) if args.zoo else None)
    results = []
    try:
        for device, autocast in runs:
            results += bench.run_benchmarks(
                models=models,
                implementations=args.implementations,
                rounds=args.rounds,
                steps_per_round=args.steps,
                progress=progress,
                compiled=args.compile,
                stable_allocator=args.stable_allocator,
                device=device,
                autocast=autocast,
            )
        own = [m for m in models or bench.CPU_MODELS if m in bench.MODELS]
        extras = bench.run_extras(own) if args.extras and own else []
    except ValueError as err:
        raise UsageError(str(err)) from None
    mode = "torch.compile" if args.compile else "eager"
    print(f"Training step (forward, backward, Adam), {mode}: time / plain model's time\n")
    print(bench.format_table(results))
    env = bench.environment()
    print(
        f"\nratios to the plain model, median [min-max] over {args.rounds} interleaved rounds; "
        f"torch {env['torch']}, {env['threads']} threads, {env['machine']}"
        + ("" if args.stable_allocator else ", default allocator")
    )
    print("\nPeak memory of a training step / plain model's\n")
    print(bench.format_memory_table(results))
    if extras:
        print("\nInference (eval, no_grad) and data-dependent init\n")
        print(bench.format_extras(extras))
    if args.json:
        from ..experiments._io import atomic_write_text

        settings = {k: vars(args)[k] for k in _SETTINGS}
        atomic_write_text(args.json, bench.to_json(results, extras, settings))
    return 0


def add_parser(sub: Any) -> None:
    """Add the ``bench`` subcommand to ``sub`` (argparse subparsers)."""
    from ..experiments import bench, zoo

    b = sub.add_parser(
        "bench",
        help="time a training step against the plain model",
        description="Time forward+backward+Adam of each model under each weight norm "
        "implementation, as ratios to the plain model measured in the same rounds.",
    )
    b.add_argument(
        "--models",
        nargs="+",
        metavar="MODEL",
        help=f"models to time; ours: {', '.join(bench.MODELS)}; the zoo's (extra 'zoo', and "
        f"benchmarks/zoo-torch29 for the torchaudio ones): {', '.join(zoo.ZOO)} (default: "
        f"{', '.join(bench.CPU_MODELS)} on the CPU, and the large-batch ones on a GPU)",
    )
    b.add_argument(
        "--zoo",
        action="store_true",
        help="time every zoo model whose packages are installed (unless --models names some)",
    )
    b.add_argument(
        "--implementations",
        nargs="+",
        metavar="IMPL",
        help=f"implementations; for our models: {', '.join(bench.IMPLEMENTATIONS)}; for the "
        f"zoo's: {', '.join(bench.ZOO_IMPLEMENTATIONS)} (default: all; plain is always timed)",
    )
    b.add_argument("--rounds", type=positive, default=15, help="interleaved rounds (default: 15)")
    b.add_argument("--steps", type=positive, default=10, help="steps per round (default: 10)")
    b.add_argument("--json", metavar="FILE", help="also write every number to this JSON file")
    b.add_argument("--compile", action="store_true", help="run every model under torch.compile")
    b.add_argument("--threads", type=positive, help="torch intra-op threads (default: torch's)")
    b.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): the CPU, and a CUDA GPU if there is one (fp32 and bf16 "
        "autocast, large batches too)",
    )
    b.add_argument(
        "--autocast",
        choices=("bf16", "fp16"),
        help="mixed precision for every implementation (default: none)",
    )
    b.add_argument(
        "--default-allocator",
        dest="stable_allocator",
        action="store_false",
        help="leave glibc malloc's heuristics as they are (default: keep freed "
        "memory, see weightnorm.experiments.bench.stabilize_allocator)",
    )
    b.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="skip the inference and data-init timings",
    )
    b.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress lines on stderr"
    )
    b.set_defaults(func=run)
