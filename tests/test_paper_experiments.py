"""The paper's further experiments (conditioning, VAE, recurrent, DQN) at a tiny budget."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import weightnorm as wn
from weightnorm.experiments import conditioning, dqn, recurrent, vae
from weightnorm.experiments.conditioning import _gradient_alignment, _spectrum
from weightnorm.experiments.curves import beats

#: A claim's bullet with its verdict: "- **claim** (source): held: ..." and the like.
VERDICT = re.compile(r"^- \*\*.+?\*\*.*?: (held|did not hold|inconclusive)\b")


def assert_report(out: Path, plots: list[str], verdicts: int) -> dict:  # type: ignore[type-arg]
    """The report's files; ``verdicts``: how many of its claims state one."""
    report = (out / "report.md").read_text()
    assert "## What held and what did not" in report
    claims = report.split("## What held and what did not")[1].split("## Plots")[0]
    found = [line for line in claims.splitlines() if VERDICT.match(line)]
    assert len(found) == verdicts, claims
    for name in plots:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert (out / "results.csv").read_text().startswith("method,seed,")
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


def test_spectrum_matches_an_explicit_hessian() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2))
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    eig = _spectrum(model, x, y)
    params = [p.detach().double().clone().requires_grad_(True) for p in model.parameters()]

    def loss(*flat: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x.double() @ flat[0].T + flat[1])
        return nn.functional.cross_entropy(h @ flat[2].T + flat[3], y)

    blocks = torch.autograd.functional.hessian(loss, tuple(params))
    sizes = [p.numel() for p in params]
    full = torch.cat(
        [
            torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(4)], 1)
            for i in range(4)
        ]
    )
    torch.testing.assert_close(eig, torch.linalg.eigvalsh(full).flip(0))
    assert eig[0] >= eig[-1]


def test_gradient_along_v_vanishes_under_weight_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.Tanh(), nn.Linear(5, 10))
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    assert _gradient_alignment(model, x, y) > 1e-3
    wn.apply_weight_norm(model)
    assert _gradient_alignment(model, x, y) < 1e-10  # grad_v is orthogonal to v (eq. 3)


def test_conditioning_report(tmp_path: Path) -> None:
    settings = conditioning.ConditioningSettings(
        hidden=4, hessian_samples=64, steps=(0, 5), seeds=1
    )
    summary = conditioning.run_conditioning(tmp_path, settings)
    assert set(summary) == {"normal@0", "normal@5", "wn@0", "wn@5"}
    saved = assert_report(tmp_path, ["top.png", "cond10.png", "spectra.png"], verdicts=2)
    run = saved["runs"]["wn"][0]
    # 64*4+4+4*10+10 parameters, plus 4+10 g's under weight norm
    assert len(run["spectra"][0]) == 310 + 14
    assert set(run) == {"method", "seed", "curves", "spectra"}


def test_vae_report(tmp_path: Path) -> None:
    settings = vae.VAESettings(epochs=1, width=2, seeds=1)
    summary = vae.run_vae(tmp_path, settings)
    assert set(summary["test_elbo"]) == {"normal", "wn"}
    assert all(v[0] < 0 for v in summary["test_elbo"].values())  # an ELBO in nats is negative
    assert_report(tmp_path, ["train_elbo.png", "test_elbo.png"], verdicts=2)


def test_recurrent_report(tmp_path: Path) -> None:
    settings = recurrent.RecurrentSettings(epochs=1, hidden=4, samples=300, seeds=1)
    recurrent.run_recurrent(tmp_path, settings)
    saved = assert_report(tmp_path, ["train_error.png", "test_error.png"], verdicts=2)
    assert saved["settings"]["hidden"] == 4


def test_dqn_report(tmp_path: Path) -> None:
    settings = dqn.DQNSettings(
        steps=300, warmup=100, target_every=50, evaluations=1, eval_episodes=1, seeds=1
    )
    summary = dqn.run_dqn(tmp_path, settings)
    assert set(summary["best_return"]) == {"normal", "wn", "bn"}
    assert all(v[0] >= 8 for v in summary["best_return"].values())  # CartPole pays 1 a step
    assert_report(tmp_path, ["eval_return.png"], verdicts=2)


def test_verdicts_compare_every_seed_with_every_seed() -> None:
    """The main job's rule, for lower- and higher-is-better values; NaN (diverged) is worst."""
    assert beats([1.0, 2.0], [3.0, 4.0]) == "held"
    assert beats([3.0, 4.0], [1.0, 2.0]) == "did not hold"
    assert beats([1.0, 3.5], [3.0, 4.0]) == "inconclusive"
    assert beats([3.0, 4.0], [1.0, 2.0], higher_is_better=True) == "held"
    assert beats([1.0, 2.0], [3.0, 4.0], higher_is_better=True) == "did not hold"
    assert beats([1.0, float("nan")], [3.0, 4.0]) == "inconclusive"
    assert beats([3.0, 4.0], [1.0, float("nan")], higher_is_better=True) == "held"
    assert beats([5.0, float("nan")], [1.0, 2.0], higher_is_better=True) == "inconclusive"
    assert beats([float("nan")], [1.0, 2.0], higher_is_better=True) == "did not hold"


def test_cli_experiment_quick_and_resume(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "weightnorm", "reproduce", "vae", "--quick", "--set", "seeds=1",
            "--set", "epochs=1", "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "report.md").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["settings"]["epochs"] == 1
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0
    assert again.stderr.count("(cached)") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["dqn", "--set", "epochs=3"],
            "--set epochs: unknown setting 'epochs'; expected one of steps",
        ),
        (["vae", "--config", "digits"], "unrecognized arguments: --config digits"),
        (["vae", "--device", "cpu"], "unrecognized arguments: --device cpu"),
        (["recurrent", "--set", "lr=fast"], "--set lr: expected a number, got 'fast'"),
    ],
)
def test_cli_experiment_flag_errors(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "weightnorm", "reproduce", *args, "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
