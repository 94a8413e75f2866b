"""Training-step benchmarks: weight norm implementations as ratios against the plain model.

Every implementation is timed in the same process, interleaved round by round (the order shuffled
each round), and each round's time is divided by the plain model's time in that same round, so
slow drifts of the machine cancel. Reported: the median ratio over rounds with its min and max.

Run ``weightnorm bench`` (or ``python -m weightnorm bench``); ``--json FILE`` writes every number.

The allocator. A training step frees and re-allocates weight-sized buffers (gradients, Adam's
temporaries); glibc's malloc hands large freed blocks back to the kernel by heuristics that
depend on the history of the process, and each re-allocation then costs page faults, up to
doubling a step's time at random. Interleaving five models provokes this far more than one
training loop does, so by default the benchmark asks glibc to keep freed memory
(:func:`stabilize_allocator`, the effect of ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``;
jemalloc and tcmalloc behave this way already). Every implementation runs under the same
setting; ``--default-allocator`` measures without it.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import gc
import json
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import weightnorm as wn

from . import zoo
from ._env import environment
from .models import paper_cnn

__all__ = [
    "CPU_MODELS",
    "GPU_MODELS",
    "BenchResult",
    "IMPLEMENTATIONS",
    "MODELS",
    "ZOO_IMPLEMENTATIONS",
    "environment",
    "format_extras",
    "format_memory_table",
    "format_table",
    "run_benchmarks",
    "run_extras",
    "stabilize_allocator",
    "to_json",
]


# --- models ------------------------------------------------------------------------------------


def mlp() -> nn.Module:
    """The MLP 40-512-512-10 of the README's measurements (``mlp-b16``, ``mlp-b128``)."""
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
        return torch.tanh(self.out(h))


def cifar_cnn() -> nn.Module:
    """A Conv2d network for 32x32 images (a narrow version of the paper's CIFAR-10 model)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(32, 32, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.LeakyReLU(0.1), nn.Conv2d(64, 64, 1), nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def paper_1d() -> nn.Module:
    """The 1-D paper network of ``weightnorm reproduce`` (its MNIST-1D configuration)."""
    return paper_cnn(1, 10, dims=1, widths=(32, 64), dropout=0.3, noise=0.15)


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
    "paper1d-b100": ModelSpec("paper1d-b100", paper_1d, (100, 1, 40), 10),
    "cifar-cnn-b32": ModelSpec("cifar-cnn-b32", cifar_cnn, (32, 3, 32, 32), 10),
    # large batches, for a GPU
    "mlp-b4096": ModelSpec("mlp-b4096", mlp, (4096, 40), 10),
    "conv1d-dilated-b64": ModelSpec("conv1d-dilated-b64", DilatedStack, (64, 1, 8192), None),
}

#: What ``weightnorm bench`` times by default on the CPU, and on a CUDA device.
CPU_MODELS = ["mlp-b16", "mlp-b128", "conv1d-dilated-b8", "paper1d-b100", "cifar-cnn-b32"]
GPU_MODELS = [*CPU_MODELS, "mlp-b4096", "conv1d-dilated-b64"]


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


def _adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-4)


def _optimizer_level(model: nn.Module) -> tuple[nn.Module, Callable[[nn.Module], Any]]:
    return model, lambda m: wn.optim.WeightNormOptimizer(m, torch.optim.Adam, lr=1e-4)


Setup = Callable[[nn.Module], tuple[nn.Module, Callable[[nn.Module], torch.optim.Optimizer]]]

IMPLEMENTATIONS: dict[str, Setup] = {
    "plain": lambda m: (m, _adam),
    "weightnorm": lambda m: (wn.apply_weight_norm(m), _adam),
    "weightnorm-optim": _optimizer_level,
    "torch-legacy": lambda m: (_torch_legacy(m), _adam),
    "torch-parametrize": lambda m: (_torch_parametrize(m), _adam),
}


# --- measurement -------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def stabilize_allocator() -> bool:
    """Ask glibc's malloc to keep freed memory instead of returning it to the kernel.

    Sets ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 1 GiB for this process, so
    a buffer freed in one step is reused in the next without page faults. Returns whether it was
    applied (only on Linux with glibc). It changes the process for good: meant for benchmarks
    (and worth setting for CPU training: ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824``, or jemalloc/tcmalloc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024) == 1
    return bool(mmap_ok and trim_ok)


@dataclass
class BenchResult:
    """One model x implementation on one device: step-time ratios to plain over rounds, absolute
    times, and the step's peak memory (persistent tensors plus the peak of the temporaries)."""

    model: str
    implementation: str
    median_ratio: float
    min_ratio: float
    max_ratio: float
    median_step_ms: float
    ratios: list[float] = field(repr=False)
    peak_memory_mb: float = 0.0
    memory_ratio: float = 1.0
    device: str = "cpu"
    autocast: str | None = None


def _inputs(spec: ModelSpec, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen)
    if spec.classes is None:
        target = torch.randn(spec.input_shape, generator=gen)
    else:
        target = torch.randint(0, spec.classes, (spec.input_shape[0],), generator=gen)
    return x.to(device), target.to(device)


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class _Step:
    """A ready training step of one implementation, and what it holds between steps."""

    run: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer


def _make_step(
    impl: str,
    base: nn.Module,
    spec: ModelSpec,
    seed: int,
    compiled: bool,
    device: str = "cpu",
    autocast: str | None = None,
) -> _Step:
    model, make_opt = IMPLEMENTATIONS[impl](copy.deepcopy(base).to(device))
    x, target = _inputs(spec, seed, device)

    def loss(forward: nn.Module) -> torch.Tensor:
        out = forward(x).float()
        if spec.classes is None:
            return nn.functional.mse_loss(out, target)
        return nn.functional.cross_entropy(out, target)

    return _training_step(model, make_opt, loss, compiled, device, autocast)


def _training_step(
    model: nn.Module,
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    loss: Callable[[nn.Module], torch.Tensor],
    compiled: bool,
    device: str,
    autocast: str | None,
) -> _Step:
    """One training step: zero_grad, ``loss(model)`` under autocast, backward, optimizer step."""
    opt = make_opt(model)
    forward = cast(nn.Module, torch.compile(model)) if compiled else model
    cast_to = _AUTOCAST[autocast] if autocast else None
    device_type = torch.device(device).type  # autocast takes 'cuda', not 'cuda:1'

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=cast_to, enabled=cast_to is not None):
            value = loss(forward)
        value.backward()  # type: ignore[no-untyped-call]
        opt.step()

    return _Step(step, model, opt)


# --- the zoo: real models, each with the weight norm its package applies -----------------------

#: Implementations timed on a zoo model: folded (plain), torch's weight norm as the package
#: applies it, ours (``replace_torch_weight_norm``), ours at the optimizer (``from_model``).
ZOO_IMPLEMENTATIONS = ("plain", "torch", "weightnorm", "weightnorm-optim")


def _zoo_step(
    impl: str, spec: zoo.ZooModel, seed: int, compiled: bool, device: str, autocast: str | None
) -> _Step:
    model = spec.build(seed).to(device)  # (torch's legacy hook cannot be deep-copied: build)
    make_opt: Callable[[nn.Module], torch.optim.Optimizer] = _adam
    if impl == "plain":
        wn.fold(model)
    elif impl == "weightnorm":
        wn.replace_torch_weight_norm(model)
    elif impl == "weightnorm-optim":

        def make_opt(m: nn.Module) -> torch.optim.Optimizer:
            return wn.optim.WeightNormOptimizer.from_model(m, torch.optim.Adam, lr=1e-4)

    args, kwargs = spec.inputs(seed)
    inputs = (
        tuple(a.to(device) for a in args),
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()},
    )
    return _training_step(
        model, make_opt, lambda m: spec.loss(m, inputs), compiled, device, autocast
    )


class _LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage created inside the mode and still alive, and their peak.

    Storages that exist before (``known``: parameters, optimizer state) are not counted; a
    storage counts from the operation that returns it until it is freed (seen at the next
    operation)."""

    def __init__(self, known: set[int]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.known = known
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for ptr, (ref, nbytes) in list(self.live.items()):
            if ref.expired():  # type: ignore[no-untyped-call]
                del self.live[ptr]
                self.current -= nbytes
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self.known and ptr not in self.live:
                    ref = StorageWeakRef(storage)  # type: ignore[no-untyped-call]
                    nbytes = storage.nbytes()
                    self.live[ptr] = (ref, nbytes)
                    self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def _persistent(model: nn.Module, opt: torch.optim.Optimizer) -> dict[int, int]:
    """data_ptr -> bytes of every storage a step keeps: parameters, buffers, optimizer state."""
    tensors: list[torch.Tensor] = [*model.parameters(), *model.buffers()]
    for group in opt.param_groups:
        tensors.extend(group["params"])
    for state in opt.state.values():
        tensors.extend(t for t in tree_leaves(state) if isinstance(t, torch.Tensor))
    out = {}
    for t in tensors:
        storage = t.untyped_storage()
        out[storage.data_ptr()] = storage.nbytes()
    return out


def _peak_memory_mb(step: _Step, device: str) -> float:
    """Peak bytes of one (steady-state) training step, in MiB: on CUDA from the allocator's
    statistics, on the CPU by following every tensor's storage (eager only)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step.run()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device)) / 2**20
    step.optimizer.zero_grad(set_to_none=True)
    persistent = _persistent(step.model, step.optimizer)
    live = _LiveBytes(set(persistent))
    with live:
        step.run()
    return (sum(persistent.values()) + live.peak) / 2**20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def run_benchmarks(
    models: list[str] | None = None,
    implementations: list[str] | None = None,
    rounds: int = 15,
    steps_per_round: int = 10,
    warmup: int = 3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    compiled: bool = False,
    stable_allocator: bool = True,
    device: str = "cpu",
    autocast: str | None = None,
) -> list[BenchResult]:
    """Time a training step (forward, backward, Adam) of every model under every implementation.

    ``models`` are names of :data:`MODELS` (our own networks, normalized by each
    implementation) or of the zoo (:data:`weightnorm.experiments.zoo.ZOO`: real models, each
    timed plain (folded), with torch's weight norm as its package applies it (``"torch"``), with
    ours (``"weightnorm"``) and at the optimizer (``"weightnorm-optim"``)); ``implementations``
    filters each model's own set (default: all of it).

    Returns one :class:`BenchResult` per pair, ratios relative to ``"plain"`` in the same round,
    and each step's peak memory relative to plain's. ``warmup`` rounds, interleaved like the
    timed ones, are run first and discarded. With ``compiled``, every model (plain included)
    runs under ``torch.compile`` (memory is then measured on the eager step). ``device``:
    ``"cpu"`` or ``"cuda"``; ``autocast``: ``None``, ``"bf16"`` or ``"fp16"`` (mixed precision
    for every implementation). With ``stable_allocator`` (default),
    :func:`stabilize_allocator` is applied first.

    Example::

        >>> res = run_benchmarks(["mlp-b16"], ["weightnorm"], rounds=2, steps_per_round=1)
        >>> [r.implementation for r in res]
        ['plain', 'weightnorm']
    """
    names = models or (GPU_MODELS if device.startswith("cuda") else CPU_MODELS)
    known = [*IMPLEMENTATIONS, *(i for i in ZOO_IMPLEMENTATIONS if i not in IMPLEMENTATIONS)]
    for n in names:
        if n not in MODELS and n not in zoo.ZOO:
            raise ValueError(
                f"unknown model {n!r}; expected one of {', '.join(MODELS)} or a zoo model: "
                f"{', '.join(zoo.ZOO)}"
            )
    for i in implementations or []:
        if i not in known:
            raise ValueError(f"unknown implementation {i!r}; expected one of {', '.join(known)}")
    zoo_names = [n for n in names if n in zoo.ZOO]
    missing = zoo.missing_packages(zoo_names)
    if missing:
        raise ValueError(f"the zoo models need {', '.join(missing)}: {zoo.install_hint(zoo_names)}")
    if autocast is not None and autocast not in _AUTOCAST:
        raise ValueError(
            f"autocast must be one of {', '.join(_AUTOCAST)} or None, got {autocast!r}"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if stable_allocator:
        stabilize_allocator()
    if compiled:  # one compiled copy per implementation and model: no fallback to eager
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 2048
        )
    rng = random.Random(seed)
    results: list[BenchResult] = []
    for name in names:
        own = name in MODELS
        available = IMPLEMENTATIONS if own else ZOO_IMPLEMENTATIONS
        impls = [i for i in (implementations or available) if i in available and i != "plain"]
        impls = ["plain", *impls]
        if own:
            spec = MODELS[name]
            torch.manual_seed(seed)
            base = spec.build()
            make = functools.partial(_make_step, base=base, spec=spec, seed=seed)
        else:
            make = functools.partial(_zoo_step, spec=zoo.ZOO[name], seed=seed)
        steps = {i: make(i, compiled=compiled, device=device, autocast=autocast) for i in impls}
        times: dict[str, list[float]] = {i: [] for i in impls}
        for r in range(-warmup, rounds):
            order = list(impls)
            rng.shuffle(order)
            for i in order:
                run = steps[i].run
                gc.collect()
                run()  # the first step after another model's: caches refilled, not timed
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps_per_round):
                    run()
                _sync(device)
                if r >= 0:
                    times[i].append((time.perf_counter() - start) / steps_per_round)
            if progress is not None and r >= 0:
                progress(f"{name}: round {r + 1}/{rounds}")
        memory = {}
        for i in impls:
            step = steps[i]
            if compiled and device == "cpu":  # follow storages in an eager copy
                step = make(i, compiled=False, device=device, autocast=autocast)
                step.run()
            memory[i] = _peak_memory_mb(step, device)
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
                    peak_memory_mb=memory[i],
                    memory_ratio=memory[i] / memory["plain"],
                    device=device,
                    autocast=autocast,
                )
            )
    return results


def _median_time(fn: Callable[[], object], repeats: int, number: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def run_extras(
    models: list[str] | None = None, repeats: int = 15, seed: int = 0
) -> list[dict[str, Any]]:
    """Inference of the folded model vs the plain one, and data-dependent init vs one forward.

    The folded model must compute what the normalized one does; that is checked here too.
    """
    rows = []
    for name in models or CPU_MODELS:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
        spec = MODELS[name]
        torch.manual_seed(seed)
        plain = spec.build().eval()
        normed = wn.apply_weight_norm(copy.deepcopy(plain))
        x, _ = _inputs(spec, seed)
        with torch.no_grad():
            expected = normed(x)
            folded = wn.fold(copy.deepcopy(normed))
            if not torch.allclose(folded(x), expected, atol=1e-5, rtol=1e-4):
                raise RuntimeError(f"{name}: the folded model disagrees with the normalized one")
            t_plain = _median_time(functools.partial(plain, x), repeats, 5)
            t_folded = _median_time(functools.partial(folded, x), repeats, 5)
            t_normed = _median_time(functools.partial(normed, x), repeats, 5)
        init = functools.partial(wn.data_dependent_init, normed, x)
        t_init = _median_time(init, max(3, repeats // 3), 1)
        rows.append(
            {
                "model": name,
                "folded_inference_ratio": t_folded / t_plain,
                "normalized_inference_ratio": t_normed / t_plain,
                "data_init_vs_forward": t_init / t_normed,
                "plain_forward_ms": t_plain * 1e3,
            }
        )
    return rows


def format_extras(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run_extras`."""
    lines = [
        "| model | plain forward (ms) | folded / plain (inference) | normalized / plain "
        "(inference) | data init / one forward |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['plain_forward_ms']:.2f} | {r['folded_inference_ratio']:.2f} | "
            f"{r['normalized_inference_ratio']:.2f} | {r['data_init_vs_forward']:.2f} |"
        )
    return "\n".join(lines)


def _row_label(r: BenchResult) -> str:
    if r.device == "cpu" and r.autocast is None:
        return r.model
    return f"{r.model} ({r.device}{', ' + r.autocast if r.autocast else ''})"


def _pivot(
    results: list[BenchResult],
    first: tuple[str, Callable[[BenchResult], str]],
    cell: Callable[[BenchResult], str],
) -> str:
    """Rows: model (and device); columns: the plain model's ``first`` value, then ``cell`` of
    every implementation."""
    impls = list(dict.fromkeys(r.implementation for r in results))
    rows = list(dict.fromkeys(_row_label(r) for r in results))
    by = {(_row_label(r), r.implementation): r for r in results}
    title, plain_value = first
    lines = [
        f"| model | {title} | " + " | ".join(impls) + " |",
        "|---|---|" + "---|" * len(impls),
    ]
    for m in rows:
        cells = [cell(by[(m, i)]) if (m, i) in by else "" for i in impls]
        lines.append(f"| {m} | {plain_value(by[(m, 'plain')])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(results: list[BenchResult]) -> str:
    """A Markdown table: one row per model (and device), one column per implementation, the
    step time as a ratio to plain, median [min-max]."""
    return _pivot(
        results,
        ("plain step (ms)", lambda r: f"{r.median_step_ms:.2f}"),
        lambda r: f"{r.median_ratio:.2f} [{r.min_ratio:.2f}-{r.max_ratio:.2f}]",
    )


def format_memory_table(results: list[BenchResult]) -> str:
    """A Markdown table of each step's peak memory as a ratio to plain's."""
    return _pivot(
        results,
        ("plain peak (MiB)", lambda r: f"{r.peak_memory_mb:.1f}"),
        lambda r: f"{r.memory_ratio:.2f}",
    )


def to_json(
    results: list[BenchResult],
    extras: list[dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    """Every number, with the environment and the settings of the run."""
    return json.dumps(
        {
            "environment": environment(),
            "settings": settings or {},
            "results": [asdict(r) for r in results],
            "extras": extras or [],
        },
        indent=2,
    )
