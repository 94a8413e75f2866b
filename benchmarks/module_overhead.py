"""What the reparameterized modules pay on the CPU beyond torch's fused weight norm, piece by piece.

Both run the same fused kernels (forward and backward). Ours adds, per weight and step: the eps
check of the norms the kernel returns (``norms.min().item()``: what makes a zero row finite); a
post hook on the kernel's autograd node that makes second derivatives exact (a Python call in
every backward, which returns at once unless a graph of the backward is being built); and the
computed weight's type (``ComputedWeight``: one ``__torch_function__`` call per operation on the
weight, so that an in-place change such as ``nn.init.*_`` is written into g and v when it is
made). The plain differentiable form (norm, clamp, divide, multiply: exact to every order with
no hook, what the fused kernel and its hook replace) is timed beside them. This times a forward
and backward of one weight-normalized Conv1d, the variants interleaved, and prints the median
cost of each per weight and step.

    python benchmarks/module_overhead.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

import weightnorm as wn
import weightnorm.functional as F
from weightnorm._reparam import ComputedWeight, _Link


def _variants(
    v: nn.Parameter, g: nn.Parameter, layer: nn.Module
) -> dict[str, Callable[[], torch.Tensor]]:
    spec = F.WeightNormSpec(tuple(v.shape), 0)

    def fused() -> torch.Tensor:
        return torch._weight_norm_interface(v, g, 0)[0]

    def checked() -> torch.Tensor:
        w, norms = torch._weight_norm_interface(v, g, 0)
        norms.min().item()
        return w

    def hooked() -> torch.Tensor:
        w, norms = torch._weight_norm_interface(v, g, 0)
        norms.min().item()
        w.grad_fn.register_hook(partial(F._exact_double_backward, v, g, spec))
        return w

    def linked() -> torch.Tensor:  # (the type a module's read hands out)
        w = hooked()
        w.__class__ = ComputedWeight
        w.__dict__["_wn_link"] = _Link(layer, "weight", g, v)
        return w

    def plain() -> torch.Tensor:
        return F.PLAIN.forward(v, g, spec)[0]

    def ours() -> torch.Tensor:  # what a module's forward reads
        return layer.weight  # type: ignore[no-any-return]

    return {
        "torch's fused": fused,
        "+ eps check": checked,
        "+ exact second-order hook": hooked,
        "+ the computed weight's type": linked,
        "ours (the module's read)": ours,
        "the plain form (no fused kernel, no hook)": plain,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    c = args.channels
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Conv1d(c, c, 7))
    v, g = layer.weight_v, layer.weight_g
    x = torch.randn(2, c, 64)
    variants = _variants(v, g, layer)
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
