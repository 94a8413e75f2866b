"""The benchmark harness and ``weightnorm bench``: it runs, and reports ratios against plain."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightnorm.experiments import bench, zoo


def test_run_benchmarks_reports_ratios_against_plain() -> None:
    results = bench.run_benchmarks(
        ["mlp-b16"], ["weightnorm", "torch-parametrize"], rounds=3, steps_per_round=1, warmup=1
    )
    by = {r.implementation: r for r in results}
    assert set(by) == {"plain", "weightnorm", "torch-parametrize"}
    assert by["plain"].ratios == [1.0, 1.0, 1.0]
    for r in results:
        assert r.min_ratio <= r.median_ratio <= r.max_ratio
        assert r.median_step_ms > 0
    table = bench.format_table(results)
    assert table.splitlines()[0].startswith("| model | plain step (ms) | plain | weightnorm")


@pytest.mark.parametrize("model", bench.CPU_MODELS)
def test_every_model_steps_under_every_implementation(model: str) -> None:
    """One timed step of each pair (the 1-D paper network of ``reproduce`` included)."""
    results = bench.run_benchmarks([model], rounds=1, steps_per_round=1, warmup=0)
    assert {r.implementation for r in results} == set(bench.IMPLEMENTATIONS)
    assert all(r.median_step_ms > 0 for r in results)


def test_large_batch_models_are_registered_for_the_gpu() -> None:
    assert set(bench.CPU_MODELS) < set(bench.GPU_MODELS) <= set(bench.MODELS)
    assert max(bench.MODELS[m].input_shape[0] for m in bench.GPU_MODELS) >= 1024


def test_peak_memory_is_reported_and_follows_the_weights() -> None:
    """The legacy hook keeps w as a module attribute between steps, the optimizer-level mode
    keeps v; ours frees w with the graph, as parametrize does."""
    results = bench.run_benchmarks(["mlp-b16"], rounds=1, steps_per_round=1, warmup=1)
    mem = {r.implementation: r for r in results}
    assert mem["plain"].memory_ratio == 1.0
    weights_mb = (40 * 512 + 512 * 512 + 512 * 10) * 4 / 2**20
    assert mem["plain"].peak_memory_mb > 3 * weights_mb  # weights, Adam's two moments, grads
    legacy = mem["torch-legacy"].peak_memory_mb - mem["plain"].peak_memory_mb
    assert legacy == pytest.approx(weights_mb, rel=0.1)
    ours = mem["weightnorm"].peak_memory_mb - mem["plain"].peak_memory_mb
    assert ours < 0.1 * weights_mb
    assert mem["weightnorm-optim"].peak_memory_mb - mem["plain"].peak_memory_mb > weights_mb
    assert "| mlp-b16 |" in bench.format_memory_table(results)


def test_autocast_and_bad_devices() -> None:
    results = bench.run_benchmarks(
        ["mlp-b16"], ["weightnorm"], rounds=1, steps_per_round=1, warmup=0, autocast="bf16"
    )
    assert {r.autocast for r in results} == {"bf16"}
    assert "mlp-b16 (cpu, bf16)" in bench.format_table(results)
    with pytest.raises(ValueError, match="autocast must be one of"):
        bench.run_benchmarks(["mlp-b16"], autocast="int8")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        bench.run_benchmarks(["mlp-b16"], device="tpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_stabilize_allocator_applies_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert bench.stabilize_allocator() is True


def test_optimizer_level_mode_is_timed() -> None:
    results = bench.run_benchmarks(["mlp-b16"], ["weightnorm-optim"], rounds=2, steps_per_round=1)
    assert {r.implementation for r in results} == {"plain", "weightnorm-optim"}


def test_extras_check_folding_and_time_data_init() -> None:
    rows = bench.run_extras(["conv1d-dilated-b8"], repeats=2)
    (row,) = rows
    assert row["model"] == "conv1d-dilated-b8"
    assert row["folded_inference_ratio"] > 0
    assert row["data_init_vs_forward"] > 0
    assert "| conv1d-dilated-b8 |" in bench.format_extras(rows)


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        bench.run_benchmarks(["nope"])
    with pytest.raises(ValueError, match="unknown implementation 'nope'"):
        bench.run_benchmarks(["mlp-b16"], ["nope"])


def test_a_zoo_model_not_installed_says_what_installs_it() -> None:
    """The torchaudio models are not in the 'zoo' extra: the error names their own command."""
    absent = [n for n in zoo.ZOO if zoo.missing_packages([n])]
    if not absent:
        pytest.skip("every zoo package is installed here")
    spec = zoo.ZOO[absent[-1]]
    with pytest.raises(ValueError, match=re.escape(f"need {spec.package}: {spec.install}")):
        bench.run_benchmarks([absent[-1]], rounds=1, steps_per_round=1)


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "weightnorm", "bench", "--models", "mlp-b16", "--rounds", "2",
         "--steps", "1", "--json", str(out), "--no-progress", "--no-extras"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| mlp-b16 |" in proc.stdout
    data = json.loads(out.read_text())
    assert {r["implementation"] for r in data["results"]} >= {"plain", "weightnorm"}
    assert data["environment"]["torch"]
    assert data["environment"]["torch"] == torch.__version__
    assert data["settings"]["models"] == ["mlp-b16"]
    assert {r["model"] for r in data["results"]} == {"mlp-b16"}
    assert data["extras"] == []  # --no-extras
    assert data["settings"]["stable_allocator"] is True
    assert data["settings"]["rounds"] == 2


def test_cli_default_allocator_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "weightnorm", "bench", "--models", "mlp-b16", "--rounds", "1",
         "--steps", "1", "--implementations", "weightnorm", "--default-allocator",
         "--json", str(out), "--no-progress", "--no-extras"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "default allocator" in proc.stdout
    assert json.loads(out.read_text())["settings"]["stable_allocator"] is False


def test_cli_bad_value_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "weightnorm", "bench", "--rounds", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "expected a positive integer, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr
