"""The report of a comparison: Markdown, JSON, CSV and PNG plots, each written atomically.

Every verdict on a claim of the paper compares per-seed values and carries their spread: a
claim "A beats B" *held* when every seed of A beats every seed of B, *did not hold* when every
seed of B beats every seed of A, and is *inconclusive* otherwise (the seeds' ranges overlap).
With 3 seeds each, a complete separation happens by chance with probability 1/20 when the two
methods are equally good (a one-sided permutation test at p = 0.05). Timing verdicts use the
quartiles of the per-round ratios in the same way. A ``--quick`` report is a smoke test: it
states no verdicts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ._env import environment
from ._io import atomic_write_bytes, atomic_write_text
from ._stats import finite, nanmean
from .methods import METHODS
from .plotting import png, pyplot
from .records import to_json
from .runner import CURVES, ComparisonResult, RunRecord

__all__ = ["MethodSummary", "Verdict", "compare", "epochs_to", "summarize", "write_report"]

#: "Not noticeably slower": a training step within this factor of the normal parameterization's.
SLOWER = 1.10


@dataclass
class MethodSummary:
    """One method under one optimizer, over its runs at the chosen learning rate."""

    optimizer: str
    method: str
    lr: float
    seeds: int
    diverged: int  # of the runs at the chosen rate
    sweep_runs: int  # every run of this method and optimizer (sweep and candidates)
    sweep_diverged: int
    test_errors: list[float]  # per seed (NaN: diverged)
    test_error_mean: float
    test_error_std: float
    train_error_final: float  # mean over seeds
    epochs_to_target: list[float]  # per seed; inf: never reached
    step_time: list[float]  # per-round ratios to the normal parameterization (may be empty)
    train_error_curve: list[float]  # mean over seeds, per epoch
    test_error_curve: list[float]


def _mean_curve(runs: Sequence[RunRecord], key: str) -> list[float]:
    curves = [r.curves[key] for r in runs]
    return [nanmean([c[i] for c in curves]) for i in range(len(curves[0]))]


def epochs_to(curve: Sequence[float], target: float) -> float:
    """Epochs (1-based, linearly interpolated between epochs) until ``curve`` <= ``target``;
    ``inf`` if it never gets there.

    Example::

        >>> epochs_to([0.5, 0.3, 0.1], 0.2)
        2.5
        >>> epochs_to([0.5, float("nan")], 0.2)
        inf
    """
    for i, value in enumerate(curve):
        if math.isfinite(value) and value <= target:
            before = curve[i - 1] if i > 0 else math.nan
            if not math.isfinite(before) or before == value:
                return float(i + 1)
            return i + (before - target) / (before - value)
    return math.inf


def _bad(value: float) -> float:
    """A non-finite value (a diverged run's NaN) as the worst one, ``inf``."""
    return value if math.isfinite(value) else math.inf


#: The outcome of a claim "A beats B" on per-seed values (:func:`compare`).
Verdict = Literal["held", "did not hold", "inconclusive"]


def compare(a: Sequence[float], b: Sequence[float]) -> Verdict:
    """Does ``a`` beat ``b`` (lower is better; NaN counts as worst) on every pair of seeds?

    Example::

        >>> compare([1.0, 2.0], [3.0, 4.0])
        'held'
        >>> compare([1.0, 3.5], [3.0, 4.0])
        'inconclusive'
        >>> compare([5.0], [3.0, 4.0])
        'did not hold'
    """
    fa, fb = [_bad(v) for v in a], [_bad(v) for v in b]
    if max(fa) < min(fb):
        return "held"
    if max(fb) < min(fa):
        return "did not hold"
    return "inconclusive"


def _beats_all(verdicts: Sequence[Verdict]) -> Verdict:
    """ "A beats every other method" from A's verdict against each: held if each held, did not
    hold if some other method beat it, inconclusive otherwise."""
    if all(v == "held" for v in verdicts):
        return "held"
    return "did not hold" if "did not hold" in verdicts else "inconclusive"


def _target(result: ComparisonResult) -> float:
    if result.config.target_train_error is not None:
        return result.config.target_train_error
    last = [
        _mean_curve(result.runs_of(o, m), "train_error")[-1]
        for o in result.config.optimizers
        for m in result.config.methods
    ]
    reached = finite(last)
    return statistics.median(reached) if reached else 0.5


def summarize(result: ComparisonResult) -> tuple[list[MethodSummary], float]:
    """Per optimizer and method: errors over seeds, epochs to target, divergences, timing."""
    target = _target(result)
    summaries = []
    for opt in result.config.optimizers:
        for method in result.config.methods:
            runs = result.runs_of(opt, method)
            every = [r for r in result.runs if r.spec.optimizer == opt and r.spec.method == method]
            tests = [r.final["test_error"] for r in runs]
            finished = finite(tests)
            train_curve = _mean_curve(runs, "train_error")
            summaries.append(
                MethodSummary(
                    optimizer=opt,
                    method=method,
                    lr=result.chosen_lr[opt][method],
                    seeds=len(runs),
                    diverged=sum(r.diverged for r in runs),
                    sweep_runs=len(every),
                    sweep_diverged=sum(r.diverged for r in every),
                    test_errors=tests,
                    test_error_mean=nanmean(tests),
                    test_error_std=statistics.stdev(finished) if len(finished) > 1 else 0.0,
                    train_error_final=train_curve[-1],
                    epochs_to_target=[epochs_to(r.curves["train_error"], target) for r in runs],
                    step_time=result.step_time_ratios.get(opt, {}).get(method, []),
                    train_error_curve=train_curve,
                    test_error_curve=_mean_curve(runs, "test_error"),
                )
            )
    return summaries, target


# --- claims ------------------------------------------------------------------------------------


def _range(values: Sequence[float], fmt: str) -> str:
    """``median [min-max]`` of per-seed values in ``fmt``; ``never``/``diverged`` spelled out."""
    shown = finite(values)
    bad = len(values) - len(shown)
    if not shown:
        return "never" if values and all(v == math.inf for v in values) else "diverged"
    text = format(statistics.median(shown), fmt)
    if len(shown) > 1:
        text += f" [{format(min(shown), fmt)}-{format(max(shown), fmt)}]"
    if bad:
        text += f", {bad} of {len(values)} seeds never"
    return text


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else math.nan
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _claims(summaries: list[MethodSummary], result: ComparisonResult, target: float) -> list[str]:
    """The paper's claims, each checked against this run with its spread, said plainly."""
    lines: list[str] = []
    early = max(1, result.config.epochs // 4)
    for opt in dict.fromkeys(s.optimizer for s in summaries):
        by = {s.method: s for s in summaries if s.optimizer == opt}
        say = lines.append

        def ett(m: str, by: dict[str, MethodSummary] = by) -> str:
            return _range(by[m].epochs_to_target, ".1f")

        if "wn-init" in by and "normal-init" in by:
            v = compare(by["wn-init"].epochs_to_target, by["normal-init"].epochs_to_target)
            say(
                f"- **{opt}: weight norm speeds up convergence** (both with data init; epochs "
                f"to {target:.1%} training error, median [min-max] over seeds): **{v}**. "
                f"WN {ett('wn-init')}, normal parameterization {ett('normal-init')}."
            )
        if "wn" in by and "wn-init" in by:
            v = compare(by["wn-init"].epochs_to_target, by["wn"].epochs_to_target)
            say(
                f"- **{opt}: data-dependent init speeds up weight norm** (epochs to "
                f"{target:.1%}): **{v}**. With init {ett('wn-init')}, without "
                f"{ett('wn')}; test error {_range(by['wn-init'].test_errors, '.2%')} vs "
                f"{_range(by['wn'].test_errors, '.2%')}."
            )
        if "wn-mobn" in by and len(by) > 1:
            others = [s for m, s in by.items() if m != "wn-mobn"]
            verdicts = [compare(by["wn-mobn"].test_errors, s.test_errors) for s in others]
            beaten = [
                s.method for s, v in zip(others, verdicts, strict=True) if v == "did not hold"
            ]
            word = _beats_all(verdicts)
            best = min(by.values(), key=lambda s: _bad(s.test_error_mean))
            detail = (
                f"beaten on every seed by {', '.join(beaten)}"
                if beaten
                else "separated from every other method on every seed"
                if word == "held"
                else "the seeds' ranges overlap with "
                + ", ".join(s.method for s, v in zip(others, verdicts, strict=True) if v != "held")
            )
            say(
                f"- **{opt}: WN + mean-only BN gives the best test error** (paper: 7.31% vs "
                f"8.05% BN, 8.43% normal): **{word}** ({detail}). WN + MOBN "
                f"{_range(by['wn-mobn'].test_errors, '.2%')}; lowest mean: {best.method} "
                f"{best.test_error_mean:.2%}."
            )
        if "bn" in by and len(by) > 1:
            runs = {m: result.runs_of(opt, m) for m in by}
            at = {m: [r.curves["train_error"][early - 1] for r in runs[m]] for m in by}
            against = {m: compare(at["bn"], at[m]) for m in by if m != "bn"}
            losses = [m for m, v in against.items() if v == "did not hold"]
            word = _beats_all(list(against.values()))
            lowest = min(by, key=lambda m: _bad(nanmean(at[m])))
            say(
                f"- **{opt}: batch norm has the lowest training error early** (epoch {early}): "
                f"**{word}**. Batch norm {_range(at['bn'], '.2%')}; lowest mean there: {lowest} "
                f"({nanmean(at[lowest]):.2%})"
                + (f"; beaten on every seed by {', '.join(losses)}." if losses else ".")
            )
        if "wn-init" in by and by["wn-init"].step_time:
            q1, q2, q3 = _quartiles(by["wn-init"].step_time)
            word = "held" if q3 <= SLOWER else ("did not hold" if q1 > SLOWER else "inconclusive")
            say(
                f"- **{opt}: weight norm is not noticeably slower** (a training step within "
                f"{SLOWER:.2f}x the normal parameterization's, on the quartiles of "
                f"{len(by['wn-init'].step_time)} interleaved timing rounds): **{word}**, median "
                f"{q2:.2f}x [quartiles {q1:.2f}-{q3:.2f}]. Timings vary from run to run."
            )
    return lines


# --- writing -----------------------------------------------------------------------------------


def _table(summaries: list[MethodSummary], target: float) -> str:
    lines = [
        "| optimizer | method | lr | test error, mean +- std | test error per seed | "
        f"epochs to {target:.1%} train error, median [min-max] | diverged (chosen lr / all "
        "runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        per_seed = ", ".join(
            "diverged" if not math.isfinite(t) else f"{t:.2%}" for t in s.test_errors
        )
        lines.append(
            f"| {s.optimizer} | {s.method} | {s.lr:g} | {s.test_error_mean:.2%} +- "
            f"{s.test_error_std:.2%} | {per_seed} | {_range(s.epochs_to_target, '.1f')} | "
            f"{s.diverged}/{s.seeds} / {s.sweep_diverged}/{s.sweep_runs} |"
        )
    return "\n".join(lines)


def _timing_table(summaries: list[MethodSummary]) -> str:
    lines = [
        "| optimizer | method | step time / normal's, median [quartiles] |",
        "|---|---|---|",
    ]
    for s in summaries:
        if s.step_time:
            q1, q2, q3 = _quartiles(s.step_time)
            lines.append(f"| {s.optimizer} | {s.method} | {q2:.2f}x [{q1:.2f}-{q3:.2f}] |")
    return "\n".join(lines)


#: What a smoke test's report (``--quick``) says instead of its verdicts.
SMOKE_TEST = (
    "None: this is a smoke test (`--quick`): too few epochs, seeds and samples for any verdict. "
    "It shows that the pipeline runs end to end; run without `--quick` for the experiment."
)

_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "P"), ("-.", "X")]
_OPTIMIZERS = {"adam": "Adam", "sgd": "SGD + momentum"}


def _log_percent_axis(ax: Any, values: Sequence[float]) -> None:
    """A log error axis with percent labels at 1-2-5 steps that always shows some."""
    from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter

    finite = [v for v in values if math.isfinite(v) and v > 0]
    low = min(finite, default=0.01)
    ax.set_yscale("log")
    ax.set_ylim(10 ** math.floor(math.log10(low) - 1e-9) * 0.9, 1.05)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.3)


def _plot_curves(summaries: list[MethodSummary], result: ComparisonResult, out: Path) -> list[str]:
    plt = pyplot()
    title = result.data["name"].upper() if result.data["name"] == "mnist1d" else result.data["name"]
    title = title.replace("MNIST1D", "MNIST-1D")
    written = []
    for opt in result.config.optimizers:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
        shown: list[float] = []
        for (style, marker), s in zip(
            _STYLES * 2, (s for s in summaries if s.optimizer == opt), strict=False
        ):
            runs = result.runs_of(opt, s.method)
            for ax, key in zip(axes, ("train_error", "test_error"), strict=True):
                curves = [r.curves[key] for r in runs]
                epochs = list(range(1, len(curves[0]) + 1))
                mean = _mean_curve(runs, key)
                lo = [min((c[i] for c in curves), default=math.nan) for i in range(len(mean))]
                hi = [max((c[i] for c in curves), default=math.nan) for i in range(len(mean))]
                shown += mean
                (line,) = ax.plot(
                    epochs, mean, linestyle=style, marker=marker, markersize=3.5,
                    label=f"{s.method} (lr {s.lr:g})",
                )  # fmt: skip
                ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
        for ax, what in zip(axes, ("training error", "test error"), strict=True):
            ax.set_title(f"{what}: mean over seeds, band = min-max", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylabel(what)
            _log_percent_axis(ax, shown)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title}, {_OPTIMIZERS.get(opt, opt)}, each method at its chosen rate")
        fig.tight_layout()
        name = f"curves_{opt}.png"
        atomic_write_bytes(out / name, png(fig))
        written.append(name)
    optimizers = result.config.optimizers
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.8 * len(optimizers), 4.4))
    axes_list = list(axes) if len(optimizers) > 1 else [axes]
    for ax, opt in zip(axes_list, optimizers, strict=True):
        for (style, marker), method in zip(_STYLES * 2, result.config.methods, strict=False):
            rates = sorted(result.config.lr_grid[opt])
            mean = []
            for lr in rates:
                runs = result.runs_of(opt, method, lr)
                mean.append(statistics.fmean(r.score for r in runs))
            (line,) = ax.plot(rates, mean, linestyle=style, marker=marker, label=method)
            for lr in rates:  # diverged runs: a cross at 100%
                runs = result.runs_of(opt, method, lr)
                if any(r.diverged for r in runs):
                    ax.plot([lr], [1.0], marker="x", markersize=9, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation error (mean over the rate's seeds)")
        _log_percent_axis(ax, [0.01])
        ax.set_title(f"learning-rate sweep, {_OPTIMIZERS.get(opt, opt)}\nx: a run diverged "
                     "(scored 100%)", fontsize=10)  # fmt: skip
    axes_list[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(out / "lr_sweep.png", png(fig))
    written.append("lr_sweep.png")
    return written


def _csv(result: ComparisonResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["optimizer", "method", "lr", "seed", "chosen_lr", "epoch", *CURVES])
    for run in result.runs:
        spec = run.spec
        chosen = spec.lr == result.chosen_lr[spec.optimizer][spec.method]
        for epoch in range(len(run.curves["train_error"])):
            writer.writerow(
                [spec.optimizer, spec.method, spec.lr, spec.seed, chosen, epoch + 1,
                 *(run.curves[k][epoch] for k in CURVES)]
            )  # fmt: skip
    return buffer.getvalue()


def write_report(
    result: ComparisonResult,
    out: str | Path,
    *,
    resolved: dict[str, Any] | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Write ``report.md``, ``results.json``, ``results.csv`` and PNG plots into ``out``.

    ``resolved`` (the full resolved configuration, e.g. command-line settings) is stored in
    ``results.json`` beside the comparison config. With ``quick`` the report is labelled a smoke
    test and states no verdicts. Returns the summary written to JSON.
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
        "step_time_ratios": result.step_time_ratios,
        "target_train_error": target,
        "summary": [asdict(s) for s in summaries],
        "runs": [to_json(r) for r in result.runs],
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    atomic_write_text(out / "results.csv", _csv(result))
    cfg = result.config
    threads = (resolved or {}).get("threads", 1)
    workers = (resolved or {}).get("workers")
    methods = "\n".join(f"- `{m}`: {METHODS[m].label}" for m in cfg.methods)
    if quick:
        claims = SMOKE_TEST
    else:
        claims = "\n".join(_claims(summaries, result, target)) or "- (too few methods to check)"
    images = "\n".join(f"![{p}]({p})" for p in plots)
    heading = f"# Weight normalization: {cfg.name}" + (" (smoke test)" if quick else "")
    diverged = sum(r.diverged for r in result.runs)
    # one method's seeds all beating the other's by chance: 1 / C(2n, n) with n seeds each
    by_chance = (
        f"with {_seeds(cfg.seeds)} each, a\ncomplete separation arises by chance with "
        f"probability 1/{math.comb(2 * cfg.seeds, cfg.seeds)}"
    )
    report = f"""{heading}

Data: {result.data["name"]} ({result.data["train"]} train, {result.data["val"]} validation,
{result.data["test"]} test; inputs {tuple(result.data["input_shape"])}). {cfg.epochs} epochs,
batch {cfg.batch_size}; the paper's schedule (momentum/beta1 0.9, then 0.5 with the learning rate
decayed linearly to 0 over the second half). Each method's learning rate: every rate of the grid
trained with seed 0, the {cfg.candidates} best (validation error) trained with {cfg.seeds} seeds,
and the one with the lowest mean validation error over those seeds chosen. Errors are on the test
split. {len(result.runs)} runs, {diverged} of them diverged (scored 100% validation error).

{_table(summaries, target)}

Epochs to target: when a seed's training error (measured during each epoch, with dropout and
input noise on; interpolated between epochs) first reaches {target:.1%}.

## What held and what did not

A claim *held* when every seed of one method beats every seed of the other, *did not hold* when
the reverse is true, and is *inconclusive* when the seeds' ranges overlap ({by_chance}).

{claims}

## Timing (varies from run to run)

A training step (forward, backward, update) relative to the normal parameterization under the
same optimizer, from an interleaved timing pass after training (the parallel runs' own clocks
share the machine and are kept in `results.json` only). Everything else in this report is a
function of the configuration: a rerun reproduces it exactly.

{_timing_table(summaries)}

## Methods

{methods}

## Plots

{images}

Machine: {env["machine"]}, {env["cpus"]} CPUs, torch {env["torch"]}, {threads} torch thread(s)
per run{f", {workers} parallel runs" if workers else ""}; wall time
{result.wall_time_s / 60:.1f} min. Every curve is in `results.json` / `results.csv`.
"""
    atomic_write_text(out / "report.md", report)
    return payload


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"
