"""The ``weightnorm`` command line: ``reproduce`` (the main job), ``convert`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a one-line message for bad values (its default too)."""


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    def progress(msg: str) -> None:
        if args.progress:
            print(msg, file=sys.stderr, flush=True)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    runs: list[tuple[str, str | None]] = [(args.device, args.autocast)]
    if args.device == "auto":
        runs = [("cpu", args.autocast)]
        if torch.cuda.is_available():  # the fused CUDA path; fp32 and bf16 autocast by default
            runs += [("cuda", a) for a in ([args.autocast] if args.autocast else [None, "bf16"])]
    models = args.models
    if args.zoo:
        from . import zoo

        models = models or list(zoo.ZOO)
    results = []
    try:
        for device, autocast in runs:
            results += bench.run_benchmarks(
                models=models,
                implementations=args.implementations,
                rounds=args.rounds,
                steps_per_round=args.steps,
                progress=progress,
                compiled=args.compile,
                stable_allocator=args.stable_allocator,
                device=device,
                autocast=autocast,
            )
        own = [m for m in models or bench.CPU_MODELS if m in bench.MODELS]
        extras = bench.run_extras(own) if args.extras and own else []
    except ValueError as err:
        return _fail(str(err))
    mode = "torch.compile" if args.compile else "eager"
    print(f"Training step (forward, backward, Adam), {mode}: time / plain model's time\n")
    print(bench.format_table(results))
    env = bench.environment()
    print(
        f"\nratios to the plain model, median [min-max] over {args.rounds} interleaved rounds; "
        f"torch {env['torch']}, {env['threads']} threads, {env['machine']}"
        + ("" if args.stable_allocator else ", default allocator")
    )
    print("\nPeak memory of a training step / plain model's\n")
    print(bench.format_memory_table(results))
    if extras:
        print("\nInference (eval, no_grad) and data-dependent init\n")
        print(bench.format_extras(extras))
    if args.json:
        from ._io import atomic_write_text

        settings = {k: vars(args)[k] for k in _BENCH_SETTINGS}
        atomic_write_text(args.json, bench.to_json(results, extras, settings))
    return 0


_BENCH_SETTINGS = ("models", "zoo", "implementations", "rounds", "steps", "compile", "threads",
                   "stable_allocator", "device", "autocast")  # fmt: skip


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


_EXPERIMENTS = ("comparison", "conditioning", "vae", "recurrent", "dqn")


def _paper_experiment(args: argparse.Namespace) -> int:
    """``--experiment conditioning|vae|recurrent|dqn``."""
    import dataclasses
    import os
    import time

    from .experiments import conditioning, generative

    only_comparison = {
        "--config": args.config != "mnist1d", "--methods": args.methods,
        "--optimizer": args.optimizer, "--lr-grid-adam": args.lr_grid_adam,
        "--lr-grid-sgd": args.lr_grid_sgd, "--widths": args.widths, "--samples": args.samples,
        "--data-dir": args.data_dir, "--batch-size": args.batch_size,
        "--target-train-error": args.target_train_error,
    }  # fmt: skip
    given = [flag for flag, value in only_comparison.items() if value]
    if given:
        return _fail(f"{', '.join(given)} apply to --experiment comparison only")
    table: dict[str, tuple[Any, Any, Any]] = {
        "conditioning": (
            conditioning.run_conditioning,
            conditioning.ConditioningSettings(),
            conditioning.QUICK,
        ),
        "vae": (generative.run_vae, generative.VAESettings(), generative.VAE_QUICK),
        "recurrent": (
            generative.run_recurrent,
            generative.RecurrentSettings(),
            generative.RECURRENT_QUICK,
        ),
        "dqn": (generative.run_dqn, generative.DQNSettings(), generative.DQN_QUICK),
    }
    run, full, quick = table[args.experiment]
    settings = quick if args.quick else full
    overrides: dict[str, Any] = {}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.epochs is not None:
        if not hasattr(settings, "epochs"):
            return _fail(f"--epochs does not apply to --experiment {args.experiment}")
        overrides["epochs"] = args.epochs
    settings = dataclasses.replace(settings, **overrides)
    out = args.out or os.path.join("results", args.experiment + ("-quick" if args.quick else ""))
    workers = args.workers or (os.cpu_count() or 1)
    progress = _Progress(args.progress)
    start = time.perf_counter()
    try:
        run(out, settings, workers=workers, progress=progress)
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted: finished runs are kept in {out}/runs; rerun to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    progress.close()
    minutes = (time.perf_counter() - start) / 60
    print(f"report: {os.path.join(out, 'report.md')} ({minutes:.1f} min)")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import os
    import time

    if args.experiment != "comparison":
        return _paper_experiment(args)

    from .experiments.configs import CONFIGS
    from .experiments.data import CifarFormatError
    from .experiments.report import write_report
    from .experiments.runner import run_comparison

    named = CONFIGS[args.config]
    out = args.out or os.path.join("results", named.name + ("-quick" if args.quick else ""))
    optimizers = (
        None
        if args.optimizer is None
        else (("adam", "sgd") if args.optimizer == "both" else (args.optimizer,))
    )
    base = named.quick if args.quick else named.comparison
    grid = dict(base.lr_grid)
    if args.lr_grid_adam:
        grid["adam"] = tuple(args.lr_grid_adam)
    if args.lr_grid_sgd:
        grid["sgd"] = tuple(args.lr_grid_sgd)
    settings = named.settings(
        args.quick,
        epochs=args.epochs,
        seeds=args.seeds,
        batch_size=args.batch_size,
        methods=tuple(args.methods) if args.methods else None,
        optimizers=optimizers,
        lr_grid=grid,
        target_train_error=args.target_train_error,
    )
    data_args = dict(named.quick_data_args if args.quick else named.data_args)
    if args.samples is not None:
        if named.name != "mnist1d":
            return _fail("--samples applies to --config mnist1d only")
        data_args["num_samples"] = args.samples
    if named.name == "cifar10":
        if not args.data_dir:
            return _fail("--config cifar10 needs --data-dir (the CIFAR-10 python batches)")
        data_args["data_dir"] = args.data_dir
    network = {"widths": tuple(args.widths)} if args.widths else {}
    device = args.device or ("cuda" if _cuda() else "cpu")
    rank = _init_distributed(device)  # under torchrun: one process group, runs in lockstep
    workers = 1 if rank is not None else (args.workers or (os.cpu_count() or 1))
    progress = _Progress(args.progress and not rank)
    start = time.perf_counter()
    try:
        settings.validate()
        data = named.load(**data_args)
        factory = named.factory(data, args.quick, **network)
        result = run_comparison(
            settings, factory, data, out, workers=workers, progress=progress,
            epoch_progress=progress.epoch, device=device,
        )  # fmt: skip
    except (ValueError, CifarFormatError) as err:
        progress.close()
        return _fail(str(err))
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted: finished runs are kept in {out}/runs; rerun to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    progress.close()
    if rank:  # rank 0 writes
        return 0
    resolved = {
        "command": "reproduce",
        "config": named.name,
        "quick": args.quick,
        "out": out,
        "workers": workers,
        "device": device,
        "data_args": {k: str(v) for k, v in data_args.items()},
        "network": {**(named.quick_network if args.quick else named.network), **network},
    }
    write_report(result, out, resolved=resolved)
    minutes = (time.perf_counter() - start) / 60
    print(f"report: {os.path.join(out, 'report.md')} ({minutes:.1f} min)")
    return 0


def _init_distributed(device: str) -> int | None:
    """Join the process group torchrun describes (gloo on CPU); the rank, or None if alone."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return int(dist.get_rank())


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _fail(message: str) -> int:
    print(f"weightnorm: error: {message}", file=sys.stderr)
    return 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="weightnorm",
        description="Weight normalization (Salimans & Kingma, 2016) for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_reproduce(sub)
    _add_convert(sub)
    b = sub.add_parser(
        "bench",
        help="time a training step against the plain model",
        description="Time forward+backward+Adam of each model under each weight norm "
        "implementation, as ratios to the plain model measured in the same rounds.",
    )
    b.add_argument("--models", nargs="+", help="models to time (default: all)")
    b.add_argument(
        "--zoo",
        action="store_true",
        help="time the zoo's real models (extra 'zoo'; default: every one of them)",
    )
    b.add_argument("--implementations", nargs="+", help="implementations (default: all)")
    b.add_argument("--rounds", type=_positive, default=15, help="interleaved rounds (default 15)")
    b.add_argument("--steps", type=_positive, default=10, help="steps per round (default 10)")
    b.add_argument("--json", help="also write every number to this JSON file")
    b.add_argument("--compile", action="store_true", help="run every model under torch.compile")
    b.add_argument("--threads", type=_positive, help="torch intra-op threads (default: torch's)")
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto (default): the CPU, and a CUDA GPU if there is one (fp32 and bf16 "
                   "autocast, large batches too)")  # fmt: skip
    b.add_argument("--autocast", choices=("bf16", "fp16"),
                   help="mixed precision for every implementation")  # fmt: skip
    b.add_argument("--default-allocator", dest="stable_allocator", action="store_false",
                   help="leave glibc malloc's heuristics as they are (default: keep freed "
                   "memory, see weightnorm.bench.stabilize_allocator)")  # fmt: skip
    b.add_argument("--no-extras", dest="extras", action="store_false",
                   help="skip the inference and data-init timings")  # fmt: skip
    b.add_argument("--no-progress", dest="progress", action="store_false")
    b.set_defaults(func=_bench)
    return parser


_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "generator", "net", "module")


def _find_state_dict(obj: Any, key: str | None) -> tuple[dict[str, Any], str | None]:
    """The state dict inside a checkpoint, and the key it sits under (None: the top level)."""
    import torch

    def is_state_dict(value: Any) -> bool:
        return (
            isinstance(value, dict)
            and bool(value)
            and all(isinstance(k, str) for k in value)
            and any(isinstance(v, torch.Tensor) for v in value.values())
        )

    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict (a dict of tensors), got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise ValueError(
                f"no key {key!r} in the checkpoint; its keys: {', '.join(map(str, obj))}"
            )
        if not is_state_dict(obj[key]):
            raise ValueError(f"checkpoint[{key!r}] is not a state dict (a dict of tensors)")
        return obj[key], key
    if is_state_dict(obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    nested = [k for k in _NESTED_KEYS if is_state_dict(obj.get(k))]
    if not nested:
        nested = [k for k, v in obj.items() if is_state_dict(v)]
    if len(nested) == 1:
        return obj[nested[0]], nested[0]
    if is_state_dict(obj):
        return obj, None
    if nested:
        raise ValueError(
            f"the checkpoint holds several state dicts ({', '.join(nested)}); choose one with --key"
        )
    raise ValueError("the file holds no state dict (no dict of tensors found)")


def _read_checkpoint(path: str, unsafe_load: bool) -> Any:
    """The object in a checkpoint file; a ValueError with a one-line message if it cannot be."""
    import io
    import pickle

    import torch

    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=not unsafe_load)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        hint = (
            ""
            if unsafe_load
            else ("; it may hold arbitrary Python objects: if you trust it, pass --unsafe-load")
        )
        raise ValueError(f"{path} is not a loadable checkpoint ({first}){hint}") from None
    except Exception as err:
        raise ValueError(f"{path} is not a PyTorch checkpoint: {err}") from None


def _convert(args: argparse.Namespace) -> int:
    import io

    import torch

    from ._io import atomic_write_bytes
    from .formats import _convert as convert_counting

    like: dict[str, Any] | None = None
    try:
        obj = _read_checkpoint(args.input, args.unsafe_load)
        if args.like is not None:
            like_obj = _read_checkpoint(args.like, args.unsafe_load)
    except ValueError as err:
        return _fail(str(err))
    try:
        state_dict, key = _find_state_dict(obj, args.key)
    except ValueError as err:
        return _fail(f"{args.input}: {err}")
    if args.like is not None:
        try:
            like, _ = _find_state_dict(like_obj, args.key)
        except ValueError as err:
            return _fail(f"--like {args.like}: {err}")
    try:
        converted, counts = convert_counting(
            state_dict, to=args.to, include=args.include, like=like
        )
    except ValueError as err:
        return _fail(f"{args.input}: {err}")
    result: Any = converted if key is None else {**obj, key: converted}
    buffer = io.BytesIO()
    torch.save(result, buffer)
    try:
        atomic_write_bytes(args.output, buffer.getvalue())
    except OSError as err:
        return _fail(f"cannot write {args.output}: {err.strerror or err}")
    where = f" (under {key!r})" if key else ""
    summary = f"{counts['renamed']} renamed, {counts['folded']} folded, "
    summary += f"{counts['normalized']} normalized"
    if counts["resplit"]:
        summary += f", {counts['resplit']} re-split along --like's dim"
    if counts["kept"]:
        summary += f", {counts['kept']} already {args.to}"
    print(
        f"wrote {args.output}: {len(converted)} entries in the {args.to} format{where}; "
        f"parameters: {summary}"
    )
    return 0


def _add_convert(sub: Any) -> None:
    from .formats import FORMATS

    c = sub.add_parser(
        "convert",
        help="convert a checkpoint between weight-norm formats",
        description="Rewrite a checkpoint's weight-normalized parameters as weightnorm/legacy "
        "keys (<name>_g, <name>_v), torch parametrize keys "
        "(parametrizations.<name>.original0/1) or plain folded weights. Any mix is read. "
        "By default only parameters that are already normalized are renamed (or folded, "
        "--to plain): plain weights stay plain, so the result loads into the model the "
        "checkpoint came from. --like and --include normalize plain weights. "
        "Checkpoints are loaded with torch.load(weights_only=True): arbitrary pickled "
        "objects are refused unless --unsafe-load is given.",
    )
    c.add_argument("input", help="checkpoint to read")
    c.add_argument("output", help="where to write the converted checkpoint")
    c.add_argument("--to", required=True, choices=list(FORMATS), help="target format")
    c.add_argument("--like", metavar="TEMPLATE",
                   help="a checkpoint of the target model: its normalized parameters are "
                   "normalized in the output (with its unit dims), its plain ones "
                   "folded")  # fmt: skip
    c.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also normalize the plain weights (>= 2 dims) whose keys match this "
                   "fnmatch pattern, along dim 0; repeatable")  # fmt: skip
    c.add_argument("--key", help="the entry holding the state dict in a nested checkpoint, "
                   "in the input and the --like TEMPLATE (default: detected; tried: "
                   f"{', '.join(_NESTED_KEYS)})")  # fmt: skip
    c.add_argument("--unsafe-load", action="store_true",
                   help="allow arbitrary pickled objects (executes code from the file: only for "
                   "checkpoints you trust)")  # fmt: skip
    c.set_defaults(func=_convert)


def _add_reproduce(sub: Any) -> None:
    from .experiments.configs import CONFIGS
    from .experiments.methods import METHODS

    r = sub.add_parser(
        "reproduce",
        help="the paper's comparison of parameterizations, with a report and plots",
        description="Train every method (normal, weight norm with and without data-dependent "
        "init, batch norm, mean-only BN, weight norm + mean-only BN) under the paper's "
        "optimizer schedule, each with its learning rate chosen on a validation split, over "
        "several seeds; write report.md, results.json/csv and PNG plots. Finished runs are "
        "kept: rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument(
        "--experiment",
        choices=_EXPERIMENTS,
        default="comparison",
        help="comparison: the paper's CIFAR-10 comparison (on --config data); conditioning: the "
        "loss Hessian's spectrum, normal vs weight norm; vae: a conv VAE on binarized digits; "
        "recurrent: an LSTM over MNIST-1D; dqn: DQN on CartPole-v1 (normal, WN, batch norm)",
    )
    configs = ", ".join(f"{n}: {c.description}" for n, c in CONFIGS.items())
    r.add_argument("--config", choices=list(CONFIGS), default="mnist1d", help=configs)
    r.add_argument("--quick", action="store_true", help="tiny budget, same pipeline (< 1 min)")
    r.add_argument("--out", help="report folder (default: results/<config>[-quick])")
    r.add_argument("--epochs", type=_positive, help="epochs per run (default: per config)")
    r.add_argument("--seeds", type=_positive, help="seeds per method (default: per config)")
    r.add_argument("--batch-size", type=_positive, help="minibatch size (default: per config)")
    r.add_argument("--methods", nargs="+", choices=list(METHODS), help="methods (default: all)")
    r.add_argument("--optimizer", choices=["adam", "sgd", "both"],
                   help="optimizers (default: per config; both for mnist1d)")  # fmt: skip
    r.add_argument("--lr-grid-adam", nargs="+", type=_positive_float, metavar="LR")
    r.add_argument("--lr-grid-sgd", nargs="+", type=_positive_float, metavar="LR")
    r.add_argument("--widths", nargs=2, type=_positive, metavar=("C1", "C2"),
                   help="channels of the two stages of the network")  # fmt: skip
    r.add_argument("--samples", type=_positive, help="MNIST-1D samples to generate")
    r.add_argument("--data-dir", help="CIFAR-10 python batches (--config cifar10)")
    r.add_argument("--target-train-error", type=_fraction,
                   help="training error for 'epochs to target' (default: per config)")  # fmt: skip
    r.add_argument("--workers", type=_positive, help="parallel runs (default: CPU count)")
    r.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.set_defaults(func=_reproduce)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``weightnorm`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
