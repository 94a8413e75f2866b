"""Training-step cost of weight norm, ours against PyTorch's, as ratios to the plain model.

    python benchmarks/step_time.py                 # the CPU models (bench.CPU_MODELS), eager
    python benchmarks/step_time.py --compile       # the same under torch.compile
    python benchmarks/step_time.py --json out.json
    python benchmarks/step_time.py --threads 1 --rounds 30 --steps 20 --models mlp-b16 mlp-b128

The same measurement as ``weightnorm bench`` (interleaved rounds, medians of per-round ratios);
this script only adds a summary of the two targets: our overhead at most 5% at batch 128 and
above, and at most half of torch parametrize's overhead everywhere. Timings are never pass/fail
in the test suite; this script reports, it does not assert.
"""

from __future__ import annotations

import argparse
import sys

import torch

from weightnorm.experiments import bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--models", nargs="+", help=f"default: {', '.join(bench.CPU_MODELS)}")
    parser.add_argument("--implementations", nargs="+", help="default: all")
    parser.add_argument("--default-allocator", dest="stable_allocator", action="store_false")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = bench.run_benchmarks(
        models=args.models,
        implementations=args.implementations,
        rounds=args.rounds,
        steps_per_round=args.steps,
        compiled=args.compile,
        stable_allocator=args.stable_allocator,
    )
    print(bench.format_table(results))
    by = {(r.model, r.implementation): r.median_ratio for r in results}
    print("\ntargets (overhead = ratio - 1):")
    for model in dict.fromkeys(r.model for r in results):
        if (model, "torch-parametrize") not in by:
            continue
        theirs = by[(model, "torch-parametrize")] - 1
        for impl in ("weightnorm", "weightnorm-optim"):
            if (model, impl) not in by:
                continue
            ours = by[(model, impl)] - 1
            half = "yes" if ours <= max(theirs, 0) / 2 else "no"
            large = bench.MODELS[model].input_shape[0] >= 128
            five = f"; <= 5%: {ours <= 0.05}" if large else ""
            print(
                f"  {model:20s} {impl:17s} overhead {ours:+.1%}  <= half of parametrize's "
                f"({theirs:+.1%}): {half}{five}"
            )
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(bench.to_json(results, settings=vars(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
