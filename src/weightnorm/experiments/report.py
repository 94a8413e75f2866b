"""The report of a comparison: Markdown, JSON, CSV and PNG plots, each written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._env import environment
from .._io import atomic_write_bytes, atomic_write_text
from .methods import METHODS
from .plotting import png, pyplot
from .runner import ComparisonResult

__all__ = ["MethodSummary", "summarize", "write_report"]


@dataclass
class MethodSummary:
    """One method under one optimizer, over its final runs (the chosen learning rate)."""

    optimizer: str
    method: str
    lr: float
    seeds: int
    diverged: int
    test_error_mean: float
    test_error_std: float
    train_error_final: float
    epochs_to_target: float | None  # when the mean curve first reaches target (interpolated)
    step_time_ratio: float  # training-step time / the baseline's (interleaved timing pass)
    train_error_curve: list[float]
    test_error_curve: list[float]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _mean_curve(runs: list[dict[str, Any]], key: str) -> list[float]:
    curves = [r["curves"][key] for r in runs]
    return [_nanmean([c[i] for c in curves]) for i in range(len(curves[0]))]


def epochs_to(curve: list[float], target: float) -> float | None:
    """Epochs (1-based, linearly interpolated between epochs) until ``curve`` <= ``target``.

    Example::

        >>> epochs_to([0.5, 0.3, 0.1], 0.2)
        2.5
    """
    for i, value in enumerate(curve):
        if math.isfinite(value) and value <= target:
            before = curve[i - 1] if i > 0 else math.nan
            if not math.isfinite(before) or before == value:
                return float(i + 1)
            return i + (before - target) / (before - value)
    return None


def _target(result: ComparisonResult, finals: dict[tuple[str, str], list[dict[str, Any]]]) -> float:
    if result.config.target_train_error is not None:
        return result.config.target_train_error
    last = [_mean_curve(r, "train_error")[-1] for r in finals.values()]
    finite = [v for v in last if math.isfinite(v)]
    return statistics.median(finite) if finite else 0.5


def summarize(result: ComparisonResult) -> tuple[list[MethodSummary], float]:
    """Per optimizer and method: final errors over seeds, epochs to target, relative speed."""
    finals: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in result.runs:
        if run["final_run"]:
            spec = run["spec"]
            finals.setdefault((spec["optimizer"], spec["method"]), []).append(run)
    target = _target(result, finals)
    summaries = []
    for opt in result.config.optimizers:
        for method in result.config.methods:
            runs = finals[(opt, method)]
            tests = [r["final"]["test_error"] for r in runs]
            finite = [t for t in tests if math.isfinite(t)]
            train_curve = _mean_curve(runs, "train_error")
            summaries.append(
                MethodSummary(
                    optimizer=opt,
                    method=method,
                    lr=result.chosen_lr[opt][method],
                    seeds=len(runs),
                    diverged=sum(bool(r["diverged"]) for r in runs),
                    test_error_mean=statistics.fmean(finite) if finite else math.nan,
                    test_error_std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
                    train_error_final=train_curve[-1],
                    epochs_to_target=epochs_to(train_curve, target),
                    step_time_ratio=result.step_time_ratio.get(opt, {}).get(method, math.nan),
                    train_error_curve=train_curve,
                    test_error_curve=_mean_curve(runs, "test_error"),
                )
            )
    return summaries, target


# --- claims ------------------------------------------------------------------------------------


def _claims(summaries: list[MethodSummary], epochs: int) -> list[str]:
    """The paper's claims, each checked against this run and said plainly."""
    lines: list[str] = []
    for opt in dict.fromkeys(s.optimizer for s in summaries):
        by = {s.method: s for s in summaries if s.optimizer == opt}
        say = lines.append

        def ett(m: str, by: dict[str, MethodSummary] = by) -> float:
            value = by[m].epochs_to_target
            return math.inf if value is None else float(value)

        def fmt(m: str, by: dict[str, MethodSummary] = by) -> str:
            value = by[m].epochs_to_target
            return "never" if value is None else f"epoch {value:.1f}"

        if "wn-init" in by and "normal-init" in by:
            held = ett("wn-init") < ett("normal-init")
            same = ett("wn-init") == ett("normal-init")
            verdict = "held" if held else ("tie" if same else "did not hold")
            say(
                f"- **{opt}: weight norm speeds up convergence** (both with data init): "
                f"{verdict}. Target reached by WN at {fmt('wn-init')}, by the normal "
                f"parameterization at {fmt('normal-init')}."
            )
        if "wn" in by and "wn-init" in by:
            held = ett("wn-init") <= ett("wn")
            say(
                f"- **{opt}: data-dependent init matters for weight norm**: "
                f"{'held' if held else 'did not hold'}. WN without init reached the target at "
                f"{fmt('wn')}, with init at {fmt('wn-init')}; final test error "
                f"{by['wn'].test_error_mean:.2%} vs {by['wn-init'].test_error_mean:.2%}."
            )
        if "wn-mobn" in by:
            best = min(by.values(), key=lambda s: _finite_or_inf(s.test_error_mean))
            held = best.method == "wn-mobn"
            say(
                f"- **{opt}: WN + mean-only BN gives the best test error** (paper: 7.31% vs "
                f"8.05% BN, 8.43% normal): {'held' if held else 'did not hold'}. WN + MOBN "
                f"{by['wn-mobn'].test_error_mean:.2%} +- {by['wn-mobn'].test_error_std:.2%}; "
                f"best: {best.method} {best.test_error_mean:.2%}."
            )
        if "bn" in by and len(by) > 1:
            early = max(1, epochs // 4)
            ranks = sorted(
                by.values(), key=lambda s: _finite_or_inf(s.train_error_curve[early - 1])
            )
            held = ranks[0].method == "bn"
            say(
                f"- **{opt}: batch norm has the lowest training error early** (epoch {early}): "
                f"{'held' if held else 'did not hold'}; lowest there: {ranks[0].method} "
                f"({ranks[0].train_error_curve[early - 1]:.2%})."
            )
        if "wn-init" in by and math.isfinite(by["wn-init"].step_time_ratio):
            ratio = by["wn-init"].step_time_ratio
            held = ratio <= 1.10
            bn = (
                f" Batch norm: {by['bn'].step_time_ratio:.2f}x (paper: about 1.16x)."
                if "bn" in by
                else ""
            )
            say(
                f"- **{opt}: weight norm is not noticeably slower** (time per training step): "
                f"{'held' if held else 'did not hold'}, {ratio:.2f}x the normal "
                f"parameterization.{bn}"
            )
    return lines


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


# --- writing -----------------------------------------------------------------------------------


def _table(summaries: list[MethodSummary], target: float) -> str:
    lines = [
        "| optimizer | method | lr | test error (mean +- std) | final train error | "
        f"epochs to {target:.1%} train error | step time vs normal |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        div = f" ({s.diverged} diverged)" if s.diverged else ""
        ett = "not reached" if s.epochs_to_target is None else f"{s.epochs_to_target:.1f}"
        lines.append(
            f"| {s.optimizer} | {s.method} | {s.lr:g} | {s.test_error_mean:.2%} +- "
            f"{s.test_error_std:.2%}{div} | {s.train_error_final:.2%} | {ett} | "
            f"{s.step_time_ratio:.2f}x |"
        )
    return "\n".join(lines)


def _plot_curves(summaries: list[MethodSummary], result: ComparisonResult, out: Path) -> list[str]:
    plt = pyplot()
    from matplotlib.ticker import NullFormatter, PercentFormatter

    written = []
    for opt in result.config.optimizers:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
        for s in (s for s in summaries if s.optimizer == opt):
            runs = [
                r
                for r in result.runs
                if r["final_run"]
                and r["spec"]["optimizer"] == opt
                and r["spec"]["method"] == s.method
            ]
            for ax, key in zip(axes, ("train_error", "test_error"), strict=True):
                curves = [r["curves"][key] for r in runs]
                epochs = range(1, len(curves[0]) + 1)
                mean = _mean_curve(runs, key)
                lo = [min((c[i] for c in curves), default=math.nan) for i in range(len(mean))]
                hi = [max((c[i] for c in curves), default=math.nan) for i in range(len(mean))]
                (line,) = ax.plot(epochs, mean, label=f"{s.method} (lr {s.lr:g})")
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        for ax, title in zip(axes, ("training error", "test error"), strict=True):
            ax.set_title(f"{title} ({opt}; mean, band = min-max over seeds)")
            ax.set_xlabel("epoch")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{result.config.name}: {result.data['name']}")
        fig.tight_layout()
        name = f"curves_{opt}.png"
        atomic_write_bytes(out / name, png(fig))
        written.append(name)
    fig, axes = plt.subplots(
        1, len(result.config.optimizers), figsize=(5.5 * len(result.config.optimizers), 4)
    )
    axes_list = list(axes) if len(result.config.optimizers) > 1 else [axes]
    for ax, opt in zip(axes_list, result.config.optimizers, strict=True):
        for method in result.config.methods:
            sweep = sorted(
                (r["spec"]["lr"], r["final"]["val_error"] if not r["diverged"] else math.nan)
                for r in result.runs
                if r["spec"]["optimizer"] == opt
                and r["spec"]["method"] == method
                and r["spec"]["seed"] == 0
            )
            ax.plot([lr for lr, _ in sweep], [v for _, v in sweep], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation error (seed 0)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(f"learning-rate sweep ({opt})")
        ax.grid(True, alpha=0.3)
    axes_list[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(out / "lr_sweep.png", png(fig))
    written.append("lr_sweep.png")
    return written


def _csv(result: ComparisonResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = ["train_loss", "train_error", "val_error", "test_error", "epoch_time_s"]
    writer.writerow(["optimizer", "method", "lr", "seed", "final_run", "epoch", *keys])
    for run in result.runs:
        spec = run["spec"]
        for epoch in range(len(run["curves"]["train_error"])):
            writer.writerow(
                [spec["optimizer"], spec["method"], spec["lr"], spec["seed"], run["final_run"],
                 epoch + 1, *(run["curves"][k][epoch] for k in keys)]
            )  # fmt: skip
    return buffer.getvalue()


def write_report(
    result: ComparisonResult, out: str | Path, *, resolved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json``, ``results.csv`` and PNG plots into ``out``.

    ``resolved`` (the full resolved configuration, e.g. command-line settings) is stored in
    ``results.json`` beside the comparison config. Returns the summary written to JSON.
    """
    out = Path(out)
    summaries, target = summarize(result)
    plots = _plot_curves(summaries, result, out)
    env = environment()
    payload = {
        "config": asdict(result.config),
        "resolved": resolved or {},
        "data": result.data,
        "environment": env,
        "wall_time_s": result.wall_time_s,
        "chosen_lr": result.chosen_lr,
        "step_time_ratio": result.step_time_ratio,
        "target_train_error": target,
        "summary": [asdict(s) for s in summaries],
        "runs": result.runs,
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    atomic_write_text(out / "results.csv", _csv(result))
    cfg = result.config
    workers = ""
    if resolved and "workers" in resolved:
        workers = f", {resolved['workers']} parallel runs"
    methods = "\n".join(f"- `{m}`: {METHODS[m].label}" for m in cfg.methods)
    claims = "\n".join(_claims(summaries, cfg.epochs)) or "- (too few methods to check claims)"
    images = "\n".join(f"![{p}]({p})" for p in plots)
    report = f"""# Weight normalization: {cfg.name}

Data: {result.data["name"]} ({result.data["train"]} train, {result.data["val"]} validation,
{result.data["test"]} test; inputs {tuple(result.data["input_shape"])}). {cfg.epochs} epochs,
batch {cfg.batch_size}; the paper's schedule (momentum/beta1 0.9, then 0.5 with the learning rate
decayed linearly to 0 over the second half). Learning rate per method chosen on the validation
split (seed 0), then {cfg.seeds} seed(s) at that rate. Errors are on the test split.

{_table(summaries, target)}

Epochs to target: when the mean training error over seeds (measured during each epoch, with
dropout and input noise on; interpolated between epochs) first reaches {target:.1%}. Step time: a
training step (forward, backward, update) relative to the normal parameterization under the same
optimizer, median of an interleaved timing pass after training (the parallel runs' own clocks
share the machine and are kept in `results.json` only).

## What held and what did not

{claims}

## Methods

{methods}

## Plots

{images}

Machine: {env["machine"]}, {env["cpus"]} CPUs, torch {env["torch"]}{workers};
wall time {result.wall_time_s / 60:.1f} min. Every curve is in `results.json` / `results.csv`.
"""
    atomic_write_text(out / "report.md", report)
    return payload
