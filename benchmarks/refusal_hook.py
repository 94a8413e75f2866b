"""What the reparameterized modules pay on the CPU beyond torch's fused weight norm.

Both run the same fused kernels (forward and backward). Ours adds, per weight and step, an eps
check of the norms the kernel returns (``norms.min().item()``) and a gradient hook on ``w`` that
refuses ``create_graph=True`` through torch's fused double backward (which is wrong: it treats the
norms as constants). This times a forward and backward of one weight-normalized Conv1d, the
four variants interleaved, and prints the median cost of each piece per weight and step.

    python benchmarks/refusal_hook.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import weightnorm.functional as F


def _variants(v: nn.Parameter, g: nn.Parameter) -> dict[str, Callable[[], torch.Tensor]]:
    def fused() -> torch.Tensor:
        return torch._weight_norm_interface(v, g, 0)[0]

    def checked() -> torch.Tensor:
        w, norms = torch._weight_norm_interface(v, g, 0)
        norms.min().item()
        return w

    def hooked() -> torch.Tensor:
        w = checked()
        w.register_hook(F._refuse_higher_order)  # type: ignore[no-untyped-call]
        return w

    def ours() -> torch.Tensor:  # what a module's forward calls
        return F._weight_norm_core(v, g, 0, F.DEFAULT_EPS, 1, (1, 2), True)

    return {"torch's fused": fused, "+ eps check": checked, "+ refusal hook": hooked, "ours": ours}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    c = args.channels
    v = nn.Parameter(torch.randn(c, c, 7))
    g = nn.Parameter(torch.ones(c, 1, 1))
    x = torch.randn(2, c, 64)
    variants = _variants(v, g)
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(0)
    for r in range(-10, args.rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(20):
                nn.functional.conv1d(x, variants[name](), padding=3).sum().backward()
            if r >= 0:
                times[name].append((time.perf_counter() - start) / 20)
    base = times["torch's fused"]
    print(f"Conv1d({c}, {c}, 7), forward + backward, {args.rounds} interleaved rounds, 1 thread")
    print("| variant | median us per step | median extra over torch's fused (us) |")
    print("|---|---|---|")
    for name, ts in times.items():
        extra = statistics.median(t - b for t, b in zip(ts, base, strict=True)) * 1e6
        print(f"| {name} | {statistics.median(ts) * 1e6:.1f} | {extra:+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
