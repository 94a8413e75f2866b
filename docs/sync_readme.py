"""Copy the default run's table and verdicts from docs/mnist1d-report.md into README.md.

Run after regenerating docs/ from one default run (``weightnorm reproduce --out results/mnist1d``
on a fresh clone; its ``report.md`` copied to ``docs/mnist1d-report.md`` and its PNG plots into
``docs/``): the README section between the ``main-job`` markers is then exactly what that run
printed (never edited by hand).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"


def main() -> None:
    report = (ROOT / "docs" / "mnist1d-report.md").read_text()
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
    body = "\n".join(
        [
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
    )
    readme = (ROOT / "README.md").read_text()
    start, stop = readme.index(BEGIN), readme.index(END) + len(END)
    (ROOT / "README.md").write_text(readme[:start] + body + readme[stop:])


if __name__ == "__main__":
    main()
