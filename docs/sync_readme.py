"""Copy the default run's tables and verdicts from docs/mnist1d-report.md into the README and
into the main job's page of the site (docs/experiments/main-job.md).

Run after regenerating docs/ from one default run (``weightnorm reproduce --out results/mnist1d``
on a fresh clone; its ``report.md`` copied to ``docs/mnist1d-report.md`` and its PNG plots into
``docs/``): the section between the ``main-job`` markers of each file is then exactly what that
run printed (never edited by hand). The README gets the headline (the results table and the run's
summary), the page everything (the table, the verdicts, the step times). ``--check`` changes
nothing and exits 1 if either file is out of date (``tests/test_docs.py`` runs the same check).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "mnist1d-report.md"
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "experiments" / "main-job.md"
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"


def blocks(report: str) -> dict[Path, str]:
    """The text between (and including) the markers, for the README and for the page."""
    lines = report.splitlines()
    table = [line for line in lines if line.startswith("|")]
    split = table.index(next(t for t in table[1:] if t.startswith("| optimizer")))
    results, timing = table[:split], table[split:]
    held = report.split("## What held and what did not")[1].split("## Timing")[0]
    claims = [line for line in held.splitlines() if line.startswith("- ")]
    paragraphs = [" ".join(p.split()) for p in report.split("\n\n")]
    summary = next(p for p in paragraphs if p.startswith("Machine:"))
    ratio = re.search(r"\d+ runs, \d+ of them diverged[^.]*\.", " ".join(paragraphs))
    ratio_text = ratio.group(0) if ratio else ""
    headline = [BEGIN, "", *results, "", ratio_text, summary, "", END]
    full = [
        BEGIN,
        "",
        *results,
        "",
        "What held and what did not (from the report):",
        "",
        *claims,
        "",
        "Step time (varies from run to run):",
        "",
        *timing,
        "",
        ratio_text,
        summary,
        "",
        END,
    ]
    return {README: "\n".join(headline), PAGE: "\n".join(full)}


def synced(path: Path, block: str) -> str:
    """The file's text with its marked section replaced by ``block``."""
    text = path.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[stop:]


def out_of_date() -> list[Path]:
    """The files whose marked section differs from the report's."""
    return [p for p, b in blocks(REPORT.read_text()).items() if synced(p, b) != p.read_text()]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = out_of_date()
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/sync_readme.py")
        return 1 if stale else 0
    if argv:
        print("usage: python docs/sync_readme.py [--check]", file=sys.stderr)
        return 2
    for path, block in blocks(REPORT.read_text()).items():
        path.write_text(synced(path, block))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
