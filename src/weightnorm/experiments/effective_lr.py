"""Beyond the paper: the effective learning rate that ``||v||`` sets, and forced weight norm.

On the main job's network and data (the 1-D ConvPool-CNN-C on MNIST-1D), three
parameterizations are trained at a constant learning rate over a grid of at least two decades, under
SGD with momentum 0.9 and under Adam (beta1 0.9): the normal parameterization and weight norm,
both with the paper's data-dependent init (so all three start as the same function), and weight
norm with forced weight normalization (EDM2, Karras et al., CVPR 2024: every unit of ``v`` set
back to a fixed norm after each step, ``weightnorm.force_weight_norm``). The learning rate is
held constant so that the only decay of the effective step is the one the parameterization
makes. Per layer and epoch every run records ``||v||`` (``||w||`` for the normal
parameterization), the gain ``g``, and the angle an optimizer step turns each unit's direction
by (the effective step; mean over the epoch's steps and the layer's units). The paper (section
2.1) predicts that under weight norm ``||v||`` only grows, so the effective step decays, faster
at larger rates: a self-stabilizing, learning-rate-robust scheme. EDM2 argues the other side:
the decay differs per layer and is better replaced by a fixed norm (with Adam and norm
``sqrt(fan_in)``, every layer then turns by the same angle a step, at most about ``lr``) and an
explicit learning-rate schedule.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

import weightnorm as wn

from ._env import environment
from ._io import atomic_write_bytes, atomic_write_text
from ._stats import finite, mean_std, nanmean
from .curves import beats
from .data import Dataset, mnist1d
from .jobs import Jobs, Progress
from .models import paper_cnn
from .plotting import png, pyplot
from .records import RecordError, to_json
from .report import _OPTIMIZERS, SMOKE_TEST, _log_percent_axis, _range, epochs_to
from .runner import RunSpec, _error, _make_optimizer
from .settings import flatten

__all__ = [
    "QUICK",
    "EffectiveLRRecord",
    "EffectiveLRSettings",
    "command",
    "forced_norm_of",
    "run_effective_lr",
]

METHODS = ("normal-init", "wn-init", "forced-wn-init")
#: Settings that do not change any run's record (only which runs there are, and the report).
_NOT_IN_KEY = ("lr_grid", "seeds", "target_train_error")
#: The test error a diverged run is scored with in the grid means: chance, for 10 classes.
_CHANCE = 0.9


@dataclass(frozen=True)
class EffectiveLRSettings:
    """Budget of the effective-learning-rate experiment.

    Attributes:
        epochs: training epochs of every run, at a constant learning rate.
        batch_size: minibatch size.
        num_samples: MNIST-1D samples generated (the main job's 10,000).
        widths: channels of the network's two stages (the main job's).
        dropout: dropout after each pooling (the main job's).
        noise: std of the Gaussian input noise (the main job's).
        init_batch_size: samples of the data-dependent initialization batch.
        lr_grid: learning rates per optimizer (``"adam"``, ``"sgd"``), every one trained with
            every seed and method.
        forced_norm: per optimizer, the norm forced weight norm holds every unit of ``v`` at:
            ``"sqrt_fan_in"`` (EDM2's, made for Adam) or a number as text (``"1"``: nGPT's unit
            norm; under SGD the step on a direction scales as ``1/||v||^2``, and ``sqrt(fan_in)``
            would make it hundreds of times smaller than weight norm's at the same rate).
        seeds: runs per (method, optimizer, rate).
        target_train_error: the training error whose first crossing is reported at each
            method's best rate; ``None``: per optimizer, the highest final training error of any
            seed there (every seed reaches it).
    """

    epochs: int = 8
    batch_size: int = 100
    num_samples: int = 10_000
    widths: tuple[int, ...] = (32, 64)
    dropout: float = 0.3
    noise: float = 0.15
    init_batch_size: int = 500
    lr_grid: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "adam": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
            "sgd": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        }
    )
    forced_norm: dict[str, str] = field(default_factory=lambda: {"adam": "sqrt_fan_in", "sgd": "1"})
    seeds: int = 2
    target_train_error: float | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` saying what was expected and what was got."""
        for name in ("epochs", "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < 50:
            raise ValueError(f"num_samples must be >= 50, got {self.num_samples}")
        if self.init_batch_size < 2:
            raise ValueError(f"init_batch_size must be >= 2, got {self.init_batch_size}")
        if len(self.widths) != 2 or min(self.widths) < 1:
            raise ValueError(f"widths must be two positive channel counts, got {self.widths}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.noise >= 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise}")
        target = self.target_train_error
        if target is not None and not 0 < target < 1:
            raise ValueError(f"target_train_error must be in (0, 1) or none, got {target}")
        unknown = [opt for opt in self.lr_grid if opt not in _OPTIMIZERS]
        if unknown:
            raise ValueError(f"lr_grid: optimizers are 'adam' and 'sgd', got {unknown[0]!r}")
        used = [opt for opt, grid in self.lr_grid.items() if grid]
        if not used:
            raise ValueError(
                "lr_grid: expected rates for 'adam', 'sgd' or both (an empty grid leaves that "
                "optimizer out), got none"
            )
        for opt in used:
            grid = self.lr_grid[opt]
            if any(not (lr > 0 and math.isfinite(lr)) for lr in grid):
                raise ValueError(f"lr_grid.{opt} must be positive numbers, got {grid!r}")
            if len(set(grid)) != len(grid):
                raise ValueError(f"lr_grid.{opt} must name each rate once, got {grid!r}")
            if opt not in self.forced_norm:
                raise ValueError(f"forced_norm.{opt} is missing (lr_grid names {opt!r})")
            forced_norm_of(self, opt)


QUICK = EffectiveLRSettings(
    epochs=2, num_samples=1_000, widths=(4, 8), init_batch_size=100,
    lr_grid={"adam": (1e-3, 1e-2), "sgd": (1e-2, 1e-1)}, seeds=2,
)  # fmt: skip


def forced_norm_of(settings: EffectiveLRSettings, optimizer: str) -> wn.functional.ForcedNorm:
    """``settings.forced_norm[optimizer]`` as :func:`weightnorm.force_weight_norm` takes it."""
    text = settings.forced_norm[optimizer]
    try:
        value: Any = float(text)
    except ValueError:
        value = text
    try:
        wn.functional.check_forced_norm(value)
    except ValueError:
        raise ValueError(
            f"forced_norm.{optimizer} must be 'sqrt_fan_in' or a positive number, got {text!r}"
        ) from None
    return cast(wn.functional.ForcedNorm, value)


@dataclass(frozen=True)
class EffectiveLRRecord:
    """One run: per-epoch curves, per layer too (``v_norm.<i>``, ``g.<i>``, ``angle.<i>`` for
    the ``i``-th of ``layers``), and each layer's ``||v||`` before the first step."""

    spec: RunSpec
    diverged: bool
    layers: list[str]
    initial_v_norm: list[float]  # per layer, mean over units (after init and forcing)
    curves: dict[str, list[float]]

    def check(self) -> None:
        """:class:`~weightnorm.experiments.records.RecordError` unless every curve is there,
        with one value per epoch."""
        keys = {"train_loss", "train_error", "test_error"}
        keys |= {f"{k}.{i}" for i in range(len(self.layers)) for k in ("v_norm", "angle")}
        lengths = {len(v) for v in self.curves.values()}
        if (
            not keys <= set(self.curves)
            or len(lengths) != 1
            or len(self.initial_v_norm) != len(self.layers)
        ):
            raise RecordError(f"record {self.spec.name}: incomplete curves")

    def final(self, key: str) -> float:
        """The last epoch's value of ``key`` (NaN if the run diverged)."""
        return self.curves[key][-1]

    def layer_mean(self, key: str, epoch: int = -1) -> float:
        """``key`` (``"v_norm"``, ``"angle"``) at ``epoch``, mean over the layers."""
        return nanmean(self.curves[f"{key}.{i}"][epoch] for i in range(len(self.layers)))


def _network(settings: EffectiveLRSettings, data: Dataset) -> nn.Module:
    return paper_cnn(
        data.input_shape[0], data.num_classes, dims=1,
        widths=(settings.widths[0], settings.widths[1]), dropout=settings.dropout,
        noise=settings.noise,
    )  # fmt: skip


def _directions(model: nn.Module, weight_norm: bool) -> dict[str, Tensor]:
    """Per layer, the tensor whose units' directions are the weight's: ``v`` or ``w``."""
    name = "weight_v" if weight_norm else "weight"
    return {
        f"{q}.weight": getattr(m, name)
        for q, m in model.named_modules()
        if isinstance(m, nn.Conv1d | nn.Linear)
    }


def _build(
    spec: RunSpec, settings: EffectiveLRSettings, data: Dataset
) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
    """The run's initialized model, its optimizer (forcing registered) and its generator."""
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    init_idx = torch.randperm(len(data.train), generator=gen)[: settings.init_batch_size]
    model = _network(settings, data)
    if spec.method == "normal-init":
        wn.data_dependent_init_plain(model, data.train.x[init_idx])
    else:
        wn.apply_weight_norm(model)
        wn.data_dependent_init(model, data.train.x[init_idx])
    opt = _make_optimizer(spec.optimizer, model.parameters(), spec.lr)
    if spec.method == "forced-wn-init":
        wn.force_weight_norm(model, opt, norm=forced_norm_of(settings, spec.optimizer))
    return model, opt, gen


def _run(spec: RunSpec, settings: EffectiveLRSettings, data: Dataset) -> EffectiveLRRecord:
    model, opt, gen = _build(spec, settings, data)
    weight_norm = spec.method != "normal-init"
    n = len(data.train)
    directions = _directions(model, weight_norm)
    layers = list(directions)
    tracker = wn.AngularStepTracker(model, opt)  # (after forcing's hook: it measures the result)

    def norms() -> Tensor:
        return torch.stack(
            [wn.functional.norm_except_dim(d.detach(), 0).mean() for d in directions.values()]
        )

    initial = norms().tolist()
    curves: dict[str, list[float]] = {k: [] for k in ("train_loss", "train_error", "test_error")}
    for i in range(len(layers)):
        curves |= {f"v_norm.{i}": [], f"angle.{i}": []}
        if weight_norm:
            curves[f"g.{i}"] = []
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    steps = math.ceil(n / settings.batch_size)
    diverged = False
    model.train()
    for _ in range(settings.epochs):
        perm = torch.randperm(n, generator=gen)
        sums = torch.zeros(3, dtype=torch.float64)  # loss, errors, samples
        angles = torch.zeros(len(layers), dtype=torch.float64)  # summed over the epoch's steps
        for i in range(steps):
            idx = perm[i * settings.batch_size : (i + 1) * settings.batch_size]
            x, y = data.train.x[idx], data.train.y[idx]  # (batch, 1, 40), (batch,)
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            opt.step()  # (forced weight norm's hook has renormalized v when this returns)
            last = tracker.last()
            angles += torch.stack([last[layer].per_unit.mean() for layer in layers]).double()
            sums += torch.tensor([loss.item(), float((out.argmax(1) != y).sum()), len(idx)])
        train_loss = float(sums[0] / sums[2])
        v_norm = norms().tolist()
        gains = []
        if weight_norm:  # (the stats are keyed by the same qualified names as the layers)
            stats = wn.weight_norm_stats(model)
            gains = [stats[layer].g.double().mean().item() for layer in layers]
        if not all(math.isfinite(x) for x in (train_loss, *v_norm, *gains)):
            diverged = True  # (a norm that overflowed leaves a finite loss: a dead network)
            break
        curves["train_loss"].append(train_loss)
        curves["train_error"].append(float(sums[1] / sums[2]))
        curves["test_error"].append(_error(model, data.test, torch.device("cpu")))
        mean_angle = (angles / steps).tolist()
        for i in range(len(layers)):
            curves[f"v_norm.{i}"].append(v_norm[i])
            curves[f"angle.{i}"].append(mean_angle[i])
            if weight_norm:
                curves[f"g.{i}"].append(gains[i])
    for values in curves.values():  # a diverged run keeps its length: NaN after divergence
        values.extend([math.nan] * (settings.epochs - len(values)))
    return EffectiveLRRecord(spec, diverged, layers, initial, curves)


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


@dataclass
class _Results:
    settings: EffectiveLRSettings
    runs: dict[RunSpec, EffectiveLRRecord]

    @property
    def optimizers(self) -> list[str]:
        """The optimizers with rates to run (an empty grid leaves one out)."""
        return [opt for opt, grid in self.settings.lr_grid.items() if grid]

    def rates(self, opt: str) -> list[float]:
        return sorted(float(lr) for lr in self.settings.lr_grid[opt])

    def seeds(self, opt: str, method: str, lr: float) -> list[EffectiveLRRecord]:
        return [self.runs[RunSpec(method, opt, lr, s)] for s in range(self.settings.seeds)]

    def best_rate(self, opt: str, method: str) -> float:
        """The rate with the lowest final training loss, mean over seeds (diverged: worst)."""

        def score(lr: float) -> float:
            losses = [r.final("train_loss") for r in self.seeds(opt, method, lr)]
            return statistics.fmean(v if math.isfinite(v) else math.inf for v in losses)

        return min(self.rates(opt), key=lambda lr: (score(lr), lr))

    def best(self, opt: str, method: str) -> list[EffectiveLRRecord]:
        return self.seeds(opt, method, self.best_rate(opt, method))

    def target(self, opt: str) -> float:
        if self.settings.target_train_error is not None:
            return self.settings.target_train_error
        finals = finite(r.final("train_error") for m in METHODS for r in self.best(opt, m))
        return max(finals, default=0.5)

    def grid_error(self, opt: str, method: str) -> list[float]:
        """Per seed, the final test error averaged over the grid (a diverged run: chance)."""
        values = []
        for seed in range(self.settings.seeds):
            errors = [
                self.runs[RunSpec(method, opt, lr, seed)].final("test_error")
                for lr in self.rates(opt)
            ]
            values.append(statistics.fmean(e if math.isfinite(e) else _CHANCE for e in errors))
        return values

    def lr_exponent(self, opt: str, method: str) -> list[float]:
        """Per seed, the slope of log(last epoch's step, mean over layers) against log(lr) over
        the rates that did not diverge (NaN with fewer than two): 1 when the effective step
        is proportional to the rate, below 1 when a larger rate slows itself down."""
        values = []
        for seed in range(self.settings.seeds):
            points = [
                (math.log(lr), math.log(a))
                for lr in self.rates(opt)
                if math.isfinite(a := self.runs[RunSpec(method, opt, lr, seed)].layer_mean("angle"))
                and a > 0
            ]
            values.append(_slope(points))
        return values


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of ``y`` on ``x`` (NaN with fewer than two points)."""
    if len(points) < 2:
        return math.nan
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return float(sum((x - mx) * (y - my) for x, y in points) / sxx)


def _decay(record: EffectiveLRRecord) -> float:
    """The last epoch's step over the first's (mean over layers): below 1, a decaying step."""
    return record.layer_mean("angle", -1) / record.layer_mean("angle", 0)


def _growth(record: EffectiveLRRecord) -> list[float]:
    """Per layer, ``||v||`` at the end over ``||v||`` before the first step."""
    return [record.curves[f"v_norm.{i}"][-1] / v0 for i, v0 in enumerate(record.initial_v_norm)]


def _grew_every_epoch(record: EffectiveLRRecord) -> list[bool]:
    """Per layer, whether ``||v||`` grew (or held) from each epoch to the next, from the start."""
    return [
        all(b >= a for a, b in itertools.pairwise([v0, *record.curves[f"v_norm.{i}"]]))
        for i, v0 in enumerate(record.initial_v_norm)
    ]


def _layer_spread(record: EffectiveLRRecord) -> float:
    """The largest over the smallest layer's step, each averaged over the whole run."""
    per_layer = [nanmean(record.curves[f"angle.{i}"]) for i in range(len(record.layers))]
    return max(per_layer) / min(per_layer) if min(per_layer) > 0 else math.nan


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _ms(values: Sequence[float], fmt: str) -> str:
    mean, std = mean_std(values)
    return "diverged" if not math.isfinite(mean) else f"{mean:{fmt}} +- {std:{fmt}}"


def _sweep_table(res: _Results) -> list[str]:
    lines = []
    for opt in res.optimizers:
        rates = res.rates(opt)
        lines += [
            f"**{_OPTIMIZERS[opt]}**: final training loss / test error, mean over "
            f"{res.settings.seeds} seeds (d: seeds diverged)",
            "",
            "| method | "
            + " | ".join(f"lr {lr:g}" for lr in rates)
            + " | test error over the grid |",
            "|---|" + "---|" * (len(rates) + 1),
        ]
        for method in METHODS:
            cells = []
            for lr in rates:
                runs = res.seeds(opt, method, lr)
                loss = nanmean(r.final("train_loss") for r in runs)
                err = nanmean(r.final("test_error") for r in runs)
                div = sum(r.diverged for r in runs)
                cell = "diverged" if div == len(runs) else f"{loss:.3f} / {err:.1%}"
                best = lr == res.best_rate(opt, method)
                cells.append(
                    (f"**{cell}**" if best else cell)
                    + (f" ({div}d)" if 0 < div < len(runs) else "")
                )
            lines.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {_ms(res.grid_error(opt, method), '.1%')} |"
            )
        lines.append("")
    lines.append(
        "Bold: each method's best rate (lowest mean final training loss). The last column is "
        f"the final test error averaged over the grid's rates (a diverged run counts as chance, "
        f"{_CHANCE:.0%}), mean +- std over seeds: one number for robustness to the rate."
    )
    return lines


def _step_table(res: _Results) -> list[str]:
    """Per optimizer, method and rate: the first and the last epoch's step (mean over layers
    and seeds)."""
    lines = [
        "The effective step at every rate: the angle a step turns a unit by (rad), mean over "
        "the epoch's steps, the units, the layers and the seeds, first epoch -> last epoch "
        "(a seed is left out from the epoch it diverged).",
        "",
    ]
    for opt in res.optimizers:
        rates = res.rates(opt)
        lines += [
            f"| {_OPTIMIZERS[opt]} | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
            "|---|" + "---|" * len(rates),
        ]
        for method in METHODS:
            cells = []
            for lr in rates:
                runs = res.seeds(opt, method, lr)
                first = nanmean(r.layer_mean("angle", 0) for r in runs)
                last = nanmean(r.layer_mean("angle", -1) for r in runs)
                cells.append(
                    "diverged" if not math.isfinite(first) else f"{first:.2e} -> {last:.2e}"
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _dynamics_table(res: _Results) -> list[str]:
    lines = [
        "| optimizer | method | best lr | final train loss | test error | epochs to target | "
        "norm of v (w) end / start, median [min-max] over layers and seeds | "
        "step, first -> last epoch (rad) | last / first | largest / smallest layer's step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for opt in res.optimizers:
        target = res.target(opt)
        for method in METHODS:
            runs = res.best(opt, method)
            growth = [g for r in runs if not r.diverged for g in _growth(r)]
            first = nanmean(r.layer_mean("angle", 0) for r in runs)
            last = nanmean(r.layer_mean("angle", -1) for r in runs)
            lr = res.best_rate(opt, method)
            edge = " (grid edge)" if lr in (res.rates(opt)[0], res.rates(opt)[-1]) else ""
            lines.append(
                f"| {opt} | {method} | {lr:g}{edge} | "
                f"{_ms([r.final('train_loss') for r in runs], '.4f')} | "
                f"{_ms([r.final('test_error') for r in runs], '.2%')} | "
                f"{_range([epochs_to(r.curves['train_error'], target) for r in runs], '.1f')} "
                f"(to {target:.1%}) | {_range(growth, '.2f')} | {first:.2e} -> {last:.2e} | "
                f"{_range([_decay(r) for r in runs], '.2f')} | "
                f"{_range([_layer_spread(r) for r in runs], '.1f')} |"
            )
    return lines


def _claims(res: _Results) -> list[str]:
    claims = []
    wn_, forced, normal = METHODS[1], METHODS[2], METHODS[0]
    for opt in res.optimizers:
        name = _OPTIMIZERS[opt]

        def trio(values: dict[str, list[float]], fmt: str, span: bool = True) -> str:
            show = _range if span else _ms
            return (
                f"WN {show(values[wn_], fmt)}, forced WN {show(values[forced], fmt)}, "
                f"normal {show(values[normal], fmt)}."
            )

        err = {m: res.grid_error(opt, m) for m in METHODS}
        claims.append(
            f"- **{name}: weight norm is more robust to the learning rate than the normal "
            f"parameterization** (paper, sections 2.1 and 5; final test error over the grid): "
            f"{beats(err[wn_], err[normal])}. {trio(err, '.1%', span=False)}"
        )
        claims.append(
            f"- **{name}: forcing the norm gives up that robustness** (the self-stabilization of "
            f"section 2.1 is what forced weight norm removes; WN beats forced WN over the grid): "
            f"{beats(err[wn_], err[forced])}."
        )
        growth = {
            lr: [g for r in res.seeds(opt, wn_, lr) if not r.diverged for g in _growth(r)]
            for lr in res.rates(opt)
        }
        trained = [lr for lr, values in growth.items() if values] or res.rates(opt)
        low, high = trained[0], trained[-1]  # the extreme rates with a run that did not diverge
        kept = [r for lr in res.rates(opt) for r in res.seeds(opt, wn_, lr) if not r.diverged]
        pairs = [grew for r in kept for grew in _grew_every_epoch(r)]
        verdict = "held" if pairs and all(pairs) else "did not hold"
        claims.append(
            f"- **{name}: under weight norm ||v|| only grows** (paper, section 2.1; at every "
            f"epoch, in every layer of every run that did not diverge): {verdict}: in {sum(pairs)} "
            f"of {len(pairs)} (layer, run) pairs; growth over the run, median [min-max] over "
            f"layers and seeds: "
            f"{_range(growth[low], '.2f')} at lr {low:g}, {_range(growth[high], '.2f')} at lr "
            f"{high:g}."
        )
        decay = {m: [_decay(r) for r in res.best(opt, m)] for m in METHODS}
        claims.append(
            f"- **{name}: the effective step decays more under weight norm than under forced "
            f"weight norm** (EDM2; last epoch's step over the first's at each method's best "
            f"rate, forced WN's ratio higher): "
            f"{beats(decay[forced], decay[wn_], higher_is_better=True)}. {trio(decay, '.2f')}"
        )
        slope = {m: res.lr_exponent(opt, m) for m in METHODS}
        claims.append(
            f"- **{name}: a larger rate slows itself down under weight norm** (section 2.1; the "
            f"slope of log(last epoch's step) against log(lr), 1 for a step proportional to the "
            f"rate; WN's lower than forced WN's): {beats(slope[wn_], slope[forced])}. "
            f"{trio(slope, '.2f')}"
        )
        spread = {m: [_layer_spread(r) for r in res.best(opt, m)] for m in METHODS}
        claims.append(
            f"- **{name}: forced weight norm evens out the step across layers** (EDM2, for Adam "
            f"with norm sqrt(fan_in); here forced norm {res.settings.forced_norm[opt]}; largest "
            f"over smallest layer's step at the best rate, forced WN's lower): "
            f"{beats(spread[forced], spread[wn_])}. {trio(spread, '.1f')}"
        )
        target = res.target(opt)
        ett = {
            m: [epochs_to(r.curves["train_error"], target) for r in res.best(opt, m)]
            for m in METHODS
        }
        claims.append(
            f"- **{name}: weight norm converges faster** (paper; epochs to {target:.1%} training "
            f"error at each method's best rate): {beats(ett[wn_], ett[normal])}. "
            f"{trio(ett, '.1f')}"
        )
        claims.append(
            f"- **{name}: forced weight norm converges faster than weight norm** (EDM2, same "
            f"measure): {beats(ett[forced], ett[wn_])}."
        )
    return claims


def _mark_diverged(ax: Any, xs: Sequence[float], color: str) -> None:
    for x in xs:  # at the top of the panel, whatever its scale
        ax.plot(
            [x], [0.96], marker="x", markersize=9, color=color, transform=ax.get_xaxis_transform()
        )


def _sweep_plot(res: _Results) -> bytes:
    plt = pyplot()
    opts = res.optimizers
    fig, axes = plt.subplots(2, len(opts), figsize=(5.8 * len(opts), 8), squeeze=False)
    for col, opt in enumerate(opts):
        rates = res.rates(opt)
        shown: list[float] = []
        for method in METHODS:
            for row, key in enumerate(("train_loss", "test_error")):
                ax = axes[row][col]
                values = [[r.final(key) for r in res.seeds(opt, method, lr)] for lr in rates]
                mean = [nanmean(v) for v in values]
                lo = [min(finite(v), default=math.nan) for v in values]
                hi = [max(finite(v), default=math.nan) for v in values]
                (line,) = ax.plot(rates, mean, marker="o", markersize=4, label=method)
                ax.fill_between(rates, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
                _mark_diverged(
                    ax,
                    [
                        lr
                        for lr, v in zip(rates, values, strict=True)
                        if any(not math.isfinite(x) for x in v)
                    ],
                    line.get_color(),
                )
                if key == "test_error":
                    shown += mean
        for row, label in enumerate(("final training loss", "final test error")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_xlabel("learning rate (constant)")
            ax.set_ylabel(label)
            ax.set_title(
                f"{_OPTIMIZERS[opt]}: {label}\nmean over seeds, band = min-max, "
                "x = a seed diverged",
                fontsize=9,
            )
        axes[0][col].set_yscale("log")
        axes[0][col].grid(True, which="major", alpha=0.3)
        _log_percent_axis(axes[1][col], shown)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def _layer_plot(res: _Results, key: str, label: str) -> bytes:
    plt = pyplot()
    opts = res.optimizers
    fig, axes = plt.subplots(
        len(opts),
        len(METHODS),
        figsize=(4.4 * len(METHODS), 3.6 * len(opts)),
        squeeze=False,
        sharey="row",
    )
    cmap = plt.get_cmap("viridis")
    for row, opt in enumerate(opts):
        for col, method in enumerate(METHODS):
            ax = axes[row][col]
            runs = res.best(opt, method)
            layers = runs[0].layers
            for i, layer in enumerate(layers):
                per_seed = [r.curves[f"{key}.{i}"] for r in runs]
                mean = [nanmean(c[e] for c in per_seed) for e in range(len(per_seed[0]))]
                epochs = list(range(1, len(mean) + 1))
                if key == "v_norm":
                    epochs, mean = [0, *epochs], [nanmean(r.initial_v_norm[i] for r in runs), *mean]
                ax.plot(
                    epochs,
                    mean,
                    color=cmap(i / max(1, len(layers) - 1)),
                    label=f"layer {i + 1} ({layer})",
                )
            lr = res.best_rate(opt, method)
            if (
                key == "angle"
                and method == "forced-wn-init"
                and opt == "adam"
                and res.settings.forced_norm[opt] == "sqrt_fan_in"
            ):
                ax.axhline(
                    lr, color="black", linestyle="--", linewidth=1, label="lr (Adam's bound)"
                )
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(
                label if method != "normal-init" or key != "v_norm" else "||w||, mean over units"
            )
            ax.set_title(f"{_OPTIMIZERS[opt]}, {method}, lr {lr:g}\n(mean over seeds)", fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            ax.yaxis.set_tick_params(labelleft=True)  # (shared: tick labels on every panel)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return png(fig)


def _panel_per_optimizer(res: _Results) -> tuple[Any, list[tuple[Any, str]]]:
    """A figure with one panel per optimizer, side by side, and its ``(panel, optimizer)``."""
    opts = res.optimizers
    fig, axes = pyplot().subplots(1, len(opts), figsize=(5.8 * len(opts), 4.4), squeeze=False)
    return fig, list(zip(axes[0], opts, strict=True))


def _step_vs_lr_plot(res: _Results) -> bytes:
    fig, panels = _panel_per_optimizer(res)
    for ax, opt in panels:
        rates = res.rates(opt)
        for method in METHODS:
            for epoch, style in ((0, ":"), (-1, "-")):
                mean = [
                    nanmean(r.layer_mean("angle", epoch) for r in res.seeds(opt, method, lr))
                    for lr in rates
                ]
                label = f"{method}, {'first' if epoch == 0 else 'last'} epoch"
                ax.plot(rates, mean, linestyle=style, marker="o", markersize=3.5, label=label,
                        color=f"C{METHODS.index(method)}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate (constant)")
        ax.set_ylabel("angle turned per step (rad), mean over layers")
        ax.set_title(
            f"{_OPTIMIZERS[opt]}: the effective step against the rate\n(mean over seeds; "
            "a run is left out from the epoch it diverged)",
            fontsize=9,
        )
        ax.grid(True, which="major", alpha=0.3)
    panels[0][0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def _curves_plot(res: _Results) -> bytes:
    fig, panels = _panel_per_optimizer(res)
    for ax, opt in panels:
        shown: list[float] = []
        for method in METHODS:
            runs = res.best(opt, method)
            mean = [
                nanmean(r.curves["train_error"][e] for r in runs)
                for e in range(res.settings.epochs)
            ]
            shown += mean
            ax.plot(range(1, len(mean) + 1), mean, marker="o", markersize=3.5,
                    label=f"{method} (lr {res.best_rate(opt, method):g})")  # fmt: skip
        target = res.target(opt)
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.1%}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training error")
        ax.set_title(
            f"{_OPTIMIZERS[opt]}: training error at each method's best rate\n(mean over seeds)",
            fontsize=9,
        )
        _log_percent_axis(ax, shown)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def _csv(res: _Results) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = sorted({k for r in res.runs.values() for k in r.curves})
    writer.writerow(["method", "seed", "optimizer", "lr", "epoch", *keys])
    for spec, record in res.runs.items():
        for e in range(res.settings.epochs):
            values = [record.curves[k][e] if k in record.curves else "" for k in keys]
            writer.writerow([spec.method, spec.seed, spec.optimizer, spec.lr, e + 1, *values])
    return buffer.getvalue()


def command(settings: EffectiveLRSettings) -> str:
    """The command line that runs ``settings``: ``--set`` for each setting off its default.

    Example::

        >>> command(EffectiveLRSettings(epochs=3, widths=(8, 16)))
        'weightnorm reproduce effective-lr --set epochs=3 --set widths=8,16'
    """
    given, default = flatten(settings), flatten(EffectiveLRSettings())
    parts = ["weightnorm reproduce effective-lr"]
    parts += [f"--set {key}=" for key in default if key not in given]  # (an optimizer left out)
    for key, value in given.items():
        if value != default.get(key):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            parts.append(f"--set {key}={'none' if shown is None else shown}")
    return " ".join(parts)


def _write(
    res: _Results, out: Path, wall_time_s: float, trained: int, smoke: bool
) -> dict[str, Any]:
    plots = {
        "lr_sweep.png": _sweep_plot(res),
        "v_norm.png": _layer_plot(res, "v_norm", "||v||, mean over units"),
        "angular_step.png": _layer_plot(res, "angle", "angle turned per step (rad)"),
        "step_vs_lr.png": _step_vs_lr_plot(res),
        "curves.png": _curves_plot(res),
    }
    for name, data in plots.items():
        atomic_write_bytes(out / name, data)
    env = environment()
    settings = asdict(res.settings)
    summary = {
        opt: {
            m: {
                "best_lr": res.best_rate(opt, m),
                "grid_test_error": res.grid_error(opt, m),
                "lr_exponent": res.lr_exponent(opt, m),
                "step_decay": [_decay(r) for r in res.best(opt, m)],
                "test_error": [r.final("test_error") for r in res.best(opt, m)],
            }
            for m in METHODS
        }
        for opt in res.optimizers
    }
    atomic_write_text(
        out / "results.json",
        json.dumps(
            {"title": "effective-lr", "settings": settings, "environment": env,
             "wall_time_s": wall_time_s, "summary": summary,
             "runs": [to_json(r) for r in res.runs.values()]},
            indent=1, default=str,
        ),
    )  # fmt: skip
    atomic_write_text(out / "results.csv", _csv(res))
    intro = __doc__.split("\n\n", 1)[1].strip() if __doc__ else ""
    s = res.settings
    runs = len(res.runs)
    diverged = sum(r.diverged for r in res.runs.values())
    rule = (
        "A claim that one method beats another *held* when every seed of the one beats every "
        "seed of the other, *did not hold* when the reverse is true, and is *inconclusive* when "
        f"the seeds' ranges overlap (with {s.seeds} seeds each, a complete separation arises by "
        f"chance with probability {1 / math.comb(2 * s.seeds, s.seeds):.2g})."
    )
    held = [SMOKE_TEST] if smoke else [rule, "", *_claims(res)]
    report = "\n".join([
        "# The effective learning rate: weight norm, forced weight norm, normal"
        + (" (smoke test)" if smoke else ""), "", intro, "",
        f"Budget: {s.epochs} epochs of batch {s.batch_size} at a constant rate; forced norm "
        f"per optimizer {s.forced_norm}; {s.seeds} seeds per method and rate; {runs} runs, "
        f"{diverged} of them diverged (their curves stop; marked x in the plots).", "",
        "## The learning-rate sweep", "", *_sweep_table(res), "", *_step_table(res),
        "## At each method's best rate", "",
        "Steps are angles a step turns each unit's direction by, averaged over an epoch's "
        "steps, the layer's units and, where it says so, the layers. Final loss and test "
        "error: mean +- std over seeds; the first and last epochs' steps: mean over seeds; the "
        "other columns: median [min-max] over seeds.",
        "", *_dynamics_table(res), "",
        "## What held and what did not", "", *held, "",
        "## Plots", "", *(f"![{p}]({p})" for p in plots), "",
        f"Command: `{command(res.settings)}`. Machine: {env['machine']}, {env['cpus']} CPUs, "
        f"torch {env['torch']}; wall time {wall_time_s / 60:.1f} min ({trained} of {runs} runs "
        "trained by this invocation; any others were reused). Settings and every curve: "
        "`results.json`, `results.csv`.",
    ]) + "\n"  # fmt: skip
    atomic_write_text(out / "report.md", report)
    return summary


def run_effective_lr(
    out: str | Path,
    settings: EffectiveLRSettings | None = None,
    *,
    workers: int = 1,
    threads: int = 1,
    progress: Progress | None = None,
    smoke: bool = False,
) -> dict[str, Any]:
    """Run the effective-learning-rate experiment and write its report into ``out``.

    Every (method, optimizer, rate, seed) runs once through :class:`~.jobs.Jobs`
    (resumable: a rerun reuses finished runs), ``workers`` processes of ``threads`` torch
    threads; ``out`` receives ``report.md``, ``results.json``, ``results.csv`` and the plots (a
    ``smoke`` test's report, ``--quick``, states no verdicts).

    Returns:
        Per optimizer and method: the best rate and the per-seed figures the claims use.

    Example::

        >>> import tempfile, dataclasses
        >>> tiny = dataclasses.replace(QUICK, epochs=1, seeds=1, lr_grid={"adam": (1e-3,)})
        >>> summary = run_effective_lr(tempfile.mkdtemp(), tiny)
        >>> summary["adam"]["wn-init"]["best_lr"]
        0.001
    """
    settings = settings or EffectiveLRSettings()
    settings.validate()
    start = time.perf_counter()
    data = mnist1d(settings.num_samples)
    jobs = [
        RunSpec(m, opt, float(lr), seed)
        for opt, grid in settings.lr_grid.items()
        for lr in grid
        for m in METHODS
        for seed in range(settings.seeds)
    ]
    run: Callable[[RunSpec], EffectiveLRRecord] = functools.partial(
        _run, settings=settings, data=data
    )
    # a run's record depends on its job and these settings, not on the grid or the seed count
    # (a wider grid or more seeds reuse every finished run) nor on the report's target
    kept = {k: v for k, v in asdict(settings).items() if k not in _NOT_IN_KEY}
    context = {"experiment": "effective-lr", "settings": kept, "data": data.fingerprint()}
    with Jobs(out, run, EffectiveLRRecord, context, workers=workers, threads=threads,
              progress=progress, describe=_describe) as runner:  # fmt: skip
        runner.expect(len(jobs))
        done = runner.run(jobs)
        trained = runner.done - runner.cached
    res = _Results(settings, done)
    return _write(res, Path(out), time.perf_counter() - start, trained, smoke)


def _describe(record: EffectiveLRRecord) -> str:
    if record.diverged:
        return "diverged"
    return f"train loss {record.final('train_loss'):.4f}"
