"""An LSTM classifier reading MNIST-1D as a sequence: normal versus weight norm (paper, 5.4).

An LSTM reads MNIST-1D as a sequence of 40 scalars, with weight norm on its input and recurrent
weights and on the output layer (as the paper did in DRAW), and standard initialization for the
recurrent weights (the paper's data-dependent init does not apply to RNNs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import weightnorm as wn

from .curves import Curve, CurvesReport, beats, over_seeds, per_seed, run_experiment
from .data import mnist1d
from .jobs import MethodSeed, Progress
from .records import CurveRecord
from .runner import set_paper_schedule

__all__ = ["QUICK", "RecurrentSettings", "SequenceClassifier", "run_recurrent"]


@dataclass(frozen=True)
class RecurrentSettings:
    """Budget of the recurrent experiment."""

    epochs: int = 30
    hidden: int = 64
    samples: int = 10_000
    batch_size: int = 100
    lr: float = 3e-3  # Adam under the paper's schedule
    seeds: int = 3


QUICK = RecurrentSettings(epochs=2, hidden=8, samples=1000, seeds=2)


class SequenceClassifier(nn.Module):
    """An LSTM over a ``(batch, length)`` sequence of scalars; the last state classifies."""

    def __init__(self, hidden: int, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        states, _ = self.lstm(x.reshape(x.shape[0], -1, 1))  # (batch, length, hidden)
        return self.head(states[:, -1])  # type: ignore[no-any-return]


def _error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) != y).float().mean())


def _run_recurrent(job: MethodSeed, settings: RecurrentSettings) -> CurveRecord:
    data = mnist1d(num_samples=settings.samples)
    torch.manual_seed(job.seed)
    gen = torch.Generator().manual_seed(job.seed)
    model = SequenceClassifier(settings.hidden)
    if job.method == "wn":
        wn.apply_weight_norm(model, recurrent=True)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    n = len(data.train)
    steps = math.ceil(n / settings.batch_size)
    curves: dict[str, list[float]] = {"epoch": [], "train_error": [], "test_error": []}
    for epoch in range(settings.epochs):
        perm = torch.randperm(n, generator=gen)
        wrong = 0.0
        for i in range(steps):
            set_paper_schedule(opt, "adam", settings.lr, epoch * steps + i, settings.epochs * steps)
            idx = perm[i * settings.batch_size : (i + 1) * settings.batch_size]
            out = model(data.train.x[idx])
            loss = nn.functional.cross_entropy(out, data.train.y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            wrong += float((out.argmax(1) != data.train.y[idx]).sum())
        curves["epoch"].append(float(epoch + 1))
        curves["train_error"].append(wrong / n)
        curves["test_error"].append(_error(model, data.test.x, data.test.y))
    return CurveRecord(job.method, job.seed, curves)


def run_recurrent(
    out: str | Path,
    settings: RecurrentSettings | None = None,
    *,
    workers: int = 1,
    threads: int = 1,
    progress: Progress | None = None,
    smoke: bool = False,
) -> dict[str, Any]:
    """Normal versus weight norm on an LSTM over MNIST-1D; writes the report into ``out``."""
    return run_experiment(
        out,
        "recurrent",
        settings or RecurrentSettings(),
        _run_recurrent,
        CurveRecord,
        ("normal", "wn"),
        _report,
        workers=workers,
        threads=threads,
        progress=progress,
        smoke=smoke,
    )


def _report(records: dict[str, list[CurveRecord]], settings: RecurrentSettings) -> CurvesReport:
    test_seeds = per_seed(records, lambda r: r.final("test_error"))
    test = over_seeds(test_seeds)
    train = over_seeds(per_seed(records, lambda r: r.final("train_error")))
    mid = max(0, settings.epochs // 2 - 1)
    early_seeds = per_seed(records, lambda r: r.curves["train_error"][mid])
    early = over_seeds(early_seeds)
    table = [
        f"| method | test error | final train error | train error at epoch {mid + 1} |",
        "|---|---|---|---|",
        *(
            f"| {m} | {test[m][0]:.2%} +- {test[m][1]:.2%} | {train[m][0]:.2%} | "
            f"{early[m][0]:.2%} |"
            for m in records
        ),
    ]
    faster = beats(early_seeds["wn"], early_seeds["normal"])
    better = beats(test_seeds["wn"], test_seeds["normal"])
    claims = [
        f"- **weight norm on recurrent weights converges faster** (paper, DRAW: much faster): "
        f"{faster}: training error {early['wn'][0]:.2%} vs {early['normal'][0]:.2%} at epoch "
        f"{mid + 1}.",
        f"- **and ends better**: {better}: test error {test['wn'][0]:.2%} vs "
        f"{test['normal'][0]:.2%}.",
    ]
    return CurvesReport(
        title="Recurrent: LSTM over MNIST-1D as a sequence",
        intro=f"LSTM with {settings.hidden} units reading the 40 values of each MNIST-1D sample; "
        "weight norm on its input and recurrent weights and on the output layer. Adam "
        f"(lr {settings.lr}, the paper's schedule), gradient norm clipped at 5, "
        f"{settings.epochs} epochs, {settings.seeds} seeds.",
        curves=[
            Curve("train_error", "training error", log=True),
            Curve("test_error", "test error", log=True),
        ],
        x_key="epoch",
        x_label="epoch",
        table=table,
        claims=claims,
        summary={"test_error": test, "train_error": train},
    )
