"""``weightnorm convert``: rewrite a checkpoint between weight-norm formats.

A file whose name ends in ``.safetensors`` is read and written as safetensors (the
``safetensors`` extra, :mod:`._safetensors`); any other name as ``torch.save``'s format (torch
alone). Everything that can be wrong with the input is found before anything is written: the
output's folder, the files (each unreadable kind named), the checkpoint's layout, whether the
output's format can hold it, and every state dict in it are checked and converted in memory,
then the result is written atomically (the output may be the input).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _safetensors
from ._common import UsageError, check_writable_file, fail

if TYPE_CHECKING:
    from ..formats import ConversionReport

__all__ = ["add_parser", "run"]


# --- reading a checkpoint -------------------------------------------------------------------------

#: How torch's legacy (pre-zip) format starts: its magic number, pickled as a LONG1.
_LEGACY_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def _read_checkpoint(path: str, unsafe_load: bool, what: str) -> tuple[Any, dict[str, str] | None]:
    """The object in the checkpoint at ``path`` and, for a safetensors file, its header's
    metadata (``None`` for torch's format), or a one-line :class:`UsageError` that says what
    the file is instead (``what`` names the file's role: ``""`` or ``"--like "``)."""
    import io
    import os
    import warnings

    import torch

    if not os.path.exists(path):
        raise UsageError(f"{what}{path} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{what}{path} is a folder; expected a checkpoint file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise UsageError(f"cannot read {what}{path}: {err.strerror or err}") from None
    if _safetensors.is_safetensors(path):
        try:
            return _safetensors.load(raw)
        except Exception as err:
            raise UsageError(_why_not_safetensors(f"{what}{path}", raw, err)) from None
    try:
        with warnings.catch_warnings():  # torch's warnings on odd files would add lines
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=not unsafe_load)
    except Exception as err:
        raise UsageError(_why_unreadable(f"{what}{path}", raw, err, unsafe_load)) from None
    return obj, None


def _why_not_safetensors(name: str, raw: bytes, err: Exception) -> str:
    """One line: what the file ``raw``, named ``*.safetensors``, that safetensors refused
    (``err``) holds instead."""
    import re

    if not _safetensors.is_damage(err):  # a valid file, with a tensor type torch lacks here
        reason = f"{type(err).__name__}: {_reason(err)}"
        return f"{name}: safetensors cannot read it into torch tensors ({reason})"
    not_ours = f"{name} is not a safetensors file"
    if not raw:
        return f"{not_ours}: empty file"
    size = int.from_bytes(raw[:8], "little")
    if raw[8:9] == b"{" and size <= _MAX_HEADER:  # a header size, then JSON: a damaged file
        if size > len(raw) - 8:
            return (
                f"{name} is a truncated safetensors file: {len(raw)} bytes, shorter than its "
                f"own header ({size} bytes)"
            )
        reason = re.sub(r"^Error while deserializing( header)?:\s*", "", _reason(err))
        return f"{name} is a damaged or truncated safetensors file ({reason})"
    kind = _what_else(raw)
    if kind is None:
        return f"{not_ours}: unrecognized content"
    if kind.startswith("a PyTorch checkpoint"):
        return f"{not_ours} but {kind}: name it *.pt to convert it"
    return f"{not_ours}: it holds text" if kind == "text" else f"{not_ours} but {kind}"


def _what_else(raw: bytes) -> str | None:
    """What the non-empty file ``raw`` holds, by its first bytes: ``"a PyTorch checkpoint
    (...)"``, another kind, ``"text"`` or ``None`` (unrecognized)."""
    import io
    import zipfile

    if raw.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
        except zipfile.BadZipFile:
            return "a damaged zip archive"
        if any(n.endswith("/constants.pkl") for n in names):
            return "a TorchScript archive (torch.jit.save)"
        if any(n.endswith("/data.pkl") for n in names):
            return "a PyTorch checkpoint (torch.save)"
        return "a zip archive"
    if raw.startswith(b"\x80"):
        if _LEGACY_MAGIC in raw[:32]:
            return "a PyTorch checkpoint (torch.save, legacy format)"
        return "a Python pickle"
    if raw.startswith(_LFS_POINTER):
        return _LFS_KIND
    return "text" if _is_text(raw) else None


#: The largest header safetensors reads (100 MB): a larger size is not one.
_MAX_HEADER = 100_000_000

#: How a Git LFS pointer starts: the file a clone without git-lfs leaves instead of the real one.
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_LFS_KIND = "a Git LFS pointer (the file itself was never fetched: run git lfs pull)"


def _why_unreadable(name: str, raw: bytes, err: Exception, unsafe_load: bool) -> str:
    """One line: what the file ``raw`` that torch.load refused holds, and what to do."""
    import io
    import zipfile

    not_ours = f"{name} is not a PyTorch checkpoint"
    if not raw:
        return f"{not_ours}: empty file"
    if raw.startswith(b"PK\x03\x04"):
        try:
            names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
        except zipfile.BadZipFile:
            return f"{not_ours}: a damaged or truncated zip archive"
        if any(n.endswith("/constants.pkl") for n in names):
            return (
                f"{not_ours} but a TorchScript archive (torch.jit.save): load it with "
                "torch.jit.load and torch.save its state_dict()"
            )
        if not any(n.endswith("/data.pkl") for n in names):
            return f"{not_ours}: a zip archive that torch.save did not write (no data.pkl in it)"
        refused = [] if unsafe_load else _refused_globals_zip(raw, err)
    elif raw.startswith(b"\x80"):
        if _LEGACY_MAGIC not in raw[:32]:
            if not _whole_pickles(raw, 1):
                return f"{not_ours}: unrecognized content (a damaged pickle?)"
            return f"{not_ours} but a Python pickle (torch.save did not write it)"
        if not _whole_pickles(raw, 4):
            return f"{name} is a damaged or truncated PyTorch checkpoint (legacy format)"
        refused = [] if unsafe_load else _refused_globals_legacy(err)
    elif _is_safetensors(raw):
        return f"{not_ours} but a safetensors file: name it *{_safetensors.SUFFIX} to convert it"
    elif raw.startswith(_LFS_POINTER):
        return f"{not_ours} but {_LFS_KIND}"
    elif _is_text(raw):
        return f"{not_ours}: it holds text"
    else:
        return f"{not_ours}: unrecognized content (neither a torch.save zip archive nor a pickle)"
    if refused:
        return _refused_message(name, refused)
    return f"{name}: torch.load failed: {_reason(err)}"


def _refused_message(name: str, refused: list[str]) -> str:
    more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
    shown = ", ".join(sorted(refused)[:3]) + more
    trust = "if you trust the file, pass --unsafe-load (loading it runs code from it)"
    if any(g.startswith("torch.nn.modules.") for g in refused):
        return (
            f"{name} holds a pickled module ({shown}), not a state dict: save model.state_dict() "
            f"instead, or, {trust}"
        )
    return (
        f"{name} holds pickled Python objects that weights-only loading refuses ({shown}): "
        f"{trust}; for a model saved with torch.save(model), save model.state_dict() instead"
    )


def _refused_globals_zip(raw: bytes, err: Exception) -> list[str]:
    """The classes and functions pickled in a torch.save zip file that weights-only loading
    refuses (before torch 2.5, which cannot list them, the one its error ``err`` names)."""
    import io

    import torch

    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if find is None:
        return _refused_globals_legacy(err)
    try:
        return [str(name) for name in find(io.BytesIO(raw))]
    except Exception:  # a pickle too damaged to list
        return []


def _whole_pickles(raw: bytes, count: int) -> bool:
    """Whether ``raw`` starts with ``count`` whole pickles (read, not run). The legacy format
    starts with four (magic number, protocol version, system info, the object); in a cut-off
    one, a cut-off name reads to torch as a refused global."""
    import io
    import pickletools

    stream = io.BytesIO(raw)
    try:
        for _ in range(count):
            for _ in pickletools.genops(stream):
                pass
    except Exception:  # whatever a damaged pickle raises
        return False
    return True


def _refused_globals_legacy(err: Exception) -> list[str]:
    """The global torch's weights-only unpickler names in its error (the legacy format)."""
    import re

    return re.findall(r"GLOBAL (\S+) was not an allowed global", str(err))


def _is_safetensors(raw: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    if len(raw) < 10:
        return False
    size = int.from_bytes(raw[:8], "little")
    return 0 < size <= len(raw) - 8 and raw[8:9] == b"{"


def _is_text(raw: bytes) -> bool:
    import codecs

    sample = raw[:1024]
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return "\x00" not in text and all(c.isprintable() or c.isspace() for c in text)


def _reason(err: Exception) -> str:
    """torch's error as one short line: its formatting (ANSI escapes) and advice dropped."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err))
    text = text.split("WeightsUnpickler error:", 1)[-1]
    text = text.split("Check the documentation of torch.load", 1)[0]
    text = " ".join(text.split())
    if not text:
        return "unexpected end of file" if isinstance(err, EOFError) else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# --- finding the state dicts ----------------------------------------------------------------------


def _is_optimizer_state(value: object) -> bool:
    return isinstance(value, dict) and "state" in value and "param_groups" in value


def _is_state_dict(value: object) -> bool:
    """A model's state dict: a dict of str keys holding at least one tensor."""
    import torch

    return (
        isinstance(value, dict)
        and bool(value)
        and not _is_optimizer_state(value)
        and all(isinstance(k, str) for k in value)
        and any(isinstance(v, torch.Tensor) for v in value.values())
    )


@dataclass(frozen=True)
class _Layout:
    """Where a checkpoint's state dicts are: ``chosen`` to convert (``None``: the top level is
    one), the ``others`` that ``--key`` leaves, and the optimizer states (never converted)."""

    chosen: list[str | None]
    others: list[str]
    optimizers: list[str]


def _layout(obj: object, key: str | None) -> _Layout:
    """The state dicts of the checkpoint ``obj``; a ValueError if it holds none (or not ``key``)."""
    from torch import Tensor, nn

    from ..formats import detect_formats

    if isinstance(obj, nn.Module):
        raise ValueError(
            f"expected a state dict, got a pickled {type(obj).__name__} module: save "
            "model.state_dict() and convert that"
        )
    if not isinstance(obj, dict):
        raise ValueError(
            f"expected a state dict (a dict of tensors) or a dict of them, got {type(obj).__name__}"
        )
    nested = [k for k, v in obj.items() if isinstance(k, str) and _is_state_dict(v)]
    optimizers = [str(k) for k, v in obj.items() if _is_optimizer_state(v)]
    flat = not nested and _is_state_dict(obj)
    if key is not None:
        if key in nested:
            return _Layout([key], [k for k in nested if k != key], optimizers)
        if key in optimizers:
            raise ValueError(f"--key {key}: an optimizer state, not a model's state dict")
        if flat:
            raise ValueError(f"--key {key}: the checkpoint is one state dict, not a dict of them")
        if key in obj:
            raise ValueError(f"--key {key}: not a state dict (a dict of tensors)")
        have = f"its state dicts: {', '.join(nested)}" if nested else "it holds no state dict"
        raise ValueError(f"--key {key}: no such entry in the checkpoint; {have}")
    if flat:
        return _Layout([None], [], [])
    if not nested:
        raise ValueError("the file holds no state dict (no dict of tensors found)")
    top = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    normalized = sorted(detect_formats(top))
    if normalized:
        raise ValueError(
            f"weight-normalized tensors at the top level ({', '.join(normalized[:3])}) beside "
            f"state dicts under {', '.join(nested)}: expected one or the other"
        )
    return _Layout(list(nested), [], optimizers)


def _template(path: str, unsafe_load: bool, key: str | None) -> dict[str, Any]:
    """The state dict of the ``--like`` checkpoint: its only one, or the one under ``key``."""
    obj, _ = _read_checkpoint(path, unsafe_load, "--like ")
    try:
        layout = _layout(obj, key)
    except ValueError as err:
        raise UsageError(f"--like {path}: {err}") from None
    if len(layout.chosen) > 1:
        raise UsageError(
            f"--like {path} holds several state dicts ({', '.join(map(str, layout.chosen))}): "
            "choose one with --key"
        )
    (where,) = layout.chosen
    state_dict: dict[str, Any] = obj if where is None else obj[where]
    return state_dict


# --- the command ---------------------------------------------------------------------------------


def _counts(report: ConversionReport, to: str) -> str:
    text = f"{report.renamed} renamed, {report.folded} folded, {report.normalized} normalized"
    if report.resplit:
        text += f", {report.resplit} re-split along --like's dim"
    if report.kept:
        text += f", {report.kept} already {to}"
    return text


def _check_something_to_do(
    args: argparse.Namespace, reports: dict[str | None, ConversionReport]
) -> None:
    """:class:`UsageError` when the checkpoint has no weight norm and none was asked for: the
    output would be the input, and an exit status of 0 would hide that."""
    if any(r.renamed or r.kept or r.folded or r.normalized or r.resplit for r in reports.values()):
        return
    none = f"{args.input} holds no weight-normalized parameter"
    if args.to == "plain":
        raise UsageError(f"{none}: it is plain already, and there is nothing to fold")
    if args.like is not None:
        raise UsageError(
            f"{none}, and no weight norm of --like {args.like} matches one of its keys: "
            "expected a template of the model this checkpoint belongs to"
        )
    raise UsageError(
        f"{none}, so --to {args.to} alone would change nothing; say which plain weights to "
        "normalize: --like MODEL (a checkpoint of the normalized model: its weight norms, "
        "along its unit dims) or --include PATTERN (keys matching an fnmatch pattern, along "
        "dim 0; repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    import copy
    import io

    import torch

    from .. import WeightNormError
    from ..experiments._io import atomic_write_bytes
    from ..formats import convert_with_report

    check_writable_file(args.output, "output")
    to_safetensors = _safetensors.is_safetensors(args.output)
    if to_safetensors:
        _safetensors.require(args.output, writing=True)
    for path in (args.input, args.like):
        if path is not None and _safetensors.is_safetensors(path):
            _safetensors.require(path, writing=False)
    obj, metadata = _read_checkpoint(args.input, args.unsafe_load, "")
    try:
        layout = _layout(obj, args.key)
    except ValueError as err:
        raise UsageError(f"{args.input}: {err}") from None
    if to_safetensors:
        _check_safetensors_output(args.output, args.input, obj, layout)
    if len(layout.chosen) > 1 and (args.like is not None or args.include):
        raise UsageError(
            f"{args.input} holds several state dicts ({', '.join(map(str, layout.chosen))}): "
            "--like and --include describe one model; choose its state dict with --key"
        )
    like = None if args.like is None else _template(args.like, args.unsafe_load, args.key)
    reports: dict[str | None, ConversionReport] = {}
    for where in layout.chosen:
        state_dict = obj if where is None else obj[where]
        try:
            reports[where] = convert_with_report(
                state_dict, to=args.to, include=args.include, like=like
            )
        except WeightNormError as err:
            inside = "" if where is None else f"[{where!r}]"
            raise UsageError(f"{args.input}{inside}: {err}") from None
    _check_something_to_do(args, reports)
    result: Any = reports[None].state_dict if None in reports else copy.copy(obj)
    for where, report in reports.items():
        if where is not None:
            result[where] = report.state_dict
    notes: list[str] = []
    if to_safetensors:
        # the input's header as it was; from a torch file, what transformers' save_pretrained
        # writes (the tensors are PyTorch's)
        header = {"format": "pt"} if metadata is None else metadata
        try:
            data, shared = _safetensors.to_bytes(result, header or None)
        except Exception as err:  # what the checks before the work did not foresee
            raise UsageError(f"cannot write {args.output} as safetensors: {_reason(err)}") from None
        if shared:
            notes.append(f"tensors that shared storage written as copies: {_shown(shared)}")
    else:
        buffer = io.BytesIO()
        torch.save(result, buffer)
        data = buffer.getvalue()
        # {"format": "pt"} says what a .pt file says by itself; any other entry is lost
        dropped = [k for k, v in (metadata or {}).items() if (k, v) != ("format", "pt")]
        if dropped:
            notes.append(f"safetensors metadata not kept (a .pt file has none): {_shown(dropped)}")
    try:
        atomic_write_bytes(args.output, data)
    except OSError as err:
        return fail(f"cannot write {args.output}: {err.strerror or err}")
    parts = [
        _counts(report, args.to) if where is None else f"{where}: {_counts(report, args.to)}"
        for where, report in reports.items()
    ]
    unchanged = [f"{k} (not --key)" for k in layout.others]
    unchanged += [f"{k} (optimizer state)" for k in layout.optimizers]
    if unchanged:
        parts.append(f"copied unchanged: {', '.join(unchanged)}")
    print(f"wrote {args.output} ({args.to} format): {'; '.join(parts + notes)}")
    return 0


def _shown(names: list[str], most: int = 3) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _check_safetensors_output(output: str, source: str, obj: Any, layout: _Layout) -> None:
    """:class:`UsageError` unless the checkpoint ``obj`` (read from ``source``, laid out as
    ``layout``) can be written to the safetensors file ``output``: one flat dict of tensors."""
    if layout.chosen != [None]:
        raise UsageError(
            f"{output}: a safetensors file holds one flat dict of tensors, and {source} holds "
            f"several entries ({_shown([str(k) for k in obj], 4)}): write a .pt file"
        )
    why = _safetensors.refusal(obj)
    if why is not None:
        raise UsageError(f"{output}: {why}: write a .pt file")


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
        "checkpoint came from. --like and --include normalize plain weights. A checkpoint "
        "with no weight norm is refused (exit 2) unless --like or --include says which "
        "weights to normalize: converting it would change nothing. "
        "A checkpoint holding several state dicts (e.g. generator and discriminator) has "
        "each converted; optimizer states and other entries are copied unchanged. "
        "Checkpoints are loaded with torch.load(weights_only=True): arbitrary pickled "
        "objects are refused unless --unsafe-load is given. A file named *.safetensors is "
        "read and written as safetensors (pip install 'weightnorm[safetensors]'; it holds one "
        "flat state dict, and keeps its metadata header), any other as torch.save's format. "
        "Nothing is written unless the whole checkpoint converts.",
    )
    c.add_argument("input", help="the checkpoint to read (*.safetensors or torch.save's)")
    c.add_argument(
        "output",
        help="where to write the converted checkpoint (its folder must exist); *.safetensors "
        "is written as safetensors",
    )
    c.add_argument("--to", required=True, choices=list(FORMATS), help="the format to write")
    c.add_argument(
        "--like",
        metavar="TEMPLATE",
        help="a checkpoint of the target model (*.safetensors or torch.save's): its "
        "normalized parameters are normalized in the output (with its unit dims), its plain "
        "ones folded",
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
        help="convert only the state dict under this entry of the checkpoint (the others "
        "are copied unchanged); with --like, the template's state dict is also taken "
        "from this entry. Without it, every state dict is converted",
    )
    c.add_argument(
        "--unsafe-load",
        action="store_true",
        help="allow arbitrary pickled objects (executes code from the file: only for "
        "checkpoints you trust)",
    )
    c.set_defaults(func=run)
