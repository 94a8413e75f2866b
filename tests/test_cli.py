"""The command line's conventions: one-line errors, help on every option, checks before work.

Runs with torch alone (the bare-install check of .ci/run runs this file too).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import weightnorm
from weightnorm.cli import build_parser, main
from weightnorm.cli._common import missing_modules
from weightnorm.cli.reproduce import default_experiment
from weightnorm.experiments import bench, zoo
from weightnorm.experiments.settings import apply_overrides, flatten


def stderr_lines(text: str) -> list[str]:
    """stderr's lines, without the warning torch itself prints where numpy is not installed
    (the bare-install check runs there)."""
    torch_noise = ("Failed to initialize NumPy", "_conversion_method_template")
    return [line for line in text.strip().splitlines() if not any(n in line for n in torch_noise)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightnorm", *args], capture_output=True, text=True
    )


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    found = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        found.append((name, parser))
        for action in parser._actions:  # argparse keeps its subparsers here
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(f"{name} {sub}", child)

    walk("weightnorm", build_parser())
    return found


@pytest.mark.parametrize(("name", "parser"), every_parser(), ids=lambda x: str(x))
def test_every_option_has_help_and_one_default(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert text.count("(default:") == text.count("default:"), name
    assert ") (default" not in text, name
    for action in parser._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, f"{name}: {action.option_strings} has no help"


def pyproject_version() -> str:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    found = re.search(r'^version = "([^"]+)"$', text, re.M)
    assert found, "pyproject.toml declares no version"
    return found.group(1)


def test_the_package_reports_pyprojects_version() -> None:
    """One copy of the version, in pyproject.toml; the package reads its installed metadata."""
    assert weightnorm.__version__ == importlib.metadata.version("weightnorm") == pyproject_version()


def test_version_option_prints_it() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"weightnorm {pyproject_version()}\n"


def test_bench_help_names_its_models_and_implementations() -> None:
    proc = cli("bench", "--help")
    assert proc.returncode == 0
    for name in ("mlp-b16", "speecht5-hifigan", "weightnorm-optim", "parametrize"):
        assert name in proc.stdout, name
    # every name, each whole (argparse wraps lines after hyphens: joined again here)
    text = re.sub(r"-\s+", "-", " ".join(proc.stdout.split()))
    names = [*bench.MODELS, *zoo.ZOO, *bench.IMPLEMENTATIONS, *bench.ZOO_IMPLEMENTATIONS]
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "invalid choice: 'nope'"),
        (["bench", "--rounds", "0"], "--rounds: expected a positive integer, got 0"),
        (["convert"], "the following arguments are required: input, output, --to"),
        (["reproduce", "vae", "--config", "x"], "unrecognized arguments: --config x"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    lines = stderr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert lines[0].startswith("weightnorm")
    assert "--help)" in lines[0]


def test_bench_json_is_checked_before_the_benchmark(tmp_path: Path) -> None:
    for target, message in (
        ("/proc/x.json", "not writable"),
        (str(tmp_path / "missing" / "x.json"), "does not exist"),
        (str(tmp_path), "is a folder"),
    ):
        proc = cli("bench", "--models", "mlp-b16", "--rounds", "1", "--json", target)
        assert proc.returncode == 2
        assert message in proc.stderr
        assert "Training step" not in proc.stdout  # nothing was timed
        assert "Traceback" not in proc.stderr


def test_reproduce_is_the_comparison_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["reproduce", "comparison", "--quick"])
    assert args.experiment == "comparison"
    for given in (["reproduce"], ["reproduce", "--quick"], ["reproduce", "--set", "seeds=1"]):
        assert default_experiment(given) == ["reproduce", "comparison", *given[1:]]
        assert build_parser().parse_args(default_experiment(given)).experiment == "comparison"
    for kept in (["reproduce", "vae", "--quick"], ["reproduce", "--help"], ["bench", "--quick"]):
        assert default_experiment(kept) == kept
    proc = cli("reproduce", "--help")
    assert proc.returncode == 0
    for name in ("comparison", "conditioning", "vae", "recurrent", "dqn", "effective-lr"):
        assert name in proc.stdout
    # issue 30: the options of every experiment (they are the subcommands' own) are listed too
    assert "--quick" in proc.stdout
    assert "weightnorm reproduce --quick" in proc.stdout
    capsys.readouterr()
    assert main(["reproduce", "--set", "x"]) == 2  # parsed as the comparison's --set
    err = stderr_lines(capsys.readouterr().err)
    if missing_modules("numpy", "mnist1d", "sklearn", "matplotlib", "tqdm"):  # a bare install
        assert len(err) == 1, err
        assert "weightnorm reproduce needs the 'experiments' extra" in err[0]
    else:
        assert err == ["weightnorm: error: --set: expected KEY=VALUE, got 'x'"]


@dataclasses.dataclass(frozen=True)
class Inner:
    widths: tuple[int, ...] = (8, 16)
    dropout: float = 0.3


@dataclasses.dataclass(frozen=True)
class Settings:
    epochs: int = 4
    name: str = "x"
    flag: bool = False
    target: float | None = None
    grid: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=lambda: {"a": (0.1,)})
    net: Inner = Inner()


def test_set_parses_by_the_settings_type() -> None:
    got = apply_overrides(
        Settings(),
        ["epochs=7", "name=y", "flag=true", "target=0.25", "grid.a=1e-3,3e-3",
         "net.widths=4,8,16", "net.dropout=0"],
    )  # fmt: skip
    assert got == Settings(7, "y", True, 0.25, {"a": (1e-3, 3e-3)}, Inner((4, 8, 16), 0.0))
    assert apply_overrides(got, ["target=none"]).target is None
    assert Settings().grid == {"a": (0.1,)}  # never modified
    assert flatten(Settings()) == {
        "epochs": 4, "name": "x", "flag": False, "target": None, "grid.a": (0.1,),
        "net.widths": (8, 16), "net.dropout": 0.3,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("epochs=1.5", "--set epochs: expected an integer, got '1.5'"),
        ("flag=maybe", "--set flag: expected true or false, got 'maybe'"),
        ("net.dropout=nan", "--set net.dropout: expected a finite number, got 'nan'"),
        ("net.widths=4,x", "--set net.widths: expected an integer, got 'x'"),
        ("net=1", "--set net: a group of settings; set its entries: net.widths, net.dropout"),
        ("epochs.x=1", "--set epochs.x: 'epochs' is a single setting, not a group"),
        ("grid.b=1", "--set grid.b: unknown setting 'b'; expected one of a"),
        ("=1", "--set: expected KEY=VALUE, got '=1'"),
        ("epochs=none", "--set epochs: this setting cannot be none"),
    ],
)
def test_set_refuses_what_does_not_fit(assignment: str, message: str) -> None:
    with pytest.raises(ValueError, match=r".") as err:
        apply_overrides(Settings(), [assignment])
    assert str(err.value) == message


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser under it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _parsers(sub)
    return found


def test_help_texts_name_no_project_internals() -> None:
    """Issue 30: ``bench --help`` named .ci/zoo-torch29. A user's help text names commands and
    files a user has, never this project's CI."""
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        for word in (".ci/", "CI ", "CI,", "CI)", "landing"):
            assert word not in text, (parser.prog, word)
