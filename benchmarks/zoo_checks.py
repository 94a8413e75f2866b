"""The zoo as a table: which check passes on which real model (README's migration section).

Runs ``tests/test_zoo.py`` (slow tests included) under pytest, reads the outcome of every
(check, model) test from a JUnit XML report, and prints a Markdown table: ``yes`` for a pass,
``n/a`` with the reason where the model itself cannot (e.g. it does not compile even without
weight norm), ``FAILED`` otherwise.

    python benchmarks/zoo_checks.py
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from weightnorm.experiments import zoo

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
    r"^(?P<test>test_\w+)\[(?P<model>[\w-]+?)(?:-(?:weightnorm|parametrize|plain))?\]$"
)


def outcomes(report: Path) -> dict[tuple[str, str], list[str]]:
    """(test, model) -> the outcome of each of its cases: 'yes', 'n/a: reason' or 'FAILED'."""
    out: dict[tuple[str, str], list[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        match = _ID.match(case.get("name", ""))
        if not match:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            result = "FAILED"
        elif (skipped := case.find("skipped")) is not None:
            reason = skipped.get("message", "").removeprefix("Skipped: ")
            _, sep, why = reason.partition(" without weight norm does not ")
            why = why.split(":")[0]  # (the exception's type stays in the test log)
            result = f"n/a: the model itself does not {why}" if sep else f"skipped: {reason}"
        else:
            result = "yes"
        out.setdefault((match["test"], match["model"]), []).append(result)
    return out


def table(results: dict[tuple[str, str], list[str]]) -> str:
    lines = [
        "| model | weight norm | " + " | ".join(CHECKS.values()) + " |",
        "|---|---|" + "---|" * len(CHECKS),
    ]
    for name, spec in zoo.ZOO.items():
        cells = []
        for test in CHECKS:
            got = results.get((test, name), ["not run"])
            failed = [r for r in got if r != "yes"]
            cells.append(failed[0] if failed else "yes")
        lines.append(
            f"| {name} ({spec.package}) | {spec.torch_weight_norm} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> int:
    argparse.ArgumentParser(description=__doc__).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "zoo.xml"
        subprocess.run(
            [sys.executable, "-m", "pytest", "tests/test_zoo.py", "-m", "", "-q",
             "-p", "no:cacheprovider", f"--junitxml={report}"],
            check=False,
        )  # fmt: skip
        print(table(outcomes(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
