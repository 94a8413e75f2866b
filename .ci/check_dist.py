"""Check the release files that ``python -m build`` wrote: what a user installs must hold every
file the package needs, and nothing else.

    python .ci/check_dist.py dist/

- the wheel holds every file of ``src/weightnorm`` in the checkout (modules, ``py.typed``), the
  license, and metadata naming the SPDX license and the version of ``pyproject.toml``; no tests,
  docs or benchmarks;
- the sdist (the wheel is built from it) holds the license, the citation file, the README,
  ``pyproject.toml`` and every file of ``src/weightnorm``.

Exits 1 naming each problem.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def package_files() -> set[str]:
    """``weightnorm/...`` paths of the package in the checkout (git-tracked or not, but built)."""
    src = ROOT / "src"
    return {
        p.relative_to(src).as_posix()
        for p in (src / "weightnorm").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check(dist: Path) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    wheels = sorted(dist.glob(f"{name}-{version}-*.whl"))
    sdists = sorted(dist.glob(f"{name}-{version}.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        return [f"expected one wheel and one sdist of {name} {version} in {dist}, got "
                f"{[p.name for p in dist.iterdir()]}"]  # fmt: skip
    problems: list[str] = []
    needed = package_files()
    info = f"{name}-{version}.dist-info"

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        problems += [f"wheel: {f} is missing" for f in sorted(needed - names)]
        for required in ("weightnorm/py.typed", f"{info}/licenses/LICENSE"):
            if required not in names:
                problems.append(f"wheel: {required} is missing")
        stray = sorted(n for n in names if not n.startswith(("weightnorm/", f"{info}/")))
        problems += [f"wheel: {n} does not belong in it" for n in stray]
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        if metadata["License-Expression"] != project["license"]:
            problems.append(f"wheel: License-Expression is {metadata['License-Expression']!r}")
        if metadata["Version"] != version:
            problems.append(f"wheel: Version is {metadata['Version']!r}, expected {version!r}")

    with tarfile.open(sdists[0]) as sdist:
        prefix = f"{name}-{version}/"
        members = {m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()}
        wanted = {"LICENSE", "CITATION.cff", "README.md", "pyproject.toml"}
        wanted |= {f"src/{f}" for f in needed}
        problems += [f"sdist: {f} is missing" for f in sorted(wanted - members)]
    return problems


def main() -> int:
    dist = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"
    problems = check(dist)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{dist}: wheel and sdist hold the package, py.typed and the license")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
