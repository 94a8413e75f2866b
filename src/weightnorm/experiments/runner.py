"""Run the comparison: learning-rate sweep on a validation split, then seeds, resumably.

Each run (method, optimizer, learning rate, seed) is written atomically to
``<out>/runs/<name>.json`` as soon as it finishes, under a key that hashes everything that
determines its result (data, model architecture, training settings, the run itself). A rerun
skips runs whose file holds the same key, so an interrupted comparison loses nothing finished and
a changed configuration never reuses stale results.

Protocol: for each optimizer and method, every learning rate of the grid is trained with seed 0
and scored by its final validation error (a diverged run scores 100%); the ``candidates`` best
rates are trained again with seeds 1..K-1 (K: ``search_seeds``), and the largest rate whose
validation error averaged over those K seeds is within ``lr_tolerance`` of the lowest is chosen
(:func:`choose_rate`: a difference the validation split cannot resolve does not decide, so
rounding cannot flip the choice). Seeds K..S-1 then run at the chosen rate only; its S runs are
the method's result; test errors are only reported. One seed at the edge of stability cannot
decide the choice: a rate that is good for seed 0 only loses to a neighbour that
is good for every seed. Every run uses the same number of torch threads
(``threads``, part of each run's key), so a run's numbers are the same in every execution path.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

import weightnorm as wn

from ._stats import nanmedian
from .data import Dataset, Split
from .jobs import Jobs, Progress, distributed, torch_threads
from .methods import METHODS, build_method
from .records import RecordError

__all__ = [
    "ComparisonConfig",
    "ComparisonResult",
    "RunRecord",
    "RunSpec",
    "run_comparison",
    "choose_rate",
    "set_paper_schedule",
    "time_steps",
    "train_run",
]

#: Learning rates tried per optimizer unless a configuration says otherwise.
DEFAULT_LR_GRID: dict[str, tuple[float, ...]] = {
    "adam": (3e-4, 1e-3, 3e-3, 1e-2),  # the paper's grid
    "sgd": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
}


@dataclass(frozen=True)
class ComparisonConfig:
    """Everything that defines a comparison except the model factory and the data.

    Attributes:
        name: label of the comparison (report titles, folder names).
        epochs: training epochs of every run; the second half uses the paper's decay phase.
        batch_size: minibatch size (paper: 100).
        optimizers: ``"adam"`` (the paper's) and/or ``"sgd"`` (momentum, same schedule shape).
        lr_grid: learning rates tried per optimizer.
        seeds: runs per method and optimizer at its chosen rate (the sweep's seed 0 is the
            first): enough for the report's intervals to decide its claims (the main job's
            page has the power analysis).
        search_seeds: seeds of each candidate rate before choosing (at most ``seeds``); the
            remaining seeds run at the chosen rate only.
        candidates: rates per method and optimizer trained with ``search_seeds`` seeds before
            choosing.
        lr_tolerance: mean validation errors within this of the lowest count as equal; the
            largest such rate is chosen (:func:`choose_rate`).
        methods: names from :data:`weightnorm.experiments.METHODS`.
        init_batch_size: samples of the data-dependent initialization batch (paper: 500).
        delta_epochs: the convergence claims' margin, as a fraction of ``epochs``: a difference
            in epochs to target smaller than this is no difference that matters.
        delta_test_error: the test-error claims' margin (absolute; 0.005 = 0.5 percentage
            points).
        delta_train_error: the early-training-error claims' margin (absolute).
        delta_step_time: "not noticeably slower": a training step at most this fraction slower
            than the normal parameterization's.
    """

    name: str = "custom"
    epochs: int = 20
    batch_size: int = 100
    optimizers: tuple[str, ...] = ("adam", "sgd")
    lr_grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_LR_GRID))
    seeds: int = 3
    search_seeds: int = 3
    candidates: int = 2
    lr_tolerance: float = 0.005
    methods: tuple[str, ...] = tuple(METHODS)
    init_batch_size: int = 500
    delta_epochs: float = 0.05
    delta_test_error: float = 0.005
    delta_train_error: float = 0.01
    delta_step_time: float = 0.10

    def validate(self) -> None:
        """Raise ``ValueError`` saying what was expected and what was got."""
        if self.epochs < 2:
            raise ValueError(f"epochs must be >= 2 (two schedule phases), got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not (0 <= self.lr_tolerance < 1):
            raise ValueError(f"lr_tolerance must be in [0, 1), got {self.lr_tolerance}")
        if self.search_seeds < 1:
            raise ValueError(f"search_seeds must be >= 1, got {self.search_seeds}")
        for name in ("delta_epochs", "delta_test_error", "delta_train_error", "delta_step_time"):
            value = getattr(self, name)
            if not (0 < value < 1):
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")
        if self.init_batch_size < 2:
            raise ValueError(f"init_batch_size must be >= 2, got {self.init_batch_size}")
        for opt in self.optimizers:
            if opt not in ("adam", "sgd"):
                raise ValueError(f"optimizer must be 'adam' or 'sgd', got {opt!r}")
            grid = self.lr_grid.get(opt)
            if not grid or any(not (lr > 0 and math.isfinite(lr)) for lr in grid):
                raise ValueError(f"lr_grid[{opt!r}] must be positive numbers, got {grid!r}")
        if not self.optimizers:
            raise ValueError("optimizers must name at least one of 'adam', 'sgd'")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; expected some of "
                f"{', '.join(METHODS)}"
            )


@dataclass(frozen=True)
class RunSpec:
    """One training run."""

    method: str
    optimizer: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.optimizer}-lr{self.lr:g}-s{self.seed}"


#: The per-epoch curves of every run, and the errors kept as its final ones.
CURVES = ("train_loss", "train_error", "val_error", "test_error", "epoch_time_s")
#: The curves kept at ``fine_per_epoch`` points per epoch: each the mean over that part of the
#: epoch's minibatches (dropout and input noise on, as trained).
FINE_CURVES = ("train_loss", "train_error")
_FINAL = ("train_error", "val_error", "test_error", "top_class_share")
#: Points per epoch of the fine curves (fewer when an epoch has fewer minibatches).
FINE_PER_EPOCH = 10


@dataclass(frozen=True)
class RunRecord:
    """One finished run: per-epoch curves (NaN after a divergence), the training curves at
    ``fine_per_epoch`` points per epoch, final errors, timing.

    ``final["top_class_share"]`` is the share of the test inputs given the most predicted class
    at the end: about 1/classes for a model that learned, 1 for a constant prediction.
    """

    spec: RunSpec
    diverged: bool
    curves: dict[str, list[float]]
    fine: dict[str, list[float]]
    fine_per_epoch: int
    final: dict[str, float]  # train_error, val_error, test_error, top_class_share at the end
    median_epoch_time_s: float
    world_size: int

    def check(self) -> None:
        """:class:`~weightnorm.experiments.records.RecordError` unless every curve is there,
        with one value per epoch (``fine_per_epoch`` for the fine ones)."""
        missing = [k for k in CURVES if k not in self.curves] + [
            k for k in FINE_CURVES if k not in self.fine
        ]
        lengths = {len(v) for v in self.curves.values()}
        epochs = next(iter(lengths), 0)
        fine = {len(v) for v in self.fine.values()}
        if (
            missing
            or len(lengths) != 1
            or fine != {epochs * self.fine_per_epoch}
            or not set(_FINAL) <= set(self.final)
        ):
            raise RecordError(f"record {self.spec.name}: incomplete curves or final errors")

    @property
    def score(self) -> float:
        """The final validation error; 1.0 for a diverged run."""
        val = self.final["val_error"]
        return 1.0 if self.diverged or not math.isfinite(val) else float(val)


@dataclass
class ComparisonResult:
    """What a comparison produced: every run's record, the chosen learning rates, the config."""

    config: ComparisonConfig
    runs: list[RunRecord]
    chosen_lr: dict[str, dict[str, float]]  # optimizer -> method -> lr
    data: dict[str, Any]
    wall_time_s: float
    # optimizer -> method -> per-round training-step time / the normal parameterization's,
    # from one interleaved timing pass (parallel runs share the machine: their clocks do not)
    step_time_ratios: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # runs read back from the records of an earlier execution instead of trained (a resumed
    # or repeated command: its wall time is not the experiment's)
    loaded_runs: int = 0

    def runs_of(self, optimizer: str, method: str, lr: float | None = None) -> list[RunRecord]:
        """The runs of ``method`` under ``optimizer`` at ``lr`` (default: its chosen rate), in
        seed order."""
        lr = self.chosen_lr[optimizer][method] if lr is None else lr
        found = [
            r
            for r in self.runs
            if r.spec.optimizer == optimizer and r.spec.method == method and r.spec.lr == lr
        ]
        return sorted(found, key=lambda r: r.spec.seed)


# --- one run -----------------------------------------------------------------------------------


def set_paper_schedule(
    opt: torch.optim.Optimizer, kind: str, lr0: float, step: int, total: int
) -> None:
    """The paper's schedule: lr0 and momentum 0.9 for the first half, then momentum 0.5 and a
    linear decay of the learning rate to 0 over the second half."""
    half = total // 2
    if step < half:
        lr, momentum = lr0, 0.9
    else:
        lr, momentum = lr0 * (total - step) / (total - half), 0.5
    for group in opt.param_groups:
        group["lr"] = lr
        if kind == "adam":
            group["betas"] = (momentum, group["betas"][1])
        else:
            group["momentum"] = momentum


def _make_optimizer(kind: str, params: Any, lr: float) -> torch.optim.Optimizer:
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


@torch.no_grad()
def _predict(
    model: nn.Module, split: Split, device: torch.device, batch_size: int = 1000
) -> torch.Tensor:
    """The predicted class of every input of ``split`` (eval mode), on the CPU."""
    model.eval()
    predicted = [
        model(split.x[start : start + batch_size].to(device)).argmax(1).cpu()  # (batch,)
        for start in range(0, len(split), batch_size)
    ]
    model.train()
    return torch.cat(predicted)


def _error(model: nn.Module, split: Split, device: torch.device) -> float:
    return float((_predict(model, split, device) != split.y).double().mean())


def _top_class_share(predicted: torch.Tensor) -> float:
    """The share of the predictions given to the most predicted class."""
    return float(torch.bincount(predicted).max()) / len(predicted)


def train_run(
    spec: RunSpec,
    config: ComparisonConfig,
    factory: Callable[..., nn.Module],
    data: Dataset,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    device: str | torch.device = "cpu",
) -> RunRecord:
    """Train one run and return its record (curves per epoch, final errors, timings).

    Under ``torch.distributed`` (``torchrun``) every rank takes its slice of each minibatch, the
    model is wrapped in DDP with synchronized (mean-only) batch norm, and data-dependent init
    all-reduces its statistics; every rank returns the same record.
    """
    rank, world = distributed()
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    n = len(data.train)
    init_idx = torch.randperm(n, generator=gen)[: config.init_batch_size]
    init_idx = init_idx[rank::world]  # each rank initializes on its part of the init batch
    device = torch.device(device)
    model = build_method(METHODS[spec.method], factory, data.train.x[init_idx])
    model = model.to(device)
    if world > 1:
        if device.type == "cuda":  # torch's SyncBatchNorm runs on GPUs only; on CPU each rank
            # normalizes its own slice of the batch (plain DDP behaviour)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
        model = wn.SyncMeanOnlyBatchNorm.convert_sync_mean_only_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model)
    opt = _make_optimizer(spec.optimizer, model.parameters(), spec.lr)
    steps = math.ceil(n / config.batch_size)
    total = config.epochs * steps
    per_epoch = min(FINE_PER_EPOCH, steps)
    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    fine: dict[str, list[float]] = {k: [] for k in FINE_CURVES}
    top_share = math.nan
    diverged = False
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=gen)
        # per part of the epoch: loss, errors, samples
        sums = torch.zeros(per_epoch, 3, dtype=torch.float64)
        start = time.perf_counter()
        for i in range(steps):
            set_paper_schedule(opt, spec.optimizer, spec.lr, epoch * steps + i, total)
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size][rank::world]
            x = data.train.x[idx].to(device)  # (batch, channels, *positions)
            y = data.train.y[idx].to(device)  # (batch,)
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            opt.step()
            part = i * per_epoch // steps
            sums[part] += torch.tensor(
                [loss.item(), float((out.argmax(1) != y).sum()), len(idx)], dtype=torch.float64
            )
        elapsed = time.perf_counter() - start
        if world > 1:
            torch.distributed.all_reduce(sums)
        epoch_sums = sums.sum(0)
        train_loss = float(epoch_sums[0] / epoch_sums[2])
        if not math.isfinite(train_loss):
            diverged = True
            break
        fine["train_loss"] += (sums[:, 0] / sums[:, 2]).tolist()
        fine["train_error"] += (sums[:, 1] / sums[:, 2]).tolist()
        eval_model = cast(nn.Module, model.module) if world > 1 else model
        test_predicted = _predict(eval_model, data.test, device)
        top_share = _top_class_share(test_predicted)
        record = {
            "train_loss": train_loss,
            "train_error": float(epoch_sums[1] / epoch_sums[2]),
            "val_error": _error(eval_model, data.val, device),
            "test_error": float((test_predicted != data.test.y).double().mean()),
            "epoch_time_s": elapsed,
        }
        for key, value in record.items():
            curves[key].append(value)
        if on_epoch is not None:
            on_epoch(epoch, record)
    for values in curves.values():  # a diverged run keeps its length: NaN after divergence
        values.extend([math.nan] * (config.epochs - len(values)))
    for values in fine.values():
        values.extend([math.nan] * (config.epochs * per_epoch - len(values)))
    return RunRecord(
        spec=spec,
        diverged=diverged,
        curves=curves,
        fine=fine,
        fine_per_epoch=per_epoch,
        final={
            **{k: curves[k][-1] for k in _FINAL if k in curves},
            "top_class_share": math.nan if diverged else top_share,
        },
        median_epoch_time_s=nanmedian(curves["epoch_time_s"]),
        world_size=world,
    )


# --- many runs ---------------------------------------------------------------------------------


def choose_rate(scores: dict[float, float], tolerance: float) -> float:
    """The learning rate to keep: the largest whose score (mean validation error; lower is
    better) is within ``tolerance`` of the lowest. Rates whose scores differ by less than the
    validation split can resolve are equally good, and the choice among them must not depend on
    rounding; of equals the largest trains fastest (the question is speed of convergence). This
    is the one-standard-error rule of model selection, with the learning rate as the knob.

    Example::

        >>> choose_rate({0.001: 0.012, 0.003: 0.010, 0.01: 0.014}, 0.005)
        0.01
        >>> choose_rate({0.001: 0.012, 0.003: 0.010, 0.01: 0.030}, 0.005)
        0.003
    """
    if not scores:
        raise ValueError("no learning rates to choose from")
    best = min(scores.values())
    return max(lr for lr, score in scores.items() if score <= best + tolerance)


def time_steps(
    config: ComparisonConfig,
    factory: Callable[..., nn.Module],
    data: Dataset,
    chosen_lr: dict[str, dict[str, float]],
    *,
    device: str = "cpu",
    rounds: int = 25,
    steps: int = 16,
) -> dict[str, dict[str, list[float]]]:
    """Training-step time of each method relative to the normal parameterization, per round.

    All methods are timed in this process, interleaved round by round in shuffled order, on
    the same minibatch; the ratio to the baseline (``normal-init``, else ``normal``, else the
    first method) is taken per round. Timings vary from run to run: report their spread.
    """
    rng = random.Random(0)
    dev = torch.device(device)
    x = data.train.x[: config.batch_size].to(dev)
    y = data.train.y[: config.batch_size].to(dev)
    init = data.train.x[: config.init_batch_size]
    result: dict[str, dict[str, list[float]]] = {}
    for opt_name in config.optimizers:
        step_fns = {}
        for method in config.methods:
            torch.manual_seed(0)
            model = build_method(METHODS[method], factory, init).to(dev)
            opt = _make_optimizer(opt_name, model.parameters(), chosen_lr[opt_name][method])

            def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
                opt.step()

            for _ in range(2):
                step()
            step_fns[method] = step
        base = next((m for m in ("normal-init", "normal") if m in step_fns), config.methods[0])
        per_round: dict[str, list[float]] = {m: [] for m in step_fns}
        for _ in range(rounds):
            times = {}
            order = list(step_fns)
            rng.shuffle(order)
            for method in order:
                start = time.perf_counter()
                for _ in range(steps):
                    step_fns[method]()
                times[method] = time.perf_counter() - start
            for method in step_fns:
                per_round[method].append(times[method] / times[base])
        result[opt_name] = per_round
    return result


def _with_epochs(
    spec: RunSpec,
    *,
    run: Callable[..., RunRecord],
    report: Callable[[str, int, int], None],
    epochs: int,
) -> RunRecord:
    return run(spec, on_epoch=lambda epoch, record: report(spec.name, epoch + 1, epochs))


def _describe(record: RunRecord) -> str:
    if record.diverged:
        return "diverged"
    return f"test error {record.final['test_error']:.4f}"


def run_comparison(
    config: ComparisonConfig,
    factory: Callable[..., nn.Module],
    data: Dataset,
    out: str | Path,
    *,
    workers: int = 1,
    progress: Progress | None = None,
    epoch_progress: Callable[[str, int, int], None] | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> ComparisonResult:
    """Compare the methods of ``config`` on ``data`` with models from ``factory``.

    Args:
        config: the comparison settings (:class:`ComparisonConfig`).
        factory: ``factory(norm=...)`` returns a fresh plain model whose convolutions are
            followed by the normalization ``norm`` (``"none"``, ``"bn"`` or ``"mobn"``); weight
            norm and data-dependent init are applied per method. It must be picklable for
            ``workers > 1`` (a module-level function or ``functools.partial``).
        data: train/validation/test splits.
        out: folder for run records (``runs/``); the report is written by
            :func:`weightnorm.experiments.report.write_report`.
        workers: parallel processes (each run is independent).
        progress: called as ``progress(done, total, message)`` after every run.
        epoch_progress: called as ``epoch_progress(run name, epoch, epochs)`` after every epoch
            of runs trained in this process (``workers=1``).
        device: where to train (``"cpu"``, ``"cuda"``).
        threads: torch threads of every run (part of each run's key: the numbers depend on
            it), in this process or a worker.

    Returns:
        A :class:`ComparisonResult` with every run's record and the chosen learning rates.

    Example::

        >>> import functools
        >>> from weightnorm.experiments.data import digits
        >>> from weightnorm.experiments.models import paper_cnn
        >>> from weightnorm.experiments.runner import ComparisonConfig, run_comparison
        >>> cfg = ComparisonConfig(epochs=2, seeds=1, optimizers=("adam",),
        ...                        lr_grid={"adam": (3e-3,)}, methods=("wn-init",))
        >>> factory = functools.partial(paper_cnn, 1, 10, dims=2, widths=(4, 8), pool=False)
        >>> import tempfile
        >>> res = run_comparison(cfg, factory, digits(), tempfile.mkdtemp())
        >>> res.chosen_lr
        {'adam': {'wn-init': 0.003}}
    """
    config.validate()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    pairs = [(o, m) for o in config.optimizers for m in config.methods]
    sweep = [RunSpec(m, o, float(lr), 0) for o, m in pairs for lr in config.lr_grid[o]]
    context = {
        "data": data.fingerprint(),
        "architecture": {norm: repr(factory(norm=norm)) for norm in ("none", "bn", "mobn")},
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "init_batch_size": config.init_batch_size,
        "device": torch.device(device).type,
    }
    run: Callable[[RunSpec], RunRecord] = functools.partial(
        train_run, config=config, factory=factory, data=data, device=device
    )
    if workers == 1 and epoch_progress is not None:
        run = functools.partial(_with_epochs, run=run, report=epoch_progress, epochs=config.epochs)
    jobs = Jobs(
        out, run, RunRecord, context, workers=workers, threads=threads, progress=progress,
        describe=_describe,
    )  # fmt: skip
    with jobs:
        search = min(config.search_seeds, config.seeds)
        candidates = {o: min(config.candidates, len(config.lr_grid[o])) for o in config.optimizers}
        jobs.expect(
            len(sweep)
            + sum(candidates[o] * (search - 1) for o, _ in pairs)
            + len(pairs) * (config.seeds - search)
        )
        done = dict(jobs.run(sweep))
        shortlist = {
            (o, m): sorted(
                config.lr_grid[o], key=lambda lr: (done[RunSpec(m, o, lr, 0)].score, lr)
            )[: candidates[o]]
            for o, m in pairs
        }
        more = [
            RunSpec(m, o, float(lr), seed)
            for (o, m), rates in shortlist.items()
            for lr in rates
            for seed in range(1, search)
        ]
        done.update(jobs.run(more))
        chosen: dict[str, dict[str, float]] = {o: {} for o in config.optimizers}
        for (o, m), rates in shortlist.items():

            def mean_score(lr: float, o: str = o, m: str = m) -> float:
                return statistics.fmean(done[RunSpec(m, o, lr, s)].score for s in range(search))

            chosen[o][m] = choose_rate({lr: mean_score(lr) for lr in rates}, config.lr_tolerance)
        rest = [
            RunSpec(m, o, chosen[o][m], seed)
            for o, m in pairs
            for seed in range(search, config.seeds)
        ]
        done.update(jobs.run(rest))
        loaded = jobs.cached
    # the timing pass builds models (data init all-reduces): single-process runs only
    _, world = distributed()
    with torch_threads(threads):
        ratios = {} if world > 1 else time_steps(config, factory, data, chosen, device=device)
    return ComparisonResult(
        config=config,
        runs=list(done.values()),
        chosen_lr=chosen,
        step_time_ratios=ratios,
        loaded_runs=loaded,
        data={
            "name": data.name,
            "fingerprint": data.fingerprint(),
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "input_shape": list(data.input_shape),
            # the error of the best constant prediction (the most frequent test class): a run
            # no better than this failed to train
            "chance_error": 1 - float(torch.bincount(data.test.y).max()) / len(data.test),
        },
        wall_time_s=time.perf_counter() - start,
    )
