"""Training-step benchmarks: weight norm implementations as ratios against the plain model.

Every implementation is timed in the same process, interleaved round by round (the order shuffled
each round), and each round's time is divided by the plain model's time in that same round, so
slow drifts of the machine cancel. Reported: the median ratio over rounds with its min and max.

Run ``weightnorm bench`` (or ``python -m weightnorm bench``); ``--json FILE`` writes every number.
"""

from __future__ import annotations

import copy
import gc
import json
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ._model import apply_weight_norm

__all__ = ["BenchResult", "IMPLEMENTATIONS", "MODELS", "run_benchmarks", "format_table"]


# --- models ------------------------------------------------------------------------------------


def mlp() -> nn.Module:
    """The MLP 40-512-512-10 of DESIGN.md's measurements."""
    return nn.Sequential(
        nn.Linear(40, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


class DilatedStack(nn.Module):
    """An audio-like stack: dilated residual Conv1d blocks, 64 channels (a vocoder's inner loop)."""

    def __init__(self, channels: int = 64, layers: int = 6) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, channels, 7, padding=3)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, 3, dilation=2**i, padding=2**i) for i in range(layers)
        )
        self.out = nn.Conv1d(channels, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (batch, channels, length)
        for conv in self.convs:
            h = h + conv(nn.functional.leaky_relu(h, 0.1))
        return torch.tanh(self.out(h))  # type: ignore[no-any-return]


def cifar_cnn() -> nn.Module:
    """A Conv2d network for 32x32 images (a narrow version of the paper's CIFAR-10 model)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(32, 32, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.LeakyReLU(0.1), nn.Conv2d(64, 64, 1), nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """A model to time: its factory, the input shape and the loss target."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    classes: int | None  # cross-entropy over this many classes, or None for an MSE target


MODELS: dict[str, ModelSpec] = {
    "mlp-b16": ModelSpec("mlp-b16", mlp, (16, 40), 10),
    "mlp-b128": ModelSpec("mlp-b128", mlp, (128, 40), 10),
    "conv1d-dilated-b8": ModelSpec("conv1d-dilated-b8", DilatedStack, (8, 1, 256), None),
    "cifar-cnn-b32": ModelSpec("cifar-cnn-b32", cifar_cnn, (32, 3, 32, 32), 10),
}


# --- implementations ---------------------------------------------------------------------------


def _torch_legacy(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still what vocoders use
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.utils.weight_norm(m)
    return model


def _torch_parametrize(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.utils.parametrizations.weight_norm(m)
    return model


IMPLEMENTATIONS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "plain": lambda m: m,
    "weightnorm": apply_weight_norm,
    "torch-legacy": _torch_legacy,
    "torch-parametrize": _torch_parametrize,
}


# --- measurement -------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """One model x implementation: step-time ratios to plain over rounds, and absolute times."""

    model: str
    implementation: str
    median_ratio: float
    min_ratio: float
    max_ratio: float
    median_step_ms: float
    ratios: list[float] = field(repr=False)


def _make_step(model: nn.Module, spec: ModelSpec, seed: int) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen)
    if spec.classes is None:
        target = torch.randn(spec.input_shape, generator=gen)
    else:
        target = torch.randint(0, spec.classes, (spec.input_shape[0],), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        if spec.classes is None:
            loss = nn.functional.mse_loss(out, target)
        else:
            loss = nn.functional.cross_entropy(out, target)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return step


def run_benchmarks(
    models: list[str] | None = None,
    implementations: list[str] | None = None,
    rounds: int = 15,
    steps_per_round: int = 10,
    warmup: int = 5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time a training step (forward, backward, Adam) of every model under every implementation.

    Returns one :class:`BenchResult` per pair, ratios relative to ``"plain"`` in the same round.

    Example::

        >>> res = run_benchmarks(["mlp-b16"], ["weightnorm"], rounds=2, steps_per_round=1)
        >>> [r.implementation for r in res]
        ['plain', 'weightnorm']
    """
    names = models or list(MODELS)
    impls = implementations or list(IMPLEMENTATIONS)
    for n in names:
        if n not in MODELS:
            raise ValueError(f"unknown model {n!r}; expected one of {', '.join(MODELS)}")
    for i in impls:
        if i not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {i!r}; expected one of {', '.join(IMPLEMENTATIONS)}"
            )
    if "plain" not in impls:
        impls = ["plain", *impls]
    rng = random.Random(seed)
    results: list[BenchResult] = []
    for name in names:
        spec = MODELS[name]
        torch.manual_seed(seed)
        base = spec.build()
        steps = {i: _make_step(IMPLEMENTATIONS[i](copy.deepcopy(base)), spec, seed) for i in impls}
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[str, list[float]] = {i: [] for i in impls}
        for r in range(rounds):
            order = list(impls)
            rng.shuffle(order)
            for i in order:
                gc.collect()
                start = time.perf_counter()
                for _ in range(steps_per_round):
                    steps[i]()
                times[i].append((time.perf_counter() - start) / steps_per_round)
            if progress is not None:
                progress(f"{name}: round {r + 1}/{rounds}")
        for i in impls:
            ratios = [t / p for t, p in zip(times[i], times["plain"], strict=True)]
            results.append(
                BenchResult(
                    model=name,
                    implementation=i,
                    median_ratio=statistics.median(ratios),
                    min_ratio=min(ratios),
                    max_ratio=max(ratios),
                    median_step_ms=statistics.median(times[i]) * 1e3,
                    ratios=ratios,
                )
            )
    return results


def format_table(results: list[BenchResult]) -> str:
    """A Markdown table: one row per model, one column per implementation (median [min-max])."""
    impls = list(dict.fromkeys(r.implementation for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    by = {(r.model, r.implementation): r for r in results}
    lines = [
        "| model | plain step (ms) | " + " | ".join(impls) + " |",
        "|---|---|" + "---|" * len(impls),
    ]
    for m in models:
        cells = []
        for i in impls:
            r = by.get((m, i))
            cells.append(
                "" if r is None else f"{r.median_ratio:.2f} [{r.min_ratio:.2f}-{r.max_ratio:.2f}]"
            )
        lines.append(f"| {m} | {by[(m, 'plain')].median_step_ms:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
    }


def to_json(results: list[BenchResult]) -> str:
    """Every number, with the environment."""
    return json.dumps(
        {"environment": environment(), "results": [asdict(r) for r in results]}, indent=2
    )
