"""What the reparameterized modules pay on the CPU beyond torch's fused weight norm, piece by piece.

Both run the same fused kernels (forward and backward). Ours adds, per weight and step: the eps
check of the norms the kernel returns (``norms.min().item()``: what makes a zero row finite); a
post hook on the kernel's autograd node that makes second derivatives exact (a Python call in
every backward, which returns at once unless a graph of the backward is being built); and the
module's property and dispatch. A read outside the module's call hands out a ``ComputedWeight``
(one ``__torch_function__`` call per operation on it, so that an in-place change such as
``nn.init.*_`` is written into g and v when it is made): timed too, as is the plain
differentiable form (norm, clamp, divide, multiply: exact to every order with no hook, what the
fused kernel and its hook replace). This times a forward and backward of one
weight-normalized Conv1d, the variants interleaved, and prints the median cost of each per
weight and step.

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


def _variants(
    v: nn.Parameter, g: nn.Parameter, layer: nn.Module, theirs: nn.Module, x: torch.Tensor
) -> dict[str, Callable[[], torch.Tensor]]:
    """Each variant's forward output for one step (the weight computed, then the convolution)."""
    spec = F.WeightNormSpec(tuple(v.shape), 0)

    def conv(w: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv1d(x, w, layer.bias, padding=3)

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

    def typed() -> torch.Tensor:  # (the type a read outside the module's call hands out)
        w = hooked()
        w.__class__ = wn.ComputedWeight
        w.__dict__["_wn_link"] = None
        return w

    return {
        "torch's fused": lambda: conv(fused()),
        "+ eps check": lambda: conv(checked()),
        "+ exact second-order hook": lambda: conv(hooked()),
        "ours: the module's call": lambda: layer(x),
        "torch's parametrize weight norm: the module's call": lambda: theirs(x),
        "a read outside the call (a ComputedWeight)": lambda: conv(layer.weight),
        "the fused kernel, hooked, as a ComputedWeight": lambda: conv(typed()),
        "the plain form (no fused kernel, no hook)": lambda: conv(F.PLAIN.forward(v, g, spec)[0]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    c = args.channels
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Conv1d(c, c, 7, padding=3))
    v, g = layer.weight_v, layer.weight_g
    x = torch.randn(2, c, 64)
    theirs = torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(c, c, 7, padding=3))
    theirs.load_state_dict(wn.convert_state_dict(layer.state_dict(), to="parametrize"))
    variants = _variants(v, g, layer, theirs, x)
    times: dict[str, list[float]] = {k: [] for k in variants}
    rng = random.Random(0)
    for r in range(-10, args.rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(20):
                variants[name]().sum().backward()
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
