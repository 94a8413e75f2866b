"""The time of one call of a weight-normalized layer, to check that letting torch's removal
functions find our weight norms costs nothing per forward.

``torch.nn.utils.remove_weight_norm`` looks for its hook in the module's forward pre-hooks. A
real hook there would take every call of the module off ``nn.Module``'s fast path (a module
with no hooks calls ``forward`` directly). This times, interleaved, the call of a small
``wn.weight_norm(nn.Linear)`` as it is, the same layer with one no-op forward pre-hook (what a
hook would cost), and a plain ``nn.Linear``; each figure is the median over rounds of the mean
time of one call in a round.

    python benchmarks/forward_call.py [--rounds 301] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import weightnorm as wn


def _time(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=301)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--grad", action="store_true", help="forward with autograd recording")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, 8)
    normed = wn.weight_norm(nn.Linear(8, 8))
    hooked = wn.weight_norm(nn.Linear(8, 8))
    hooked.register_forward_pre_hook(lambda module, inputs: None)
    plain = nn.Linear(8, 8)
    variants = {
        "wn.weight_norm(Linear)": lambda: normed(x),
        "  + one no-op forward pre-hook": lambda: hooked(x),
        "plain Linear": lambda: plain(x),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.set_grad_enabled(args.grad):
        for fn in variants.values():  # warm-up
            _time(fn, args.calls)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(_time(fn, args.calls))
    mode = "with autograd" if args.grad else "under no_grad"
    print(
        f"torch {torch.__version__}, 1 thread, {mode}, median of {args.rounds} rounds of "
        f"{args.calls} calls:"
    )
    for name, ts in times.items():
        print(f"  {name:32s} {statistics.median(ts) * 1e6:7.2f} us per call")


if __name__ == "__main__":
    main()
