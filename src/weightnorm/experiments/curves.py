"""Reports of the paper's further experiments: per-method curves over seeds, a table, claims."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._env import environment
from ._io import atomic_write_bytes, atomic_write_text
from ._stats import finite, nanmean
from .plotting import png, pyplot
from .records import CurveRecord, to_json

__all__ = ["Curve", "write_curves_report"]


@dataclass(frozen=True)
class Curve:
    """One plotted quantity: its key in each record's ``curves``, label, log scale or not."""

    key: str
    label: str
    log: bool = False


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
    *,
    title: str,
    intro: str,
    records: Mapping[str, Sequence[CurveRecord]],
    curves: list[Curve],
    x_key: str,
    x_label: str,
    table: list[str],
    claims: list[str],
    settings: dict[str, Any],
    wall_time_s: float,
    extra_plots: dict[str, bytes] | None = None,
) -> None:
    """Write ``report.md``, ``results.json``, ``results.csv`` and one PNG per curve into ``out``.

    ``records`` maps each method to its runs (records with a ``curves`` dict of equal-length
    lists, ``x_key`` among them); ``table`` is the Markdown table's lines, ``claims`` the
    "what held" bullet lines.
    """
    out = Path(out)
    plots = []
    for curve in curves:
        name = f"{curve.key}.png"
        atomic_write_bytes(out / name, _plot(records, curve, x_key, x_label, title))
        plots.append(name)
    for name, data in (extra_plots or {}).items():
        atomic_write_bytes(out / name, data)
        plots.append(name)
    env = environment()
    atomic_write_text(
        out / "results.json",
        json.dumps(
            {"title": title, "settings": settings, "environment": env,
             "wall_time_s": wall_time_s,
             "runs": {m: [to_json(r) for r in runs] for m, runs in records.items()}},
            indent=1, default=str,
        ),
    )  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = [x_key, *(c.key for c in curves if c.key != x_key)]
    writer.writerow(["method", "seed", *keys])
    for method, runs in records.items():
        for run in runs:
            for i in range(len(run.curves[x_key])):
                writer.writerow([method, run.seed, *(run.curves[k][i] for k in keys)])
    atomic_write_text(out / "results.csv", buffer.getvalue())
    images = "\n".join(f"![{p}]({p})" for p in plots)
    body = "\n".join(table)
    held = "\n".join(claims) or "- (nothing to check)"
    report = (
        f"# {title}\n\n{intro}\n\n{body}\n\n## What held and what did not\n\n{held}\n\n"
        f"## Plots\n\n{images}\n\nMachine: {env['machine']}, {env['cpus']} CPUs, torch "
        f"{env['torch']}; wall time {wall_time_s / 60:.1f} min. Settings and every curve: "
        "`results.json`, `results.csv`.\n"
    )
    atomic_write_text(out / "report.md", report)
