"""Copy the default run's tables and verdicts from docs/mnist1d-report.md into the README and
into the main job's page of the site (docs/experiments/main-job.md).

Run after regenerating docs/ from one default run (``weightnorm reproduce --out results/mnist1d``
on a fresh clone; its ``report.md`` copied to ``docs/mnist1d-report.md`` and its PNG plots into
``docs/``): the section between the ``main-job`` markers of each file is then exactly what that
run printed (never edited by hand). The README gets the headline (the claims with their effects
and verdicts, the run's summary), the page everything (the claims, their notes, the
power analysis, the methods' table, the step times). ``--check`` changes
nothing and exits 1 if either file is out of date (``tests/test_docs.py`` runs the same check).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "mnist1d-report.md"
#: The same run with ``--threads 2`` (other reduction orders, so other rounding): its verdicts
#: are set beside the default run's on the page.
REPORT_THREADS2 = ROOT / "docs" / "mnist1d-threads2" / "report.md"
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "experiments" / "main-job.md"
BEGIN, END = "<!-- main-job:begin -->", "<!-- main-job:end -->"


def _table(lines: list[str], header: str) -> list[str]:
    """The Markdown table whose first line starts with ``header``."""
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    if start is None:
        raise SystemExit(f"the report has no table starting {header!r}: is it a default run's?")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def _claim_rows(report: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(optimizer, claim) -> (effect [interval], verdict) from a report's claims table."""
    rows = {}
    for line in _table(report.splitlines(), "| optimizer | claim | measure |")[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0], cells[1]] = (cells[3], cells[5].strip("*"))
    return rows


def rounding_check(report: str, threads2: str) -> list[str]:
    """The two runs' effects and verdicts side by side, and how many verdicts agree."""
    one, two = _claim_rows(report), _claim_rows(threads2)
    lines = [
        "| optimizer | claim | effect, `--threads 1` | effect, `--threads 2` | verdict |",
        "|---|---|---|---|---|",
    ]
    same = 0
    for key in {**one, **two}:
        effect, verdict = one.get(key, ("-", "(missing)"))
        effect2, verdict2 = two.get(key, ("-", "(missing)"))
        same += verdict == verdict2
        shown = verdict if verdict == verdict2 else f"{verdict} / {verdict2} (differ)"
        lines.append(f"| {key[0]} | {key[1]} | {effect} | {effect2} | {shown} |")
    lines += ["", f"{same} of {len({**one, **two})} verdicts are the same in both runs."]
    return lines


def blocks(report: str, threads2: str | None = None) -> dict[Path, str]:
    """The text between (and including) the markers, for the README and for the page."""
    lines = report.splitlines()
    claims = _table(lines, "| optimizer | claim | measure |")
    power = _table(lines, "| optimizer | claim | seed spread")
    methods = _table(lines, "| optimizer | method | lr |")
    timing = _table(lines, "| optimizer | method | step time")
    paragraphs = [" ".join(p.split()) for p in report.split("\n\n")]

    def paragraph(prefix: str) -> str:
        found = next((p for p in paragraphs if p.startswith(prefix)), None)
        if found is None:
            raise SystemExit(f"the report has no paragraph starting {prefix!r}")
        return found

    tally = paragraph(f"{len(claims) - 2} claims:")
    how = paragraph("How to read it:")
    section = report.split("## The paper's claims")[1].split("### Power")[0]
    notes = [line for line in section.splitlines() if line.startswith("- **")]
    ratio = re.search(r"\d+ runs, \d+ of them diverged\.", " ".join(paragraphs))
    ratio_text = ratio.group(0) if ratio else ""
    summary = paragraph("Machine:")
    headline = [BEGIN, "", *claims, "", tally, ratio_text, summary, "", END]
    full = [
        BEGIN, "", *claims, "", tally, "", how, "", *notes, "",
        "Power: the seeds' spread in each claim's measure, from this run, and what it implies "
        "(two-sided 5%, the normal approximation divided by the rank method's efficiency):", "",
        *power, "",
        *(["The same run with `--threads 2` (other reduction orders, so other rounding: "
           "[its report](../mnist1d-threads2/report.md)):", "",
           *rounding_check(report, threads2), ""] if threads2 else []),
        "Each method at its chosen rate (medians over the seeds that trained, 95% "
        "intervals):", "", *methods, "", "Step time (varies from run to run):", "", *timing, "",
        ratio_text, summary, "", END,
    ]  # fmt: skip
    return {README: "\n".join(headline), PAGE: "\n".join(full)}


def synced(path: Path, block: str) -> str:
    """The file's text with its marked section replaced by ``block``."""
    text = path.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + block + text[stop:]


def out_of_date() -> list[Path]:
    """The files whose marked section differs from the report's."""
    return [p for p, b in _blocks().items() if synced(p, b) != p.read_text()]


def _blocks() -> dict[Path, str]:
    threads2 = REPORT_THREADS2.read_text() if REPORT_THREADS2.exists() else None
    return blocks(REPORT.read_text(), threads2)


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = out_of_date()
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python docs/sync_readme.py")
        return 1 if stale else 0
    if argv:
        print("usage: python docs/sync_readme.py [--check]", file=sys.stderr)
        return 2
    for path, block in _blocks().items():
        path.write_text(synced(path, block))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
