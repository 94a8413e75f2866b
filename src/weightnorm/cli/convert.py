"""``weightnorm convert``: rewrite a checkpoint between weight-norm formats (needs only torch)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import fail

__all__ = ["add_parser", "run"]


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


def run(args: argparse.Namespace) -> int:
    import io

    import torch

    from ..experiments._io import atomic_write_bytes
    from ..formats import convert_with_report

    like: dict[str, Any] | None = None
    try:
        obj = _read_checkpoint(args.input, args.unsafe_load)
        if args.like is not None:
            like_obj = _read_checkpoint(args.like, args.unsafe_load)
    except ValueError as err:
        return fail(str(err))
    try:
        state_dict, key = _find_state_dict(obj, args.key)
    except ValueError as err:
        return fail(f"{args.input}: {err}")
    if args.like is not None:
        try:
            like, _ = _find_state_dict(like_obj, args.key)
        except ValueError as err:
            return fail(f"--like {args.like}: {err}")
    try:
        report = convert_with_report(state_dict, to=args.to, include=args.include, like=like)
    except ValueError as err:
        return fail(f"{args.input}: {err}")
    converted = report.state_dict
    result: Any = converted if key is None else {**obj, key: converted}
    buffer = io.BytesIO()
    torch.save(result, buffer)
    try:
        atomic_write_bytes(args.output, buffer.getvalue())
    except OSError as err:
        return fail(f"cannot write {args.output}: {err.strerror or err}")
    where = f" (under {key!r})" if key else ""
    summary = f"{report.renamed} renamed, {report.folded} folded, {report.normalized} normalized"
    if report.resplit:
        summary += f", {report.resplit} re-split along --like's dim"
    if report.kept:
        summary += f", {report.kept} already {args.to}"
    print(
        f"wrote {args.output}: {len(converted)} entries in the {args.to} format{where}; "
        f"parameters: {summary}"
    )
    return 0


def add_parser(sub: Any) -> None:
    from ..formats import FORMATS

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
    c.add_argument(
        "--like",
        metavar="TEMPLATE",
        help="a checkpoint of the target model: its normalized parameters are "
        "normalized in the output (with its unit dims), its plain ones "
        "folded",
    )
    c.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also normalize the plain weights (>= 2 dims) whose keys match this "
        "fnmatch pattern, along dim 0; repeatable",
    )
    c.add_argument(
        "--key",
        help="the entry holding the state dict in a nested checkpoint, "
        "in the input and the --like TEMPLATE (default: detected; tried: "
        f"{', '.join(_NESTED_KEYS)})",
    )
    c.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow arbitrary pickled objects (executes code from the file: only for "
        "checkpoints you trust)",
    )
    c.set_defaults(func=run)
