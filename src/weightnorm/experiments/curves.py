"""The paper's further experiments: their runs over methods and seeds, and their reports
(per-method curves over seeds, a table, claims).

Each experiment module supplies a ``run(job, settings)`` returning one record and a
``report(records, settings)`` returning a :class:`CurvesReport`; :func:`run_experiment` does the
rest, the same for every one of them.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ._env import environment
from ._io import atomic_write_bytes, atomic_write_text
from ._stats import finite, mean_std, nanmean
from .jobs import Progress, run_method_seeds
from .plotting import png, pyplot
from .records import CurveRecord, to_json
from .report import SMOKE_TEST, Verdict, compare

__all__ = [
    "Curve",
    "CurvesReport",
    "beats",
    "over_seeds",
    "per_seed",
    "run_experiment",
    "write_curves_report",
]

R = TypeVar("R", bound=CurveRecord)


@dataclass(frozen=True)
class Curve:
    """One plotted quantity: its key in each record's ``curves``, label, log scale or not."""

    key: str
    label: str
    log: bool = False


@dataclass(frozen=True)
class CurvesReport:
    """What an experiment reports on its records (``report.md``'s title, introduction, table and
    "what held" bullet lines; one plot per curve, against ``x_key``), and the summary
    :func:`run_experiment` returns."""

    title: str
    intro: str
    curves: list[Curve]
    x_key: str
    x_label: str
    table: list[str]
    claims: list[str]
    summary: dict[str, Any]
    extra_plots: dict[str, bytes] = field(default_factory=dict)


def per_seed(
    records: Mapping[str, Sequence[R]], value: Callable[[R], float]
) -> dict[str, list[float]]:
    """Per method, ``value(record)`` of each of its seeds."""
    return {m: [value(r) for r in runs] for m, runs in records.items()}


def over_seeds(values: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, float]]:
    """Per method, the mean and standard deviation of its per-seed ``values``."""
    return {m: mean_std(v) for m, v in values.items()}


def beats(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool = False) -> Verdict:
    """Whether the method with per-seed values ``a`` beats the one with ``b``: the main job's
    rule (:func:`~weightnorm.experiments.report.compare`: *held* when every seed of ``a`` beats
    every seed of ``b``, *did not hold* when the reverse is true, *inconclusive* otherwise; NaN
    counts as the worst value).

    Example::

        >>> beats([-19.3, -19.2], [-19.5, -19.4], higher_is_better=True)
        'held'
    """
    if higher_is_better:
        return compare([-v for v in a], [-v for v in b])
    return compare(a, b)


def _band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    n = max(len(c) for c in curves)
    mean, lo, hi = [], [], []
    for i in range(n):
        column = finite(c[i] for c in curves if i < len(c))
        mean.append(nanmean(column))
        lo.append(min(column, default=math.nan))
        hi.append(max(column, default=math.nan))
    return mean, lo, hi


def _plot(
    records: Mapping[str, Sequence[CurveRecord]], curve: Curve, x_key: str, x_label: str, title: str
) -> bytes:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs in records.items():
        curves = [r.curves[curve.key] for r in runs]
        xs = runs[0].curves[x_key]
        mean, lo, hi = _band(curves)
        (line,) = ax.plot(xs[: len(mean)], mean, label=method)
        ax.fill_between(xs[: len(mean)], lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if curve.log:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(curve.label)
    ax.set_title(f"{title}: {curve.label}\n(mean over seeds; band = min-max)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def write_curves_report(
    out: str | Path,
    content: CurvesReport,
    records: Mapping[str, Sequence[CurveRecord]],
    *,
    settings: dict[str, Any],
    wall_time_s: float,
    smoke: bool = False,
) -> None:
    """Write ``report.md``, ``results.json``, ``results.csv`` and one PNG per curve into ``out``.

    ``records`` maps each method to its runs (records with a ``curves`` dict of equal-length
    lists, ``content.x_key`` among them). A ``smoke`` test's report (``--quick``) is labelled
    so and states no verdicts.
    """
    out = Path(out)
    plots = []
    for curve in content.curves:
        name = f"{curve.key}.png"
        plot = _plot(records, curve, content.x_key, content.x_label, content.title)
        atomic_write_bytes(out / name, plot)
        plots.append(name)
    for name, data in content.extra_plots.items():
        atomic_write_bytes(out / name, data)
        plots.append(name)
    env = environment()
    atomic_write_text(
        out / "results.json",
        json.dumps(
            {"title": content.title, "settings": settings, "environment": env,
             "wall_time_s": wall_time_s,
             "runs": {m: [to_json(r) for r in runs] for m, runs in records.items()}},
            indent=1, default=str,
        ),
    )  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    x_key = content.x_key
    keys = [x_key, *(c.key for c in content.curves if c.key != x_key)]
    writer.writerow(["method", "seed", *keys])
    for method, runs in records.items():
        for run in runs:
            for i in range(len(run.curves[x_key])):
                writer.writerow([method, run.seed, *(run.curves[k][i] for k in keys)])
    atomic_write_text(out / "results.csv", buffer.getvalue())
    images = "\n".join(f"![{p}]({p})" for p in plots)
    body = "\n".join(content.table)
    held = SMOKE_TEST if smoke else "\n".join(content.claims) or "- (nothing to check)"
    rule = (
        "A claim that one method beats another *held* when every seed of the one beats every "
        "seed of the other, *did not hold* when the reverse is true, and is *inconclusive* when "
        "the seeds' ranges overlap."
    )
    report = (
        f"# {content.title}{' (smoke test)' if smoke else ''}\n\n{content.intro}\n\n{body}\n\n"
        f"## What held and what did not\n\n{rule}\n\n{held}\n\n"
        f"## Plots\n\n{images}\n\nMachine: {env['machine']}, {env['cpus']} CPUs, torch "
        f"{env['torch']}; wall time {wall_time_s / 60:.1f} min. Settings and every curve: "
        "`results.json`, `results.csv`.\n"
    )
    atomic_write_text(out / "report.md", report)


def run_experiment(
    out: str | Path,
    experiment: str,
    settings: Any,
    run: Callable[..., R],
    record_type: type[R],
    methods: Sequence[str],
    report: Callable[[dict[str, list[R]], Any], CurvesReport],
    *,
    context: dict[str, Any] | None = None,
    workers: int = 1,
    threads: int = 1,
    progress: Progress | None = None,
    smoke: bool = False,
) -> dict[str, Any]:
    """Run a further experiment and write its report into ``out``; returns its summary.

    Every (method, seed), ``settings.seeds`` seeds of each of ``methods``, runs as
    ``run(job, settings=settings)`` through :func:`~.jobs.run_method_seeds` (resumable,
    ``workers`` processes of ``threads`` torch threads), keyed on the experiment's name, its
    ``settings`` (a frozen dataclass) and ``context`` (anything else its records depend on,
    e.g. the data's fingerprint); ``report(records, settings)`` says what to write (a ``smoke``
    test's report: no verdicts).
    """
    start = time.perf_counter()
    records = run_method_seeds(
        out,
        functools.partial(run, settings=settings),
        record_type,
        methods,
        settings.seeds,
        {"experiment": experiment, "settings": asdict(settings), **(context or {})},
        workers=workers,
        threads=threads,
        progress=progress,
    )
    content = report(records, settings)
    write_curves_report(
        out,
        content,
        records,
        settings=asdict(settings),
        wall_time_s=time.perf_counter() - start,
        smoke=smoke,
    )
    return content.summary
