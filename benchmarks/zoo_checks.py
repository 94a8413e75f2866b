"""The zoo as a table: which check passes on which real model, on which torch (README's zoo).

Runs ``tests/test_zoo.py`` (slow tests included) under pytest on the zoo models whose packages are
installed in this environment, reads the outcome of every (check, model) test from a JUnit XML
report, and prints a Markdown table: ``yes`` for a pass, ``n/a`` with the reason where the model
itself cannot (e.g. it does not compile even without weight norm), ``known failure`` with the
reason for a test marked as one, ``FAILED`` otherwise. Each row says the torch it ran on. The
zoo's models live in two environments (the main one, torch 2.13, and ``benchmarks/zoo-torch29``'s,
torch 2.9.1 with torchaudio): ``--json`` keeps a run's rows, ``--table`` prints the rows of
several runs as one table.

    python benchmarks/zoo_checks.py                       # every zoo model installed here
    python benchmarks/zoo_checks.py --models vocos --json results/zoo-vocos.json
    python benchmarks/zoo_checks.py --table results/zoo-checks-*.json

Exits 1 if a check FAILED, 2 if a model named by ``--models`` is not installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

from weightnorm.experiments import zoo

ROOT = Path(__file__).resolve().parent.parent

#: test function -> column title (tests parametrized over formats count as one check: all pass)
CHECKS = {
    "test_replace_is_exact": "replace (outputs, g/v grads)",
    "test_torch_checkpoint_loads_strictly": "torch checkpoint loads",
    "test_fold_is_bit_identical_to_torch_removal": "fold bit-exact",
    "test_copies_and_pickles": "deepcopy, torch.save",
    "test_converted_checkpoint_loads_strictly": "converted (API, 3 formats) loads strictly",
    "test_cli_converted_checkpoint_loads_strictly": "converted (CLI, 3 formats) loads strictly",
    "test_plain_checkpoint_converts_like_the_model": "plain -> like=model",
    "test_optimizer_level_trains_the_models_parameterization": "optimizer-level trajectory",
    "test_export_matches_eager": "torch.export",
    "test_compile_fullgraph_matches_eager": "compile(fullgraph) fwd+bwd",
}
_ID = re.compile(
    r"^(?:.*::)?(?P<test>test_\w+)\[(?P<model>[\w-]+?)(?:-(?:weightnorm|parametrize|plain))?\]$"
)


def outcomes(report: Path) -> dict[tuple[str, str], list[str]]:
    """(test, model) -> the outcome of each of its cases: 'yes', 'n/a: reason', 'known failure:
    reason' or 'FAILED'."""
    out: dict[tuple[str, str], list[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        match = _ID.match(case.get("name", ""))
        if not match:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            result = "FAILED"
        elif (skipped := case.find("skipped")) is not None:
            reason = skipped.get("message", "").removeprefix("Skipped: ")
            if skipped.get("type") == "pytest.xfail":
                out.setdefault((match["test"], match["model"]), []).append(
                    f"known failure: {reason}"
                )
                continue
            _, sep, why = reason.partition(" without weight norm does not ")
            why = why.split(":")[0]  # (the exception's type stays in the test log)
            result = f"n/a: the model itself does not {why}" if sep else f"skipped: {reason}"
        else:
            result = "yes"
        out.setdefault((match["test"], match["model"]), []).append(result)
    return out


def environment() -> dict[str, Any]:
    """The torch this process runs on (and torchaudio, where installed)."""
    try:
        torchaudio: str | None = importlib.metadata.version("torchaudio")
    except importlib.metadata.PackageNotFoundError:
        torchaudio = None
    return {"torch": torch.__version__.split("+")[0], "torchaudio": torchaudio}


def rows(results: dict[tuple[str, str], list[str]], env: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per zoo model that ran: its package (and version), weight norm, torch, cells."""
    out = []
    for name in sorted({m for _, m in results}, key=list(zoo.ZOO).index):
        spec = zoo.ZOO[name]
        cells = {}
        for test in CHECKS:
            got = results.get((test, name), ["not run"])
            failed = [r for r in got if r != "yes"]
            cells[test] = failed[0] if failed else "yes"
        out.append(
            {
                "model": name,
                "package": spec.package,
                "package_version": importlib.metadata.version(spec.package),
                "weight_norm": spec.torch_weight_norm,
                **env,
                "cells": cells,
            }
        )
    return out


def table(records: list[dict[str, Any]]) -> str:
    """The Markdown table of ``records`` (from :func:`rows`), in the zoo's order."""
    lines = [
        "| model | weight norm | torch | " + " | ".join(CHECKS.values()) + " |",
        "|---|---|---|" + "---|" * len(CHECKS),
    ]
    order = list(zoo.ZOO)
    for r in sorted(records, key=lambda r: (order.index(r["model"]), r["torch"])):
        cells = [r["cells"].get(test, "not run") for test in CHECKS]
        lines.append(
            f"| {r['model']} ({r['package']}) | {r['weight_norm']} | {r['torch']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def run(models: list[str]) -> list[dict[str, Any]]:
    """Run every check of tests/test_zoo.py (slow ones included) on ``models``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "zoo.xml"
        pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", ""]
        listed = subprocess.run(
            [*pytest, "--collect-only", "-q", "tests/test_zoo.py"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        ids = [
            line
            for line in listed.stdout.splitlines()
            if (m := _ID.match(line)) and m["model"] in models
        ]
        if not ids:
            raise SystemExit(f"no zoo test collected for {', '.join(models)}:\n{listed.stdout}")
        subprocess.run([*pytest, "-q", f"--junitxml={report}", *ids], cwd=ROOT, check=False)
        return rows(outcomes(report), environment())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", nargs="+", metavar="MODEL", choices=list(zoo.ZOO),
        help="the zoo models to check (default: every one whose packages are installed)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows here")
    parser.add_argument(
        "--table", nargs="+", type=Path, metavar="FILE",
        help="print one table of the rows in these --json files (runs nothing)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.table:
        records = [r for f in args.table for r in json.loads(f.read_text())]
        print(table(records))
        return 0
    models = args.models or zoo.installed()
    missing = zoo.missing_packages(models)
    if missing or not models:
        print(
            f"not installed: {', '.join(missing) or 'every zoo package'} "
            f"({zoo.install_hint(models or None)})",
            file=sys.stderr,
        )
        return 2
    records = run(models)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    print(table(records))
    ran = {r["model"] for r in records}
    failed = [r["model"] for r in records if "FAILED" in r["cells"].values()]
    if failed or ran != set(models):
        print(
            f"FAILED checks: {', '.join(failed) or '-'}; no result: "
            f"{', '.join(sorted(set(models) - ran)) or '-'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
