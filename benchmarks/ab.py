"""Same-process A/B of the library against an earlier version of itself, on the zoo's models.

The earlier version is taken from git (``--ref``, default the 0.2.0 release commit) into a
temporary folder as the package ``weightnorm_before`` (its custom-op names and absolute imports
renamed, so both versions live in one process). Per zoo model, four training steps are timed
(Adam, forward + backward + step), interleaved in a shuffled order every round: the folded model
(plain), torch's own weight norm as the package applies it, the earlier version and this one
(both through ``replace_torch_weight_norm``). It prints, per model, the median over rounds of
each step's ratio to the plain step of the same round, with the interquartile range, and the
difference now - before.

    python benchmarks/ab.py                      # every installed zoo model, 31 rounds
    python benchmarks/ab.py --models snac --rounds 61 --ref 5be3767

Run it on a quiet machine (nothing else computing): figures are medians of per-round ratios,
and the spread says how much the machine moved while it ran.
"""

from __future__ import annotations

import argparse
import importlib
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

import weightnorm as wn
from weightnorm.experiments import zoo

#: The commit of the 0.2.0 release (the last one with the deferred write-back of 0.2.0).
RELEASE_0_2_0 = "25900c1"


def load_before(ref: str, into: Path) -> ModuleType:
    """The package at git ``ref`` as ``weightnorm_before``, importable beside this one."""
    root = Path(__file__).resolve().parents[1]
    tar = subprocess.run(
        ["git", "-C", str(root), "archive", ref, "src/weightnorm"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    package = into / "weightnorm_before"
    (into / "src" / "weightnorm").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = text.replace('"weightnorm::', '"weightnorm_before::')
        text = re.sub(r"\b(from|import) weightnorm\b", r"\1 weightnorm_before", text)
        path.write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("weightnorm_before")


def make_step(model: nn.Module, spec: zoo.ZooModel) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    inputs = spec.inputs(0)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        spec.loss(model, inputs).backward()
        opt.step()

    return step


def variants(spec: zoo.ZooModel, before: ModuleType) -> dict[str, Callable[[], None]]:
    made = {
        "plain": wn.fold(spec.build()),
        "torch": spec.build(),
        "before": before.replace_torch_weight_norm(spec.build()),
        "now": wn.replace_torch_weight_norm(spec.build()),
    }
    return {name: make_step(model, spec) for name, model in made.items()}


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default=RELEASE_0_2_0, help="the earlier version (a git ref)")
    parser.add_argument("--models", nargs="*", help="zoo models (default: every installed one)")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--steps", type=int, default=2, help="steps per variant and round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.models or zoo.installed()
    with tempfile.TemporaryDirectory() as folder:
        before = load_before(args.ref, Path(folder))
        print(f"A/B: {args.rounds} interleaved rounds of {args.steps} Adam steps per variant, "
              f"1 thread, torch {torch.__version__}; before = {args.ref}")  # fmt: skip
        print("| model | plain step (ms) | torch | before | now | now - before |")
        print("|---|---|---|---|---|---|")
        for name in names:
            steps = variants(zoo.ZOO[name], before)
            times: dict[str, list[float]] = {k: [] for k in steps}
            rng = random.Random(0)
            for r in range(-2, args.rounds):  # (two rounds of warm-up)
                order = list(steps)
                rng.shuffle(order)
                for key in order:
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        steps[key]()
                    if r >= 0:
                        times[key].append((time.perf_counter() - start) / args.steps)
            ratio = {
                k: [t / p for t, p in zip(ts, times["plain"], strict=True)]
                for k, ts in times.items()
            }
            diff = [n - b for n, b in zip(ratio["now"], ratio["before"], strict=True)]
            cells = []
            for key in ("torch", "before", "now"):
                lo, mid, hi = quartiles(ratio[key])
                cells.append(f"{mid:.3f} [{lo:.3f}-{hi:.3f}]")
            lo, mid, hi = quartiles(diff)
            plain_ms = statistics.median(times["plain"]) * 1e3
            print(f"| {name} | {plain_ms:.1f} | {' | '.join(cells)} | "
                  f"{mid:+.3f} [{lo:+.3f} to {hi:+.3f}] |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
