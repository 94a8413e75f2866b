"""Checkpoint formats of weight-normalized models, and conversion between them.

Three formats are in the wild, per parameter ``<name>`` of a module at ``<prefix>``:

- ``"weightnorm"``: ``<prefix><name>_g`` and ``<prefix><name>_v``: this library's keys, which are
  also those of ``torch.nn.utils.weight_norm`` (HiFi-GAN, MelGAN, EnCodec, DAC checkpoints);
- ``"parametrize"``: ``<prefix>parametrizations.<name>.original0`` (g) and ``.original1`` (v), as
  written by ``torch.nn.utils.parametrizations.weight_norm``;
- ``"plain"``: ``<prefix><name>``, the folded weight ``w = g v / ||v||``.

:func:`convert_state_dict` reads any mix of them and writes one. Loading needs no conversion:
a module normalized by this library loads all three directly with ``load_state_dict``.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from . import functional as F
from ._errors import WeightNormError

__all__ = ["FORMATS", "Format", "convert_state_dict", "detect_formats"]

Format = Literal["weightnorm", "parametrize", "plain"]
FORMATS: tuple[Format, ...] = ("weightnorm", "parametrize", "plain")

_PARAMETRIZE = re.compile(
    r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.original(?P<i>[01])$"
)

#: plain keys weight-normalized by default when converting *to* a normalized format
DEFAULT_INCLUDE = ("*weight",)


def _pairs(state_dict: Mapping[str, Any]) -> dict[str, tuple[str, str, Format]]:
    """Normalized parameters: base key -> (g key, v key, format)."""
    found: dict[str, tuple[str, str, Format]] = {}
    for key in state_dict:
        match = _PARAMETRIZE.match(key)
        if match and match["i"] == "0":
            base = match["prefix"] + match["name"]
            v_key = key[:-1] + "1"
            if v_key in state_dict:
                found[base] = (key, v_key, "parametrize")
        elif key.endswith("_g") and key[:-2] + "_v" in state_dict:
            found[key[:-2]] = (key, key[:-2] + "_v", "weightnorm")
    return found


def detect_formats(state_dict: Mapping[str, Any]) -> dict[str, Format]:
    """The format of every normalized parameter in ``state_dict``, by its plain key.

    Example::

        >>> import torch
        >>> sd = {"conv.weight_g": torch.ones(2, 1), "conv.weight_v": torch.ones(2, 3),
        ...       "lin.parametrizations.weight.original0": torch.ones(1, 1),
        ...       "lin.parametrizations.weight.original1": torch.ones(1, 3)}
        >>> detect_formats(sd)
        {'conv.weight': 'weightnorm', 'lin.weight': 'parametrize'}
    """
    return {base: fmt for base, (_, _, fmt) in _pairs(state_dict).items()}


def _dim_and_groups(g: Tensor, v: Tensor, key: str) -> tuple[int | None, int]:
    if g.ndim == v.ndim + 1 and g.ndim >= 3 and g.shape[1] == 1:  # grouped ConvTranspose layout
        groups = int(g.shape[0])
        if tuple(g.shape) == F.g_shape(v.shape, 1, groups):
            return 1, groups
    dim = F.dim_of_g(g.shape, v.shape)
    if dim is False:
        raise WeightNormError(
            f"{key}: g of shape {tuple(g.shape)} matches no unit dimension of v of shape "
            f"{tuple(v.shape)}; expected a keep-dim shape such as {F.g_shape(v.shape, 0)}"
        )
    return dim, 1


def convert_state_dict(
    state_dict: Mapping[str, Any],
    to: Format,
    *,
    include: Iterable[str] = DEFAULT_INCLUDE,
    dim: int | None = 0,
    dims: Mapping[str, int | None] | None = None,
) -> OrderedDict[str, Any]:
    r"""Convert a state dict between the weight-norm checkpoint formats.

    Each normalized parameter is detected on its own (a mixed dict is fine), written in the
    ``to`` format, and keeps its position. Renames keep tensors exactly (the same objects);
    folding to ``"plain"`` computes :math:`w = g\,v/\|v\|` (the unit dim read from g's keep-dim
    shape). Converting a plain weight *to* a normalized format sets ``g = ||w||`` and ``v = w``
    for the keys matching ``include`` with at least 2 dimensions, along ``dim`` (or
    ``dims[key]``): a state dict does not say which layers are ConvTranspose (``dim=1``), so pass
    ``dims`` for those, or load the plain dict into the normalized model, which knows.
    Everything else (biases, buffers, optimizer-free metadata) passes through untouched.

    Args:
        state_dict (Mapping[str, Any]): the checkpoint's state dict.
        to (str): ``"weightnorm"``, ``"parametrize"`` or ``"plain"``.
        include (iterable of str, optional): ``fnmatch`` patterns of plain keys to normalize.
            Default: ``("*weight",)``.
        dim (int or None, optional): unit dim for those. Default: ``0``.
        dims (Mapping[str, int or None], optional): per-key unit dims. Default: none.

    Returns:
        A new ``OrderedDict`` (with the input's ``_metadata`` if it had one).

    Raises:
        WeightNormError: an unknown format, or a g whose shape fits no dim of its v.

    Example::

        >>> import torch, weightnorm as wn
        >>> theirs = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 2))
        >>> sd = wn.convert_state_dict(theirs.state_dict(), to="weightnorm")
        >>> list(sd)
        ['bias', 'weight_g', 'weight_v']
        >>> list(wn.convert_state_dict(sd, to="plain"))
        ['bias', 'weight']
    """
    if to not in FORMATS:
        raise WeightNormError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    pairs = _pairs(state_dict)
    g_keys = {g: base for base, (g, _, _) in pairs.items()}
    v_keys = {v for _, v, _ in pairs.values()}
    patterns = list(include)
    per_key = dict(dims or {})
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in state_dict.items():
        if key in v_keys:
            continue  # written with its g
        if key in g_keys:
            base = g_keys[key]
            g_key, v_key, _ = pairs[base]
            g, v = state_dict[g_key], state_dict[v_key]
            if to == "plain":
                d, groups = _dim_and_groups(g, v, base)
                with torch.no_grad():
                    out[base] = F.weight_norm(v, g, d, groups=groups)
            else:
                _write_pair(out, base, g, v, to)
            continue
        is_weight = (
            to != "plain"
            and isinstance(value, Tensor)
            and value.is_floating_point()
            and value.ndim >= 2
            and any(fnmatch.fnmatchcase(key, p) for p in patterns)
        )
        if is_weight:
            d = per_key.get(key, dim)
            try:
                d = F.normalize_dim(d, value.ndim)
            except IndexError as err:
                raise WeightNormError(f"{key} of shape {tuple(value.shape)}: {err}") from None
            with torch.no_grad():
                g = F.norm_except_dim(value, d).to(
                    torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
                )
            _write_pair(out, key, g, value, to)
        else:
            out[key] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _write_pair(out: OrderedDict[str, Any], base: str, g: Tensor, v: Tensor, to: Format) -> None:
    if to == "weightnorm":
        out[base + "_g"], out[base + "_v"] = g, v
    else:
        prefix, _, name = base.rpartition(".")
        head = prefix + "." if prefix else ""
        out[f"{head}parametrizations.{name}.original0"] = g
        out[f"{head}parametrizations.{name}.original1"] = v
