"""``weightnorm reproduce [EXPERIMENT]``: the paper's experiments, resumable, with reports.

``weightnorm reproduce`` alone is the main job (``comparison``); the paper's further experiments
are subcommands, each with only the options that apply to it. Any setting of an experiment's
configuration is overridden with ``--set KEY=VALUE`` (repeatable; the keys and defaults are in
each subcommand's ``--help``), and the resolved configuration is saved beside the results.
Every option is checked (the extra installed, the output folder writable, the device present,
the settings valid) before any training.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ._common import (
    UsageError,
    check_device,
    check_writable_dir,
    fail,
    positive,
    require_extra,
)

__all__ = ["add_parser", "default_experiment"]

#: What the experiments import beyond torch (the ``experiments`` extra).
_NEEDS = ("numpy", "mnist1d", "sklearn", "matplotlib", "tqdm")

#: name -> one-line help. Each further experiment is the module ``weightnorm.experiments.<name>``
#: (``-`` spelled ``_``) with ``run_<name>(out, settings, ...)``, its settings class and their
#: ``QUICK`` budget.
_EXPERIMENTS = {
    "comparison": "the main job: the paper's comparison of parameterizations",
    "conditioning": "the loss Hessian's spectrum, normal vs weight norm",
    "vae": "a convolutional VAE on binarized digits",
    "recurrent": "an LSTM over MNIST-1D",
    "dqn": "DQN on CartPole-v1 (normal, weight norm, batch norm; needs gymnasium)",
    "effective-lr": "||v||, the effective step and learning-rate robustness; forced weight norm",
}


def default_experiment(argv: list[str]) -> list[str]:
    """``reproduce [options]`` means ``reproduce comparison [options]`` (the main job)."""
    if argv[:1] == ["reproduce"]:
        rest = argv[1:]
        if not rest or (rest[0] not in _EXPERIMENTS and rest[0] not in ("-h", "--help")):
            return ["reproduce", "comparison", *rest]
    return argv


class _Progress:
    """tqdm on a terminal, plain lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.enabled:
            return
        if sys.stderr.isatty():
            self.start(total)
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(message[-60:])
        else:
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    def start(self, total: int) -> None:
        """Open the overall bar (on a terminal) before the first run finishes."""
        if self.enabled and self.bar is None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="run", dynamic_ncols=True)

    def epoch(self, run: str, epoch: int, epochs: int) -> None:
        """Progress inside a run (shown on a terminal only: plain output gets one line a run)."""
        if self.enabled and self.bar is not None:
            self.bar.set_postfix_str(f"{run}: epoch {epoch}/{epochs}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _overrides(base: Any, assignments: list[str]) -> Any:
    from ..experiments.settings import apply_overrides

    try:
        return apply_overrides(base, assignments)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _prepare(args: argparse.Namespace, needs: tuple[str, ...]) -> tuple[str, int]:
    """Checks shared by every experiment; the output folder and the worker count."""
    require_extra("experiments", needs, "weightnorm reproduce")
    name = args.config if args.experiment == "comparison" else args.experiment
    out = args.out or os.path.join("results", name + ("-quick" if args.quick else ""))
    check_writable_dir(out, "--out")
    return out, args.workers or max(1, (os.cpu_count() or 1) // args.threads)


def _interrupted(progress: _Progress, out: str) -> int:
    progress.close()
    print(f"\ninterrupted: finished runs are kept in {out}/runs; rerun to resume", file=sys.stderr)
    return 130


def _finished(out: str, start: float) -> int:
    minutes = (time.perf_counter() - start) / 60
    print(f"report: {os.path.join(out, 'report.md')} ({minutes:.1f} min)")
    return 0


def _save_resolved(out: str, resolved: dict[str, Any]) -> None:
    import json

    from ..experiments._io import atomic_write_text

    atomic_write_text(os.path.join(out, "config.json"), json.dumps(resolved, indent=1, default=str))


def _comparison(args: argparse.Namespace) -> int:
    from ..experiments.configs import CONFIGS

    named = CONFIGS[args.config]
    if named.name == "cifar10" and not args.data_dir:
        raise UsageError("--config cifar10 needs --data-dir (the CIFAR-10 python batches)")
    if args.data_dir and named.name != "cifar10":
        raise UsageError("--data-dir applies to --config cifar10 only")
    out, workers = _prepare(args, _NEEDS)
    if args.device:
        device = check_device(args.device)
    else:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    tree = _overrides(named.tree(args.quick), args.set)
    try:
        settings, network, data_args = named.split(tree)
        settings.validate()
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    if args.data_dir:
        data_args["data_dir"] = args.data_dir

    from ..experiments.data import CifarFormatError
    from ..experiments.report import write_report
    from ..experiments.runner import run_comparison

    rank = _init_distributed(device)  # under torchrun: one process group, runs in lockstep
    workers = 1 if rank is not None else workers
    progress = _Progress(args.progress and not rank)
    start = time.perf_counter()
    resolved = {
        "command": "reproduce comparison",
        "config": named.name,
        "quick": args.quick,
        "out": out,
        "workers": workers,
        "threads": args.threads,
        "device": device,
        "settings": {**asdict(settings), "network": network, "data": data_args},
        "set": args.set,
    }
    if not rank:
        _save_resolved(out, resolved)
    try:
        try:
            data = named.load(**data_args)
            factory = named.factory(data, network)
            factory(norm="none")  # a bad network setting fails here, before any training
        except TypeError as err:
            raise UsageError(f"--set: {err}") from None
        result = run_comparison(
            settings,
            factory,
            data,
            out,
            workers=workers,
            progress=progress,
            epoch_progress=progress.epoch,
            device=device,
            threads=args.threads,
        )
    except (ValueError, CifarFormatError) as err:
        progress.close()
        return fail(str(err))
    except KeyboardInterrupt:
        return _interrupted(progress, out)
    progress.close()
    if rank:  # rank 0 writes
        return 0
    write_report(result, out, resolved=resolved, quick=args.quick)
    return _finished(out, start)


def _other(args: argparse.Namespace) -> int:
    import importlib

    needs = (*_NEEDS, "gymnasium") if args.experiment == "dqn" else _NEEDS
    out, workers = _prepare(args, needs)
    name = args.experiment.replace("-", "_")
    module = importlib.import_module(f"weightnorm.experiments.{name}")
    base = module.QUICK if args.quick else type(module.QUICK)()
    settings = _overrides(base, args.set)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as err:
            raise UsageError(f"--set: {err}") from None
    run: Callable[..., Any] = getattr(module, f"run_{name}")
    progress = _Progress(args.progress)
    _save_resolved(
        out,
        {
            "command": f"reproduce {args.experiment}",
            "quick": args.quick,
            "out": out,
            "workers": workers,
            "threads": args.threads,
            "settings": asdict(settings),
            "set": args.set,
        },
    )
    start = time.perf_counter()
    try:
        run(
            out, settings, workers=workers, threads=args.threads, progress=progress,
            smoke=args.quick,
        )  # fmt: skip
    except KeyboardInterrupt:
        return _interrupted(progress, out)
    progress.close()
    return _finished(out, start)


def _init_distributed(device: str) -> int | None:
    """Join the process group torchrun describes (gloo on CPU); the rank, or None if alone."""
    import torch

    from ..experiments.jobs import distributed

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, _ = distributed()
    return rank


def _settings_help(defaults: Any) -> str:
    from ..experiments.settings import flatten

    items = ", ".join(f"{k}={_show(v)}" for k, v in flatten(defaults).items())
    return f"override a setting (repeatable); settings and defaults: {items}"


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value).lower() if value is None or isinstance(value, bool) else str(value)


def add_parser(sub: Any) -> None:
    """Add ``reproduce`` and its experiments to ``sub`` (argparse subparsers)."""
    import importlib
    import textwrap

    from ..experiments.configs import CONFIGS

    r = sub.add_parser(
        "reproduce",
        help="the paper's experiments, with reports and plots (extra 'experiments')",
        description="Run one of the paper's experiments and write report.md, results.json/csv "
        "and PNG plots. Without an experiment name: the comparison (the main job). Finished "
        "runs are kept: rerun the same command to resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    experiments = r.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: tiny budget, same pipeline, no verdicts (< 1 min)",
    )
    common.add_argument("--out", help="report folder (default: results/<name>[-quick])")
    common.add_argument(
        "--workers", type=positive, help="parallel runs (default: CPU count / --threads)"
    )
    common.add_argument(
        "--threads",
        type=positive,
        default=1,
        help="torch threads of every run, in every worker; part of each run's "
        "key, since the numbers depend on it (default: 1)",
    )
    common.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress lines on stderr"
    )
    # `reproduce --help` lists the experiments' options too (they are the subcommands' own)
    listing = common._get_formatter()
    listing.add_arguments(common._actions)
    r.epilog = (
        "options of every experiment (reproduce [EXPERIMENT] [options]; EXPERIMENT --help\n"
        "adds its settings):\n"
        + textwrap.indent(listing.format_help().rstrip(), "  ")
        + "\n\nexamples:\n"
        "  weightnorm reproduce --quick     the main job as a smoke test (under a minute)\n"
        "  weightnorm reproduce             the main job\n"
        "  weightnorm reproduce vae --quick another experiment, as a smoke test"
    )
    for name, summary in _EXPERIMENTS.items():
        if name == "comparison":
            defaults: Any = CONFIGS["mnist1d"].tree(quick=False)
            description = (
                "Train every method (normal, weight norm with and without data-dependent init, "
                "batch norm, mean-only BN, weight norm + mean-only BN) under the paper's "
                "optimizer schedule, each with its learning rate chosen on a validation split "
                "over several seeds; report each of the paper's claims as an effect with its 95% "
                "interval over 10 seeds and a verdict (held, did not hold, no difference larger "
                "than its margin, inconclusive), with every method's test error and step time."
            )
        else:
            module = importlib.import_module(f"weightnorm.experiments.{name.replace('-', '_')}")
            defaults = type(module.QUICK)()
            description = (module.__doc__ or summary).strip()
        p = experiments.add_parser(name, parents=[common], help=summary, description=description)
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help=_settings_help(defaults)
        )
        if name == "comparison":
            configs = "; ".join(f"{n}: {c.description}" for n, c in CONFIGS.items())
            p.add_argument(
                "--config",
                choices=list(CONFIGS),
                default="mnist1d",
                help=f"data, network and budget (default: mnist1d); {configs}",
            )
            p.add_argument("--data-dir", help="the CIFAR-10 python batches (--config cifar10)")
            p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
            p.set_defaults(func=_comparison)
        else:
            p.set_defaults(func=_other)
