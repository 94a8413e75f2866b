"""The report of a comparison: Markdown, JSON, CSV and PNG plots, each written atomically.

Every claim of the paper is checked as an effect with a 95% interval over seeds and a verdict
from rules fixed before the run (:func:`~weightnorm.experiments._stats.decide`): the effect is
the Hodges-Lehmann shift between the two methods' per-seed values, its interval Moses'
distribution-free interval from the Mann-Whitney null distribution; *no difference larger than
delta* when the interval lies inside the claim's margin, *held* when it lies on the claimed side
of 0, *did not hold* on the other side, *inconclusive* otherwise. The timing claim is one-sided
("at most ``delta_step_time`` slower") on the median of the per-round step-time ratios and its
order-statistic interval. A run that diverged or ended predicting one class for most inputs
*failed to train*: it is counted as never reaching a target (it ranks last) and shown as failed,
never as an ordinary result. A ``--quick`` report is a smoke test: it states no verdicts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ._env import environment
from ._io import atomic_write_bytes, atomic_write_text
from ._stats import (
    ClaimVerdict,
    Interval,
    decide,
    decide_at_most,
    detectable,
    finite,
    median_interval,
    nanmean,
    power_of,
    seeds_for_power,
    shift_interval,
)
from .methods import METHODS
from .plotting import png, pyplot
from .records import to_json
from .runner import CURVES, ComparisonResult, RunRecord

__all__ = [
    "Claim",
    "MethodSummary",
    "Verdict",
    "claims",
    "compare",
    "epochs_to",
    "failure",
    "rewrite_report",
    "summarize",
    "windowed",
    "write_report",
]

_POWER_HEADER = (
    "| optimizer | claim | seed spread (sd) | margin | power at the margin | seeds for 80% "
    "there | detected with 80% power |\n|---|---|---|---|---|---|---|"
)

#: Confidence of every interval in the report.
CONFIDENCE = 0.95

#: The convergence claims' target is rounded up to a multiple of this (a training error).
TARGET_STEP = 0.005


def failure(run: RunRecord, chance_error: float) -> str | None:
    """Why ``run`` failed to train, or ``None``: ``"diverged"``, or ``"at chance"`` when its
    final test error is no better than ``chance_error``, the error of the best constant
    prediction (always the test split's most frequent class). A run that collapsed to a
    constant prediction is always at chance; so is one that learned nothing else.
    """
    if run.diverged:
        return "diverged"
    if run.final["test_error"] >= chance_error:
        return "at chance"
    return None


def _chance(result: ComparisonResult) -> float:
    """The error of the best constant prediction on the test split."""
    return float(result.data["chance_error"])


def windowed(fine: Sequence[float], per_epoch: int) -> list[float]:
    """The training curve over a trailing window of one epoch, at each of its fine points
    (a partial window during the first epoch; NaN once a value in the window is NaN).

    Example::

        >>> windowed([4.0, 2.0, 1.0, 1.0], 2)
        [4.0, 3.0, 1.5, 1.0]
    """
    out = []
    for j in range(len(fine)):
        window = fine[max(0, j - per_epoch + 1) : j + 1]
        ok = all(math.isfinite(v) for v in window)
        out.append(statistics.fmean(window) if ok else math.nan)
    return out


@dataclass
class MethodSummary:
    """One method under one optimizer, over its runs at the chosen learning rate."""

    optimizer: str
    method: str
    lr: float
    seeds: int
    failed: dict[str, int]  # reason -> runs at the chosen rate that failed to train
    sweep_runs: int  # every run of this method and optimizer (sweep and candidates)
    sweep_diverged: int
    test_errors: list[float]  # per seed (NaN: diverged)
    test_error: Interval | None  # median over the seeds that trained, None if none did
    mean_train_loss: Interval | None  # the training-loss curve's mean over the run
    step_time: list[float]  # per-round ratios to the normal parameterization (may be empty)

    @property
    def trained(self) -> int:
        """Seeds at the chosen rate that trained."""
        return self.seeds - sum(self.failed.values())


def epochs_to(curve: Sequence[float], target: float, per_epoch: int = 1) -> float:
    """Epochs until ``curve`` (``per_epoch`` points per epoch, the first at ``1/per_epoch``)
    first reaches ``target``, linearly interpolated between points; ``inf`` if it never does.

    Example::

        >>> epochs_to([0.5, 0.3, 0.1], 0.2)
        2.5
        >>> epochs_to([0.5, 0.3, 0.1], 0.2, per_epoch=2)
        1.25
        >>> epochs_to([0.5, float("nan")], 0.2)
        inf
    """
    for i, value in enumerate(curve):
        if math.isfinite(value) and value <= target:
            before = curve[i - 1] if i > 0 else math.nan
            if not math.isfinite(before) or before == value:
                return (i + 1) / per_epoch
            return (i + (before - target) / (before - value)) / per_epoch
    return math.inf


def _bad(value: float) -> float:
    """A non-finite value (a diverged run's NaN) as the worst one, ``inf``."""
    return value if math.isfinite(value) else math.inf


#: The outcome of a claim "A beats B" on per-seed values (:func:`compare`).
Verdict = Literal["held", "did not hold", "inconclusive"]


def compare(a: Sequence[float], b: Sequence[float]) -> Verdict:
    """Does ``a`` beat ``b`` (lower is better; NaN counts as worst) on every pair of seeds?
    (The further experiments' rule; the main job's is :func:`claims`.)

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


def _trained(runs: Sequence[RunRecord], chance_error: float) -> list[RunRecord]:
    return [r for r in runs if failure(r, chance_error) is None]


def _fine_error(run: RunRecord) -> list[float]:
    return windowed(run.fine["train_error"], run.fine_per_epoch)


def _interval(values: Sequence[float]) -> Interval | None:
    kept = finite(values)
    return median_interval(kept, CONFIDENCE) if kept else None


def summarize(result: ComparisonResult) -> list[MethodSummary]:
    """Per optimizer and method: errors over seeds, failures, the mean training loss, timing."""
    summaries = []
    chance = _chance(result)
    for opt in result.config.optimizers:
        for method in result.config.methods:
            runs = result.runs_of(opt, method)
            trained = _trained(runs, chance)
            every = [r for r in result.runs if r.spec.optimizer == opt and r.spec.method == method]
            failed: dict[str, int] = {}
            for r in runs:
                reason = failure(r, chance)
                if reason:
                    failed[reason] = failed.get(reason, 0) + 1
            summaries.append(
                MethodSummary(
                    optimizer=opt,
                    method=method,
                    lr=result.chosen_lr[opt][method],
                    seeds=len(runs),
                    failed=failed,
                    sweep_runs=len(every),
                    sweep_diverged=sum(r.diverged for r in every),
                    test_errors=[r.final["test_error"] for r in runs],
                    test_error=_interval([r.final["test_error"] for r in trained]),
                    mean_train_loss=_interval([nanmean(r.fine["train_loss"]) for r in trained]),
                    step_time=result.step_time_ratios.get(opt, {}).get(method, []),
                )
            )
    return summaries


# --- claims ------------------------------------------------------------------------------------


@dataclass
class Claim:
    """One of the paper's claims under one optimizer, checked on this run.

    The effect is ``a - b`` in the claim's measure (lower is better: the claim is that ``a``
    is lower), with its interval and the margin ``delta`` of the verdict; ``unit`` names how
    effects are shown (``"epochs"``, ``"pp"``: percentage points, ``"%"``: relative).
    """

    optimizer: str
    title: str
    measure: str
    a: str
    b: str
    a_values: list[float]
    b_values: list[float]
    effect: Interval
    delta: float
    unit: str
    verdict: ClaimVerdict
    rule: str  # "shift" (two methods' seeds) or "at most" (one-sided, a median ratio)
    note: str = ""


def _fmt(value: float, unit: str, sign: bool = True) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return ("+" if value > 0 else "-") + "inf" if sign else "inf"
    plus = "+" if sign else ""
    if unit == "epochs":
        return f"{value:{plus}.2f}"
    if unit == "pp":
        return f"{100 * value:{plus}.2f} pp"
    return f"{100 * value:{plus}.1f}%"


def effect_text(claim: Claim) -> str:
    """``estimate [low, high]`` in the claim's unit."""
    e, u = claim.effect, claim.unit
    return f"{_fmt(e.estimate, u)} [{_fmt(e.low, u)}, {_fmt(e.high, u)}]"


def delta_text(claim: Claim) -> str:
    """The claim's margin in its unit."""
    if claim.unit == "epochs":
        return f"{claim.delta:g} epoch" + ("s" if claim.delta != 1 else "")
    return _fmt(claim.delta, claim.unit, sign=False)


def verdict_text(claim: Claim) -> str:
    """The verdict with the margin spelled out."""
    if claim.verdict == "no difference larger than delta":
        return f"no difference larger than {delta_text(claim)}"
    return claim.verdict


def _shift_claim(
    opt: str, title: str, measure: str, a: str, b: str, av: list[float], bv: list[float],
    delta: float, unit: str, note: str = "",
) -> Claim:  # fmt: skip
    av, bv = [_bad(v) for v in av], [_bad(v) for v in bv]
    if not finite(av) and not finite(bv):  # two failures tie: that is no evidence of equality
        nothing = Interval(math.nan, -math.inf, math.inf, 1.0)
        note = f"neither {a} nor {b} trained on any seed: nothing to compare" + (
            f"; {note}" if note else ""
        )
        return Claim(opt, title, measure, a, b, av, bv, nothing, delta, unit, "inconclusive",
                     "shift", note)  # fmt: skip
    effect = shift_interval(av, bv, CONFIDENCE)
    return Claim(opt, title, measure, a, b, av, bv, effect, delta, unit,
                 decide(effect, delta), "shift", note)  # fmt: skip


def _best_claim(
    opt: str, title: str, measure: str, claimant: str, values: dict[str, list[float]],
    delta: float, unit: str, note: str,
) -> Claim | None:  # fmt: skip
    """ "``claimant`` is the lowest", against every other method at once (an intersection-union
    test: every comparison must agree, so no multiplicity correction is needed). With each
    effect ``claimant - other`` and its interval: *did not hold* if some interval lies above 0
    (a method beats it), *held* if every interval lies below 0 (it beats them all), *no
    difference larger than delta* if every interval lies below ``delta`` (none beats it by more
    than the margin: it ties the best), *inconclusive* otherwise. The effect shown is the
    deciding comparison: the one closest to changing the verdict."""
    others = [m for m in values if m != claimant]
    if claimant not in values or not others:
        return None
    each = {
        m: _shift_claim(opt, title, measure, claimant, m, values[claimant], values[m], delta, unit)
        for m in others
    }
    lows = {m: c.effect.low for m, c in each.items()}
    highs = {m: c.effect.high for m, c in each.items()}
    if any(low > 0 for low in lows.values()):
        verdict: ClaimVerdict = "did not hold"
        decider = max(lows, key=lambda m: (lows[m], m))  # the clearest winner over it
    else:
        decider = max(highs, key=lambda m: (highs[m], m))  # the closest to beating it
        top = highs[decider]
        verdict = (
            "held" if top < 0 else "no difference larger than delta" if top < delta
            else "inconclusive"
        )  # fmt: skip
    shown = each[decider]
    every = "; ".join(f"{m}: {effect_text(c)}" for m, c in each.items())
    shown.verdict = verdict
    shown.note = (
        f"against every other method at once, shown against the deciding one ({every}); {note}"
    )
    return shown


def _convergence(
    opt: str, title: str, a: str, b: str, runs: dict[str, list[RunRecord]], delta: float,
    chance: float,
) -> Claim | None:  # fmt: skip
    """A convergence claim: epochs to a target that every trained seed of ``a`` and ``b``
    reaches (failed seeds never do), with the mean training loss as a second measure."""
    if a not in runs or b not in runs:
        return None
    kept = _trained(runs[a] + runs[b], chance)
    if not kept:
        never = {m: [math.inf] * len(runs[m]) for m in (a, b)}
        return _shift_claim(opt, title, "epochs to a target training error", a, b, never[a],
                            never[b], delta, "epochs")  # fmt: skip
    worst = max(min(finite(_fine_error(r))) for r in kept)
    target = math.ceil(worst / TARGET_STEP - 1e-9) * TARGET_STEP
    failed_runs = {m: [failure(r, chance) is not None for r in runs[m]] for m in (a, b)}
    values = {
        m: [
            math.inf if bad else epochs_to(_fine_error(r), target, r.fine_per_epoch)
            for r, bad in zip(runs[m], failed_runs[m], strict=True)
        ]
        for m in (a, b)
    }
    # the area under the training-loss curve: a diverged run's is unbounded
    loss = {m: [math.inf if r.diverged else nanmean(r.fine["train_loss"]) for r in runs[m]]
            for m in (a, b)}  # fmt: skip
    auc = shift_interval(loss[a], loss[b], CONFIDENCE)
    failed = [
        f"{sum(failed_runs[m])} of {len(runs[m])} seeds of {m} failed to train (never reach it)"
        for m in (a, b)
        if any(failed_runs[m])
    ]
    note = (
        f"target: {target:.1%} training error (one epoch's running mean), the highest any "
        f"trained seed of the two needs{''.join('; ' + f for f in failed)}; mean training loss "
        f"over the run, {a} - {b}: {auc.estimate:+.3f} [{auc.low:+.3f}, {auc.high:+.3f}]"
    )
    measure = f"epochs to {target:.1%} training error"
    return _shift_claim(opt, title, measure, a, b, values[a], values[b], delta,
                        "epochs", note)  # fmt: skip


def claims(result: ComparisonResult) -> list[Claim]:
    """The paper's claims, each checked on ``result`` (:class:`Claim`), in report order."""
    cfg = result.config
    out: list[Claim] = []
    early = max(1, cfg.epochs // 4)
    delta_epochs = cfg.delta_epochs * cfg.epochs
    chance = _chance(result)
    for opt in cfg.optimizers:
        runs = {m: result.runs_of(opt, m) for m in cfg.methods}
        found = [
            _convergence(opt, "weight norm speeds up convergence", "wn-init", "normal-init",
                         runs, delta_epochs, chance),
            _convergence(opt, "data-dependent init speeds up weight norm", "wn-init", "wn",
                         runs, delta_epochs, chance),
            _best_claim(
                opt, "WN + mean-only BN gives the best test error", "test error", "wn-mobn",
                {m: [r.final["test_error"] for r in runs[m]] for m in runs},
                cfg.delta_test_error, "pp",
                "paper, CIFAR-10: 7.31% vs 8.05% batch norm, 8.43% normal parameterization",
            ),
            _best_claim(
                opt, "batch norm has the lowest training error early",
                f"training error in epoch {early}", "bn",
                {m: [r.curves["train_error"][early - 1] for r in runs[m]] for m in runs},
                cfg.delta_train_error, "pp", "the training error as trained (dropout and noise on)",
            ),
        ]  # fmt: skip
        ratios = result.step_time_ratios.get(opt, {})
        base = next((m for m in ("normal-init", "normal") if m in ratios), "")
        if ratios.get("wn-init") and base:  # (else the timing pass had no unnormalized baseline)
            slower = [r - 1 for r in ratios["wn-init"]]
            effect = median_interval(slower, CONFIDENCE)
            found.append(
                Claim(
                    opt, "weight norm is not noticeably slower",
                    f"training step time, wn-init / {base} - 1",
                    "wn-init", base, slower, [], effect, cfg.delta_step_time, "%",
                    decide_at_most(effect, cfg.delta_step_time), "at most",
                    f"median of {len(slower)} interleaved timing rounds; held when the "
                    f"interval lies below +{cfg.delta_step_time:.0%}; timings vary from run "
                    "to run",
                )
            )  # fmt: skip
        out += [c for c in found if c is not None]
    return out


def _power_rows(found: Sequence[Claim], seeds: int) -> list[str]:
    """Per two-method claim: the seeds' spread in its measure (pooled standard deviation of the
    finite values), the power at its margin with the seeds run, the seeds for 80%, and the
    difference the seeds run detect with 80% power."""
    rows = []
    for c in found:
        if c.rule != "shift":
            continue
        spreads = [statistics.stdev(v) for v in (finite(c.a_values), finite(c.b_values))
                   if len(v) > 1]  # fmt: skip
        if not spreads:
            continue
        sd = math.sqrt(statistics.fmean(s**2 for s in spreads))
        shown = _fmt(sd, c.unit, sign=False)
        detected = _fmt(detectable(sd, seeds), c.unit, sign=False)
        rows.append(
            f"| {c.optimizer} | {c.title} | {shown} | {delta_text(c)} | "
            f"{power_of(sd, c.delta, seeds):.2f} | {seeds_for_power(sd, c.delta)} | {detected} |"
        )
    return rows


# --- writing -----------------------------------------------------------------------------------


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


def _median_text(iv: Interval | None, fmt: Callable[[float], str]) -> str:
    if iv is None:
        return "-"
    if math.isinf(iv.low) and math.isinf(iv.high):
        return f"{fmt(iv.estimate)} (too few seeds for an interval)"
    return f"{fmt(iv.estimate)} [{fmt(iv.low)}, {fmt(iv.high)}]"


def _status(s: MethodSummary) -> str:
    if not s.failed:
        return f"{s.seeds} of {s.seeds}"
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(s.failed.items()))
    return f"**{s.trained} of {s.seeds}** ({why})"


def _table(summaries: list[MethodSummary]) -> str:
    lines = [
        "| optimizer | method | lr | seeds that trained | test error, median [95% CI] | "
        "mean training loss, median [95% CI] | runs diverged (all rates) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if s.trained == 0:
            test = loss = "failed to train"
        else:
            test = _median_text(s.test_error, lambda v: f"{v:.2%}")
            loss = _median_text(s.mean_train_loss, lambda v: f"{v:.3f}")
        lines.append(
            f"| {s.optimizer} | {s.method} | {s.lr:g} | {_status(s)} | {test} | {loss} | "
            f"{s.sweep_diverged} of {s.sweep_runs} |"
        )
    return "\n".join(lines)


def _claims_table(found: Sequence[Claim]) -> str:
    lines = [
        "| optimizer | claim | measure | effect [95% CI] | margin | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in found:
        vs = f"{c.a} - {c.b}" if c.rule == "shift" else c.a
        lines.append(
            f"| {c.optimizer} | {c.title} | {c.measure} ({vs}) | {effect_text(c)} | "
            f"{delta_text(c)} | **{verdict_text(c)}** |"
        )
    return "\n".join(lines)


def _claim_notes(found: Sequence[Claim]) -> str:
    return "\n".join(f"- **{c.optimizer}: {c.title}**: {c.note}." for c in found if c.note)


def _timing_table(summaries: list[MethodSummary]) -> str:
    lines = [
        "| optimizer | method | step time / normal's, median [95% CI] |",
        "|---|---|---|",
    ]
    for s in summaries:
        if s.step_time:
            iv = median_interval(s.step_time, CONFIDENCE)
            lines.append(
                f"| {s.optimizer} | {s.method} | {iv.estimate:.2f}x [{iv.low:.2f}, {iv.high:.2f}] |"
            )
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
            runs = _trained(result.runs_of(opt, s.method), _chance(result))
            if not runs:  # failed on every seed: named in the legend, no curve
                why = _status(s).replace("**", "")
                axes[0].plot([], [], linestyle=":", color="0.5",
                             label=f"{s.method}: failed to train ({why})")  # fmt: skip
                continue
            label = f"{s.method} (lr {s.lr:g})" + (
                f", {s.seeds - s.trained} of {s.seeds} failed" if s.failed else ""
            )
            per_epoch = runs[0].fine_per_epoch
            for ax, key in zip(axes, ("train_error", "test_error"), strict=True):
                if key == "train_error":  # one epoch's running mean, at its fine points
                    curves = [_fine_error(r) for r in runs]
                    x = [(j + 1) / per_epoch for j in range(len(curves[0]))]
                    every = per_epoch
                else:
                    curves = [r.curves[key] for r in runs]
                    x = [float(j + 1) for j in range(len(curves[0]))]
                    every = 1
                mean = [nanmean([c[i] for c in curves]) for i in range(len(x))]
                lo = [min(c[i] for c in curves) for i in range(len(x))]
                hi = [max(c[i] for c in curves) for i in range(len(x))]
                shown += mean
                (line,) = ax.plot(
                    x, mean, linestyle=style, marker=marker, markersize=3.5, markevery=every,
                    label=label,
                )  # fmt: skip
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
        for ax, what in zip(axes, ("training error (one epoch's running mean)", "test error"),
                            strict=True):  # fmt: skip
            ax.set_title(f"{what}:\nmean over the seeds that trained, band = min-max",
                         fontsize=10)  # fmt: skip
            ax.set_xlabel("epoch")
            ax.set_ylabel(what.split(" (")[0])
            _log_percent_axis(ax, shown)
        axes[0].legend(fontsize=7)
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


def _plot_effects(found: Sequence[Claim], out: Path) -> list[str]:
    """Every claim's effect and interval in units of its margin: the shaded band is "no
    difference larger than the margin", left of 0 the claimed side."""
    if not found:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(found) + 1.4))
    limit = 8.0
    for row, c in enumerate(reversed(found)):
        # the timing claim is one-sided at +delta: shift it so that its threshold sits at 0
        shift = -1.0 if c.rule == "at most" else 0.0
        e = c.effect
        lo, mid, hi = (max(-limit, min(limit, v / c.delta + shift))
                       for v in (e.low, e.estimate, e.high))  # fmt: skip
        ax.plot([lo, hi], [row, row], color="C0", linewidth=2)
        ax.plot([mid], [row], marker="o", color="C0")
        for v, end in ((e.low, lo), (e.high, hi)):
            if math.isinf(v) or abs(v / c.delta + shift) > limit:
                ax.annotate("", xy=(end, row), xytext=(end - 0.3 * math.copysign(1, end), row),
                            arrowprops={"arrowstyle": "->", "color": "C0"})  # fmt: skip
        ax.text(limit + 0.4, row, verdict_text(c), va="center", fontsize=8)
    ax.axvspan(-1, 1, color="0.85", zorder=0)
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_yticks(range(len(found)))
    ax.set_yticklabels([f"{c.optimizer}: {c.title}" for c in reversed(found)], fontsize=8)
    ax.set_xlim(-limit, limit)
    ax.set_xlabel("effect / margin (negative: the claimed side; shaded: within the margin)")
    ax.set_title("each claim's effect with its 95% interval, in units of its margin\n(the "
                 "timing claim: slowdown / margin - 1, held left of 0)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    atomic_write_bytes(out / "effects.png", png(fig))
    return ["effects.png"]


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
    summaries = summarize(result)
    found = [] if quick else claims(result)
    plots = _plot_effects(found, out) + _plot_curves(summaries, result, out)
    env = environment()
    payload = {
        "config": asdict(result.config),
        "resolved": resolved or {},
        "data": result.data,
        "environment": env,
        "wall_time_s": result.wall_time_s,
        "chosen_lr": result.chosen_lr,
        "step_time_ratios": result.step_time_ratios,
        "loaded_runs": result.loaded_runs,
        "summary": [asdict(s) for s in summaries],
        "claims": [asdict(c) for c in found],
        "runs": [to_json(r) for r in result.runs],
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    atomic_write_text(out / "results.csv", _csv(result))
    cfg = result.config
    threads = (resolved or {}).get("threads", 1)
    workers = (resolved or {}).get("workers")
    methods = "\n".join(f"- `{m}`: {METHODS[m].label}" for m in cfg.methods)
    images = "\n".join(f"![{p}]({p})" for p in plots)
    heading = f"# Weight normalization: {cfg.name}" + (" (smoke test)" if quick else "")
    diverged = sum(r.diverged for r in result.runs)
    search = min(cfg.search_seeds, cfg.seeds)
    loaded = (
        f" ({result.loaded_runs} of {len(result.runs)} runs read back from an earlier "
        "execution's records)"
        if result.loaded_runs
        else ""
    )
    if quick:
        verdicts = SMOKE_TEST
    elif not found:
        verdicts = "- (too few methods to check)"
    else:
        counts = {v: sum(verdict_text(c) == v for c in found)
                  for v in dict.fromkeys(verdict_text(c) for c in found)}  # fmt: skip
        tally = ", ".join(f"{n} {v}" for v, n in counts.items())
        power = "\n".join(_power_rows(found, cfg.seeds))
        verdicts = f"""{_claims_table(found)}

{len(found)} claims: {tally}.

How to read it: the effect is the first method's value minus the second's in the claim's
measure (negative: the claimed side), the Hodges-Lehmann estimate (the median of all
{cfg.seeds} x {cfg.seeds} pairwise differences between the two methods' seeds) with its 95%
interval (Moses' distribution-free interval from the Mann-Whitney distribution: no assumption of
normal errors; a run that failed to train counts as never reaching the target and ranks last).
The rules, fixed before the run: **no difference larger than the margin** when the interval lies
inside (-margin, +margin) (an equivalence test; it comes first: an interval that bounds the
difference below what matters says so whatever its sign), **held** when it lies below 0,
**did not hold** when it lies above 0, **inconclusive** otherwise. A claim that one method is
the best is checked against every other method at once: **did not hold** if one beats it,
**held** if it beats every one, **no difference larger than the margin** if none beats it by
more than the margin (it ties the best), and the effect shown is the deciding comparison. The
timing claim is one-sided:
**held** when the interval of the median slowdown (order statistics of the timing rounds) lies
below its margin, **did not hold** above it. Margins: {cfg.delta_epochs:.0%} of the
{cfg.epochs} epochs for convergence, {cfg.delta_test_error * 100:g} percentage points for test
error (about two binomial standard errors of a 1.5% error on a 2,000-example test split: a
smaller difference is one the split itself cannot resolve), {cfg.delta_train_error * 100:g}
point(s) for training error, {cfg.delta_step_time:.0%} for step time.

{_claim_notes(found)}

### Power

The seeds' spread in each claim's measure (pooled standard deviation of the two methods'
finite values, from this run), and what it implies for {cfg.seeds} seeds per method (two-sided
5%; the normal approximation divided by the rank method's efficiency 3/pi): the probability of
detecting a true difference of one margin, the seeds that 80% would take, and the difference
that {cfg.seeds} seeds detect with 80% power. Power is the chance of *finding* a difference:
a *held* or *did not hold* is a significant result whatever it was; low power shows where an
*inconclusive* may come from, and how far an equivalence can be trusted.

{_POWER_HEADER}
{power}"""
    report = f"""{heading}

Data: {result.data["name"]} ({result.data["train"]} train, {result.data["val"]} validation,
{result.data["test"]} test; inputs {tuple(result.data["input_shape"])}). {cfg.epochs} epochs,
batch {cfg.batch_size}; the paper's schedule (momentum/beta1 0.9, then 0.5 with the learning rate
decayed linearly to 0 over the second half). Each method's learning rate: every rate of the grid
trained with seed 0, the {cfg.candidates} best (validation error) trained with {_seeds(search)},
and the largest whose mean validation error over those seeds is within
{cfg.lr_tolerance * 100:g} points of the lowest chosen (smaller differences are below what the
validation split resolves); {cfg.seeds} seeds in all at the chosen rate. Errors are on the
test split. {len(result.runs)} runs, {diverged} of them diverged.

## The paper's claims

{verdicts}

## Each method

At its chosen learning rate; medians over the seeds that trained, with their 95% intervals
(order statistics). A seed *failed to train* when it diverged or ended no better than chance:
a test error of at least {_chance(result):.2%}, the best constant prediction's (its most
frequent class); a run that collapsed to a constant prediction is one.

{_table(summaries)}

## Timing (varies from run to run)

A training step (forward, backward, update) relative to the normal parameterization under the
same optimizer, from an interleaved timing pass after training (the parallel runs' own clocks
share the machine and are kept in `results.json` only). Everything else in this report is a
function of the configuration and the number of torch threads: a rerun reproduces it exactly.

{_timing_table(summaries)}

## Methods

{methods}

## Plots

{images}

Machine: {env["machine"]}, {env["cpus"]} CPUs, torch {env["torch"]}, {threads} torch thread(s)
per run{f", {workers} parallel runs" if workers else ""}; wall time
{result.wall_time_s / 60:.1f} min{loaded}. Every curve is in `results.json` / `results.csv`.
"""
    atomic_write_text(out / "report.md", report)
    return payload


def rewrite_report(out: str | Path) -> dict[str, Any]:
    """Write ``out``'s report again from its ``results.json`` with this version's analysis:
    the same runs, step times and wall time, nothing trained or timed (e.g. after an upgrade
    changed the statistics). Returns what :func:`write_report` returns.

    Example::

        >>> rewrite_report("results/mnist1d")  # doctest: +SKIP
    """
    from .records import from_json
    from .runner import ComparisonConfig

    payload = json.loads((Path(out) / "results.json").read_text())
    config = dict(payload["config"])
    config["lr_grid"] = {k: tuple(v) for k, v in config["lr_grid"].items()}
    for key in ("optimizers", "methods"):
        config[key] = tuple(config[key])
    result = ComparisonResult(
        config=ComparisonConfig(**config),
        runs=[from_json(RunRecord, r) for r in payload["runs"]],
        chosen_lr=payload["chosen_lr"],
        data=payload["data"],
        wall_time_s=payload["wall_time_s"],
        step_time_ratios=payload["step_time_ratios"],
        loaded_runs=payload.get("loaded_runs", 0),
    )
    resolved = payload.get("resolved") or {}
    return write_report(result, out, resolved=resolved, quick=bool(resolved.get("quick")))


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"
