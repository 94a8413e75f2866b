"""benchmarks/zoo_checks.py, the README's zoo table: outcomes read from a JUnit report, one row
per (model, torch), rows of two environments merged in the zoo's order."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from weightnorm.experiments import zoo

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo_checks.py"


@pytest.fixture(scope="module")
def checks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zoo_checks", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase name="test_replace_is_exact[vocos]"/>
<testcase name="test_converted_checkpoint_loads_strictly[vocos-weightnorm]"/>
<testcase name="test_converted_checkpoint_loads_strictly[vocos-plain]">
  <failure message="AssertionError">boom</failure></testcase>
<testcase name="test_compile_fullgraph_matches_eager[vocos]">
  <skipped type="pytest.skip"
   message="vocos without weight norm does not compile with fullgraph=True: Unsupported"/>
</testcase>
<testcase name="test_export_matches_eager[speechbrain-hifigan]">
  <skipped type="pytest.xfail" message="torch 2.9 cannot"/></testcase>
<testcase name="test_replace_is_exact[speechbrain-hifigan]"/>
<testcase name="test_zoo_models_not_installed_here">
  <skipped type="pytest.skip" message="zoo models not installed here: bigvgan"/></testcase>
</testsuite></testsuites>
"""


def test_outcomes_read_every_kind_of_result(checks: ModuleType, tmp_path: Path) -> None:
    report = tmp_path / "zoo.xml"
    report.write_text(REPORT)
    got = checks.outcomes(report)
    assert got == {
        ("test_replace_is_exact", "vocos"): ["yes"],
        ("test_converted_checkpoint_loads_strictly", "vocos"): ["yes", "FAILED"],
        ("test_compile_fullgraph_matches_eager", "vocos"): [
            "n/a: the model itself does not compile with fullgraph=True"
        ],
        ("test_export_matches_eager", "speechbrain-hifigan"): ["known failure: torch 2.9 cannot"],
        ("test_replace_is_exact", "speechbrain-hifigan"): ["yes"],
    }


def test_rows_say_the_torch_and_a_check_fails_if_any_case_does(checks: ModuleType) -> None:
    here = zoo.installed()
    if not here:
        pytest.skip("no zoo package installed here (a row carries its package's version)")
    name = here[0]
    results = {
        ("test_replace_is_exact", name): ["yes"],
        ("test_converted_checkpoint_loads_strictly", name): ["yes", "FAILED", "yes"],
    }
    (row,) = checks.rows(results, {"torch": "2.13.0", "torchaudio": None})
    assert row["model"] == name
    assert row["torch"] == "2.13.0"
    assert row["weight_norm"] == zoo.ZOO[name].torch_weight_norm
    assert row["cells"]["test_replace_is_exact"] == "yes"
    assert row["cells"]["test_converted_checkpoint_loads_strictly"] == "FAILED"
    assert row["cells"]["test_export_matches_eager"] == "not run"


def _record(model: str, torch: str) -> dict[str, object]:
    cells = dict.fromkeys(
        [
            "test_replace_is_exact",
            "test_torch_checkpoint_loads_strictly",
            "test_fold_is_bit_identical_to_torch_removal",
            "test_copies_and_pickles",
            "test_converted_checkpoint_loads_strictly",
            "test_cli_converted_checkpoint_loads_strictly",
            "test_plain_checkpoint_converts_like_the_model",
            "test_optimizer_level_trains_the_models_parameterization",
            "test_export_matches_eager",
            "test_compile_fullgraph_matches_eager",
        ],
        "yes",
    )
    spec = zoo.ZOO[model]
    return {
        "model": model,
        "package": spec.package,
        "weight_norm": spec.torch_weight_norm,
        "torch": torch,
        "cells": cells,
    }


def test_table_merges_environments_in_zoo_order(checks: ModuleType, tmp_path: Path) -> None:
    """Rows from two --json files (two torches) make one table, in the zoo's order."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([_record("vocos", "2.9.1"), _record("dac-descript", "2.9.1")]))
    b.write_text(json.dumps([_record("bigvgan", "2.13.0"), _record("encodec", "2.13.0")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--table", str(a), str(b)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| model | weight norm | torch | replace")
    assert len(lines[1].split("|")) == len(lines[0].split("|"))
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| encodec (transformers)",
        "| bigvgan (bigvgan)",
        "| dac-descript (descript-audio-codec)",
        "| vocos (vocos)",
    ]
    assert lines[2].split(" | ")[1:3] == ["parametrize", "2.13.0"]
    assert lines[5].split(" | ")[1:3] == ["legacy", "2.9.1"]


def test_a_named_model_that_is_not_installed_exits_2(checks: ModuleType) -> None:
    absent = [n for n in zoo.ZOO if zoo.missing_packages([n])]
    if not absent:
        pytest.skip("every zoo package is installed here")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", absent[0]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert zoo.ZOO[absent[0]].package in proc.stderr
    assert zoo.ZOO[absent[0]].install in proc.stderr
