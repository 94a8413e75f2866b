"""What glibc's malloc heuristics cost a CPU training step, and what keeping freed memory saves.

    python benchmarks/allocator.py --threads 1

On Linux, glibc returns large freed blocks to the kernel by heuristics (``M_MMAP_THRESHOLD``
adapts, ``M_TRIM_THRESHOLD`` trims the heap), and every re-allocation of a weight-sized buffer
then costs page faults. Each configuration (plain model or weight norm, default allocator or
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``, the setting
``weightnorm bench`` applies to itself) runs in a fresh process: the MLP 40-512-512-10 of
``weightnorm bench`` (``mlp-b16``), Adam, a training step timed over rounds of steps, with the
minor page faults per step from ``getrusage``. The processes alternate, ``--repeats`` each;
reported: the median over every round of every process. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

TUNED = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}


def child(impl: str, threads: int, rounds: int, steps: int) -> dict[str, list[float]]:
    """Time ``impl``'s step in this process: per round, ms per step and page faults per step."""
    import torch

    from weightnorm.experiments import bench

    torch.set_num_threads(threads)
    spec = bench.MODELS["mlp-b16"]
    torch.manual_seed(0)
    step = bench._make_step(impl, spec.build(), spec, seed=0, compiled=False).run
    for _ in range(steps):  # warm up
        step()
    ms, faults = [], []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(steps):
            step()
        ms.append((time.perf_counter() - start) / steps * 1e3)
        faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps)
    return {"ms": ms, "faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per configuration")
    parser.add_argument("--rounds", type=int, default=11, help="timed rounds per process")
    parser.add_argument("--steps", type=int, default=50, help="training steps per round")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.rounds, args.steps)))
        return
    configs = [(impl, tuned) for impl in ("plain", "weightnorm") for tuned in (False, True)]
    results: dict[tuple[str, bool], dict[str, list[float]]] = {
        c: {"ms": [], "faults": []} for c in configs
    }
    base_env = {k: v for k, v in os.environ.items() if k not in TUNED}
    for _ in range(args.repeats):
        for impl, tuned in configs:
            env = {**base_env, **(TUNED if tuned else {})}
            out = subprocess.run(
                [sys.executable, __file__, "--child", impl, "--threads", str(args.threads),
                 "--rounds", str(args.rounds), "--steps", str(args.steps)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            measured = json.loads(out.stdout.splitlines()[-1])
            for key in ("ms", "faults"):
                results[(impl, tuned)][key] += measured[key]
    print(f"mlp-b16, Adam, {args.threads} torch thread(s); median over {args.repeats} processes "
          f"x {args.rounds} rounds of {args.steps} steps")  # fmt: skip
    print("| model | allocator | ms per step | page faults per step |")
    print("|---|---|---|---|")
    for impl, tuned in configs:
        r = results[(impl, tuned)]
        label = "freed memory kept (MALLOC_*_THRESHOLD_)" if tuned else "glibc default"
        print(f"| {impl} | {label} | {statistics.median(r['ms']):.2f} | "
              f"{statistics.median(r['faults']):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
