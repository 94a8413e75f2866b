"""A lower bound on weight norm's training-step overhead: the cost of the math alone.

    python benchmarks/floor.py --threads 1 --models mlp-b16 mlp-b128

For every weight that ``wn.apply_weight_norm`` would normalize, times in isolation (data in
cache, no Python around it) what any implementation of ``w = g v/||v||`` must run per training
step on the CPU, using PyTorch's fastest kernels for it:

- forward: the norms and the scaled copy (``torch._weight_norm_interface``, one fused kernel);
- backward: ``grad_g`` and ``grad_v`` from ``grad_w`` (its fused backward kernel);
- the optimizer: Adam's step over the plain model's parameters plus every ``g``, minus its step
  over the plain model's parameters alone (the cost of the extra tensors; the two timed in
  alternation, the median of the differences).

Their sum, divided by the plain model's step time measured here, is the overhead no eager
implementation built on these kernels goes below (in a real step the data is colder, so the
real cost is higher). The optimizer-level mode runs the same two passes per weight (the
conversion of eq. 3 is the backward kernel; the write is a norm and a scaled copy), so it is
bounded the same way. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from collections.abc import Callable

import torch
from torch import nn

import weightnorm as wn
from weightnorm.experiments import bench


def _median_us(fn: Callable[[], object], number: int = 200, repeats: int = 9) -> float:
    for _ in range(number // 4):  # warm up
        fn()
    return bench._median_time(fn, repeats, number) * 1e6


def _adam_extra_us(
    params: list[torch.Tensor], extra: list[torch.Tensor], rounds: int = 41, number: int = 20
) -> float:
    """What Adam's step costs more with ``extra`` tensors than without: the two steps timed in
    alternation, the median of the per-round differences (one difference of two medians taken
    apart drifted below zero on this noisy machine)."""

    def adam(tensors: list[torch.Tensor]) -> Callable[[], object]:
        copies = [nn.Parameter(t.detach().clone()) for t in tensors]
        for p in copies:
            p.grad = torch.randn_like(p) * 1e-3
        return torch.optim.Adam(copies, lr=1e-4).step

    without, with_extra = adam(params), adam([*params, *extra])
    for _ in range(number):  # warm up
        without(), with_extra()
    diffs = []
    for r in range(rounds):
        order = (without, with_extra) if r % 2 == 0 else (with_extra, without)
        times = {f: bench._median_time(f, 1, number) for f in order}
        diffs.append(times[with_extra] - times[without])
    return statistics.median(diffs) * 1e6


def _weights(model: nn.Module) -> list[tuple[torch.Tensor, int]]:
    normed = wn.apply_weight_norm(copy.deepcopy(model))
    out = []
    for module in normed.modules():
        for name, spec in wn.weight_norm_specs(module).items():
            v = module._parameters[name + "_v"]
            if v is not None and spec.dim is not None and spec.groups == 1:
                out.append((v.detach().clone(), spec.dim))
    return out


def floor(spec: bench.ModelSpec) -> dict[str, float]:
    torch.manual_seed(0)
    model = spec.build()
    step = bench._make_step("plain", model, spec, 0, compiled=False).run
    plain_us = _median_us(step, number=20)
    fwd = bwd = 0.0
    gs = []
    for v, dim in _weights(model):
        g = torch.linalg.vector_norm(v, dim=[d for d in range(v.ndim) if d != dim], keepdim=True)
        with torch.no_grad():
            fwd += _median_us(lambda v=v, g=g, dim=dim: torch._weight_norm_interface(v, g, dim))
            _, norms = torch._weight_norm_interface(v, g, dim)
            grad_w = torch.randn_like(v)
            bwd += _median_us(
                lambda v=v, g=g, n=norms, gw=grad_w, dim=dim: (
                    torch.ops.aten._weight_norm_interface_backward(gw, v, g, n, dim)
                )
            )
        gs.append(g.clone())
    opt = _adam_extra_us(list(model.parameters()), gs)
    total = fwd + bwd + opt
    return {
        "plain_step_us": plain_us,
        "forward_us": fwd,
        "backward_us": bwd,
        "adam_on_g_us": opt,
        "floor_ratio": 1 + total / plain_us,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=bench.CPU_MODELS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.stabilize_allocator()
    print("| model | plain step (us) | norm+scale fwd (us) | fused bwd (us) | Adam on g (us) "
          "| lower bound on the ratio |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in args.models:
        r = floor(bench.MODELS[name])
        print(
            f"| {name} | {r['plain_step_us']:.0f} | {r['forward_us']:.0f} | "
            f"{r['backward_us']:.0f} | {r['adam_on_g_us']:.0f} | {r['floor_ratio']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
