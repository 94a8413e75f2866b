"""The paper's further experiments (conditioning, VAE, recurrent, DQN) at a tiny budget."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import weightnorm as wn
from weightnorm.experiments import conditioning, dqn, effective_lr, recurrent, vae
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
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# ")
    assert "(smoke test)" in report.splitlines()[0]
    assert not [line for line in report.splitlines() if VERDICT.match(line)]  # none in a smoke test
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


# --- effective-lr: the quantities of section 2.1 and EDM2, measured ------------------------

TINY_LR = effective_lr.EffectiveLRSettings(
    epochs=2, num_samples=300, widths=(3, 5), init_batch_size=64, batch_size=64,
    lr_grid={"adam": (1e-3, 3e-2), "sgd": (3e-2,)}, seeds=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def effective_lr_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("effective-lr")
    summary = effective_lr.run_effective_lr(out, TINY_LR)
    return out, summary


def test_effective_lr_report(effective_lr_report: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, summary = effective_lr_report
    plots = ["lr_sweep.png", "v_norm.png", "angular_step.png", "step_vs_lr.png", "curves.png"]
    report = (out / "report.md").read_text()
    claims = report.split("## What held and what did not")[1].split("## Plots")[0]
    found = [line for line in claims.splitlines() if VERDICT.match(line)]
    assert len(found) == 8 * 2, claims  # eight claims per optimizer, each with its verdict
    for name in plots:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"![{name}]({name})" in report
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == 3 * 3 * 2  # methods x rates x seeds
    assert set(summary) == {"adam", "sgd"}
    assert summary["sgd"]["wn-init"]["best_lr"] == 3e-2  # the only rate of its grid
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("method,seed,optimizer,lr,epoch,")
    assert len(rows) == 1 + 18 * TINY_LR.epochs


def test_effective_lr_resumes_and_a_wider_grid_reuses_every_run(
    effective_lr_report: tuple[Path, dict],  # type: ignore[type-arg]
    tmp_path: Path,
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(effective_lr_report[0], out)
    messages: list[str] = []
    wider = replace(TINY_LR, lr_grid={**TINY_LR.lr_grid, "sgd": (3e-2, 1e-1)})
    effective_lr.run_effective_lr(out, wider, progress=lambda d, t, m: messages.append(m))
    finished = [m for m in messages if m.endswith(("(cached)", "diverged")) or "train loss" in m]
    assert len(finished) == 24  # 18 runs before, 6 at the new rate
    assert sum(m.endswith("(cached)") for m in finished) == 18
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 24


def test_effective_lr_holds_the_forced_norm_and_lets_v_grow(
    effective_lr_report: tuple[Path, dict],  # type: ignore[type-arg]
) -> None:
    """Forced WN: every layer's ||v|| is the forced norm before the first step and after every
    epoch (EDM2's sqrt(fan_in) under Adam, 1 under SGD); plain WN: ||v|| only grows (eq. 3)."""
    out, _ = effective_lr_report
    runs = json.loads((out / "results.json").read_text())["runs"]
    data = effective_lr.mnist1d(TINY_LR.num_samples)
    net = effective_lr._network(TINY_LR, data)
    fan_in = [m.weight[0].numel() for m in net.modules() if isinstance(m, nn.Conv1d | nn.Linear)]
    checked = 0
    for run in runs:
        spec, layers = run["spec"], run["layers"]
        assert len(layers) == len(fan_in) == 10
        for i, v0 in enumerate(run["initial_v_norm"]):
            norms = [v0, *run["curves"][f"v_norm.{i}"]]
            gains = run["curves"].get(f"g.{i}")  # the mean learned gain, weight norm only
            assert (gains is None) == (spec["method"] == "normal-init")
            assert gains is None or all(math.isfinite(g) and g != 0 for g in gains)
            if spec["method"] == "forced-wn-init":
                expected = math.sqrt(fan_in[i]) if spec["optimizer"] == "adam" else 1.0
                assert norms == pytest.approx([expected] * len(norms), rel=1e-5)
                checked += 1
            elif spec["method"] == "wn-init" and spec["optimizer"] == "sgd":
                assert all(b >= a * (1 - 1e-6) for a, b in itertools.pairwise(norms)), (spec, i)
    assert checked == 10 * 3 * 2


def test_effective_lr_records_the_angle_each_step_turns_a_unit_by() -> None:
    """A run of one step: the recorded angle per layer is the one AngularStepTracker (and an
    arccos in float64) gives for the same first step."""
    settings = replace(TINY_LR, epochs=1, num_samples=100, batch_size=100, lr_grid={"sgd": (0.1,)})
    data = effective_lr.mnist1d(settings.num_samples)
    spec = effective_lr.RunSpec("wn-init", "sgd", 0.1, 0)
    record = effective_lr._run(spec, settings, data)
    model, opt, gen = effective_lr._build(spec, settings, data)
    tracker = wn.AngularStepTracker(model, opt)
    before = {k: s.v_norm for k, s in wn.weight_norm_stats(model).items()}
    vs = {n: p.detach().clone().double() for n, p in model.named_parameters() if n.endswith("_v")}
    perm = torch.randperm(len(data.train), generator=gen)  # the one batch: all 70 samples
    out = model(data.train.x[perm])  # (the same input noise and dropout draws as the run's)
    nn.functional.cross_entropy(out, data.train.y[perm]).backward()
    opt.step()
    steps = tracker.last()
    assert list(steps) == record.layers == list(before)
    for i, name in enumerate(record.layers):
        v0, v1 = (
            vs[name + "_v"].flatten(1),
            _module(model, name).weight_v.detach().double().flatten(1),
        )
        cos = (v0 * v1).sum(1) / (v0.norm(dim=1) * v1.norm(dim=1))
        reference = float(torch.arccos(cos.clamp(-1, 1)).mean())
        assert record.curves[f"angle.{i}"][0] == pytest.approx(steps[name].mean, rel=1e-3)
        assert record.curves[f"angle.{i}"][0] == pytest.approx(reference, rel=1e-3, abs=1e-6)


def _module(model: nn.Module, weight: str) -> nn.Module:
    return model.get_submodule(weight.removesuffix(".weight"))


def test_effective_lr_slope() -> None:
    assert effective_lr._slope([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) == pytest.approx(2.0)
    assert math.isnan(effective_lr._slope([(0.0, 1.0)]))


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("forced_norm.sgd=zero", "forced_norm.sgd must be 'sqrt_fan_in' or a positive number"),
        ("lr_grid.adam=0.001,0.001", "lr_grid.adam must name each rate once"),
        ("dropout=1.5", "dropout must be in [0, 1)"),
        ("num_samples=10", "num_samples must be >= 50"),
        ("widths=4", "widths must be two positive channel counts"),
    ],
)
def test_effective_lr_settings_are_checked_before_training(
    assignment: str, message: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "weightnorm", "reproduce", "effective-lr", "--quick", "--set",
         assignment, "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def _synthetic(method: str, lr: float, seed: int, swap: bool) -> effective_lr.EffectiveLRRecord:
    """A two-layer, two-epoch record whose every figure is chosen: weight norm has the lowest
    test error (or, with ``swap``, the normal parameterization), a step that decays tenfold and
    does not depend on the rate, an uneven step across layers, and reaches 10% training error
    first; forced weight norm has a constant step, proportional to the rate, even across layers."""
    wn_like = method == ("normal-init" if swap else "wn-init")
    forced = method == "forced-wn-init"
    test_error = 0.02 if wn_like else (0.3 if forced else 0.2)
    first = 1e-2 * (lr / 1e-3 if forced else 1.0)
    last = first if forced else first / 10
    curves: dict[str, list[float]] = {
        "train_loss": [1.0, 0.3 if lr == 1e-3 else 0.4],
        "train_error": [0.05, 0.04] if method == "wn-init" else [0.5, 0.08],
        "test_error": [0.5, test_error + seed * 1e-3],
    }
    for i in range(2):
        uneven = 1.0 if forced else 3.0**i
        curves[f"v_norm.{i}"] = [1.1, 1.2]
        curves[f"angle.{i}"] = [first * uneven, last * uneven]
    spec = effective_lr.RunSpec(method, "adam", lr, seed)
    return effective_lr.EffectiveLRRecord(spec, False, ["0.weight", "1.weight"], [1.0, 1.0], curves)


@pytest.mark.parametrize("swap", [False, True])
def test_effective_lr_claims_point_the_right_way(swap: bool) -> None:
    """Every verdict of the report on records whose answer is known (and the robustness one
    reversed when the normal parameterization is made the best)."""
    settings = replace(TINY_LR, epochs=2, lr_grid={"adam": (1e-3, 1e-2), "sgd": ()})
    runs = {
        (r := _synthetic(m, lr, s, swap)).spec: r
        for m in effective_lr.METHODS
        for lr in (1e-3, 1e-2)
        for s in range(2)
    }
    results = effective_lr._Results(settings, runs)
    assert results.target("adam") == 0.08  # the worst final training error at the best rates
    claims = effective_lr._claims(results)
    verdict = {c.split("**")[1].split(": ", 1)[1]: VERDICT.match(c).group(1) for c in claims}  # type: ignore[union-attr]
    assert verdict == {
        "weight norm is more robust to the learning rate than the normal parameterization": (
            "did not hold" if swap else "held"
        ),
        "forcing the norm gives up that robustness": "held",
        "under weight norm ||v|| only grows": "held",
        "the effective step decays more under weight norm than under forced weight norm": "held",
        "a larger rate slows itself down under weight norm": "held",
        "forced weight norm evens out the step across layers": "held",
        "weight norm converges faster": "held",
        "forced weight norm converges faster than weight norm": "did not hold",
    }
    assert effective_lr.command(settings).endswith(
        "--set lr_grid.adam=0.001,0.01 --set lr_grid.sgd="
    )
