"""Checkpoint formats of weight-normalized models, and conversion between them.

Weight normalization (Salimans & Kingma, 2016, eq. 2) stores a weight ``w`` as a scale ``g`` and
a direction ``v``, ``w = g v / ||v||``, per unit of the layer.

Three formats are in the wild, per parameter ``<name>`` of a module at ``<prefix>``:

- ``"weightnorm"``: ``<prefix><name>_g`` and ``<prefix><name>_v``: this library's keys, which are
  also those of ``torch.nn.utils.weight_norm`` (HiFi-GAN, MelGAN, EnCodec, DAC checkpoints);
- ``"parametrize"``: ``<prefix>parametrizations.<name>.original0`` (g) and ``.original1`` (v), as
  written by ``torch.nn.utils.parametrizations.weight_norm``;
- ``"plain"``: ``<prefix><name>``, the folded weight ``w = g v / ||v||``.

:func:`convert_state_dict` reads any mix of them and writes one, keeping the set of normalized
parameters unless told otherwise (``include``, ``like``), so a converted checkpoint still loads
into the model it came from; :func:`convert_with_report` also says what it did to them (a
:class:`ConversionReport`). Loading needs no conversion: a module normalized by this library
loads all three directly with ``load_state_dict``.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from . import functional as F
from ._errors import WeightNormError
from ._reparam import find_weight_norms
from .functional import WeightNormSpec

__all__ = [
    "FORMATS",
    "ConversionReport",
    "Format",
    "convert_state_dict",
    "convert_with_report",
    "detect_formats",
]

Format = Literal["weightnorm", "parametrize", "plain"]
FORMATS: tuple[Format, ...] = ("weightnorm", "parametrize", "plain")

_PARAMETRIZE = re.compile(
    r"^(?P<prefix>(?:.*\.)?)parametrizations\.(?P<name>[^.]+)\.original(?P<i>[01])$"
)


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


#: Where a lone legacy key is an error: ``<name>_g``/``<name>_v`` for a ``<name>`` starting with
#: ``weight`` (``weight``, ``weight_hh_l0``, ...). Other ``_g``/``_v`` names are ordinary
#: parameters when their partner is absent (Conformer attention's ``pos_bias_v``, for one).
_LEGACY_LONE = re.compile(r"(?:^|\.)weight\w*_[gv]$")


def _check_keys(state_dict: Mapping[str, Any], where: str) -> None:
    """Every key a str; every weight-norm key with its partner (g with v, v with g)."""
    for key in state_dict:
        if not isinstance(key, str):
            raise WeightNormError(
                f"{where}expected a state dict with str keys, got a key {key!r} of type "
                f"{type(key).__name__}"
            )
    for key in state_dict:
        match = _PARAMETRIZE.match(key)
        if match:
            partner = key[:-1] + ("1" if match["i"] == "0" else "0")
        elif _LEGACY_LONE.search(key):
            partner = key[:-1] + ("v" if key.endswith("_g") else "g")
        else:
            continue
        if partner not in state_dict:
            role, other = ("g", "v") if key.endswith(("_g", "0")) else ("v", "g")
            raise WeightNormError(
                f"{where}{key} is the {role} of a weight norm without its {other}: expected "
                f"{partner} beside it, got no such key"
            )


def _check_floating(key: str, value: object, what: str) -> None:
    """A WeightNormError unless ``value`` is a floating-point tensor."""
    if not isinstance(value, Tensor):
        raise WeightNormError(
            f"{key}: expected a floating-point tensor ({what}), got {_describe(value)}"
        )
    if not value.is_floating_point():
        raise WeightNormError(
            f"{key}: expected a floating-point tensor ({what}), got dtype "
            f"{str(value.dtype).removeprefix('torch.')}"
        )


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


def _spec_of(g: Tensor, v: Tensor, key: str) -> WeightNormSpec:
    """The spec of a ``g``/``v`` pair, its unit dim (and groups) read from g's keep-dim shape."""
    if g.ndim == v.ndim + 1 and g.ndim >= 3 and g.shape[1] == 1:  # grouped ConvTranspose layout
        groups = int(g.shape[0])
        if v.shape[0] % groups == 0 and tuple(g.shape) == F.g_shape(v.shape, 1, groups):
            return WeightNormSpec(tuple(v.shape), 1, groups)
    dim = F.dim_of_g(g.shape, v.shape)
    if dim is False:
        raise WeightNormError(
            f"{key}: g of shape {tuple(g.shape)} matches no unit dimension of v of shape "
            f"{tuple(v.shape)}; expected a keep-dim shape such as {F.g_shape(v.shape, 0)}"
        )
    return WeightNormSpec(tuple(v.shape), dim)


def _read_like(like: object) -> tuple[dict[str, WeightNormSpec], set[str]]:
    """``like``'s normalized parameters (plain key -> spec) and its plain keys."""
    if isinstance(like, nn.Module):
        sd: Mapping[str, Any] = like.state_dict()
        pairs = _pairs(sd)
        targets = {f.qualname: f.spec for f in find_weight_norms(like, theirs=True)}
    elif isinstance(like, Mapping):
        _check_keys(like, "like: ")
        sd = like
        pairs = _pairs(sd)
        targets = {}
        for base, (g_key, v_key, _) in pairs.items():
            g, v = sd[g_key], sd[v_key]
            if not isinstance(g, Tensor) or not isinstance(v, Tensor):
                raise WeightNormError(
                    f"like: expected tensors at {g_key} and {v_key}, got "
                    f"{type(g).__name__} and {type(v).__name__}"
                )
            targets[base] = _spec_of(g, v, base)
    else:
        raise WeightNormError(
            "like: expected an nn.Module or a state dict (a mapping of keys to tensors), got "
            f"{type(like).__name__}"
        )
    pair_keys = {k for g_key, v_key, _ in pairs.values() for k in (g_key, v_key)}
    return targets, {k for k in sd if k not in pair_keys and k not in targets}


def _split(w: Tensor, key: str, dim: int | None, groups: int = 1) -> Tensor:
    """``g = ||w||`` per unit along ``dim`` (float32 for half-precision ``w``)."""
    try:
        spec = WeightNormSpec(tuple(w.shape), dim, groups)
    except (IndexError, TypeError, ValueError) as err:
        raise WeightNormError(f"{key} of shape {tuple(w.shape)}: {err}") from None
    with torch.no_grad():
        return spec.split(w)


def convert_state_dict(
    state_dict: Mapping[str, Any],
    to: Format,
    *,
    include: Iterable[str] = (),
    dim: int | None = 0,
    dims: Mapping[str, int | None] | None = None,
    like: nn.Module | Mapping[str, Any] | None = None,
) -> OrderedDict[str, Any]:
    r"""Convert a state dict between the weight-norm checkpoint formats.

    Weight normalization (Salimans & Kingma, 2016, eq. 2) writes a weight as
    :math:`w = g\,v/\|v\|`. Each normalized parameter (a ``g``/``v`` pair in either format) is
    detected on its own (a mixed dict is fine), written in the ``to`` format, and keeps its
    position. Renames keep tensors exactly (the same objects); folding to ``"plain"`` computes
    :math:`w = g\,v/\|v\|` (the unit dim read from g's keep-dim shape). Everything else (plain
    weights, biases, buffers) passes through untouched, so at the defaults the set of normalized
    parameters is kept exactly and the result loads into the model the input came from.

    A plain weight is normalized (``g = ||w||`` per unit, ``v = w``) only when asked:

    - ``like``, a module or a state dict (any format) with the target parameterization: every
      plain key whose counterpart is normalized in ``like`` is normalized with ``like``'s unit
      dim and groups (a module's own: this library's and torch's weight norms; a state dict's:
      read from g's keep-dim shape), and g takes ``like``'s g shape. A pair whose counterpart is
      normalized along another dim is re-split along ``like``'s (the same weight); a pair whose
      counterpart is plain is folded. Keys ``like`` lacks are converted as at the defaults. The
      result loads with ``strict=True`` into a module ``like`` normalized by this library (which
      reads every format) and into one normalized by torch if ``to`` is that module's format
      (``"weightnorm"`` for ``torch.nn.utils.weight_norm``, ``"parametrize"`` for
      ``torch.nn.utils.parametrizations.weight_norm``, which also reads ``"weightnorm"``).
    - ``include``, ``fnmatch`` patterns of plain keys, normalized along ``dim`` (or
      ``dims[key]``): tensors of at least 2 dims are, matches of fewer dims and non-tensors
      are skipped (``"*weight"`` leaves a 1-D norm-layer weight alone). A state dict does not
      say which layers are ConvTranspose (per output unit: ``dim=1``): pass ``dims`` for those,
      or use ``like``.

    ``to="plain"`` folds every pair (``like`` then changes nothing: this library's modules load
    plain weights).

    Args:
        state_dict (Mapping[str, Any]): the checkpoint's state dict.
        to (str): ``"weightnorm"``, ``"parametrize"`` or ``"plain"``.
        include (iterable of str, optional): patterns of plain keys to normalize. Default: none.
        dim (int or None, optional): unit dim for those. Default: ``0``.
        dims (Mapping[str, int or None], optional): per-key unit dims of keys ``include``
            selects. Default: none.
        like (nn.Module or Mapping[str, Any], optional): the target parameterization.
            Default: none.

    Returns:
        A new ``OrderedDict`` (with the input's ``_metadata`` if it had one).

    Raises:
        WeightNormError: an unknown format; a key that is not a str; a g whose shape fits no dim
            of its v; a g or v that is not a floating-point tensor, or one without its partner
            (``<name>_g`` without ``<name>_v`` for a ``<name>`` starting with ``weight``, or the
            reverse; ``original0`` without ``original1``, or the reverse); a weight to
            normalize (chosen by ``include`` or ``like``) that is not a floating-point tensor;
            an ``include`` pattern that selects no key it can normalize, or ``include`` with
            ``to="plain"``; a ``dims`` key ``include`` does not select; a ``like`` that is
            neither a module nor a state dict.

    Example::

        >>> import torch, weightnorm as wn
        >>> from torch import nn
        >>> theirs = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3)),
        ...                        nn.Linear(4, 2))
        >>> sd = wn.convert_state_dict(theirs.state_dict(), to="weightnorm")
        >>> list(sd)  # the Linear was not normalized and stays so
        ['0.bias', '0.weight_g', '0.weight_v', '1.weight', '1.bias']
        >>> list(wn.convert_state_dict(sd, to="plain"))
        ['0.bias', '0.weight', '1.weight', '1.bias']
        >>> plain = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Linear(4, 2))
        >>> sd = wn.convert_state_dict(plain.state_dict(), to="parametrize", like=theirs)
        >>> theirs.load_state_dict(sd)
        <All keys matched successfully>
        >>> torch.allclose(theirs[0].weight, plain[0].weight)
        True
    """
    report = convert_with_report(state_dict, to, include=include, dim=dim, dims=dims, like=like)
    return report.state_dict


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_with_report` made of a state dict: the result, and how many
    normalized parameters it wrote each way (a parameter is a ``g``/``v`` pair or a plain weight).

    Attributes:
        state_dict (OrderedDict[str, Any]): the converted state dict, as
            :func:`convert_state_dict` returns it (left out of the ``repr``).
        renamed (int): pairs written under the ``to`` format's keys, the same tensors.
        kept (int): pairs already in the ``to`` format (their g possibly reshaped to ``like``'s).
        folded (int): pairs folded into a plain weight ``w = g v / ||v||``.
        normalized (int): plain weights split into ``g = ||w||`` and ``v = w``.
        resplit (int): pairs re-split along ``like``'s unit dim (the same weight).
    """

    state_dict: OrderedDict[str, Any] = field(repr=False)
    renamed: int = 0
    kept: int = 0
    folded: int = 0
    normalized: int = 0
    resplit: int = 0


def convert_with_report(
    state_dict: Mapping[str, Any],
    to: Format,
    *,
    include: Iterable[str] = (),
    dim: int | None = 0,
    dims: Mapping[str, int | None] | None = None,
    like: nn.Module | Mapping[str, Any] | None = None,
) -> ConversionReport:
    """:func:`convert_state_dict`, with what it did to each normalized parameter.

    The arguments, the result (:attr:`ConversionReport.state_dict`) and the errors are those of
    :func:`convert_state_dict`.

    Example::

        >>> import torch, weightnorm as wn
        >>> from torch import nn
        >>> net = nn.Sequential(wn.WNLinear(3, 4), nn.Linear(4, 2))
        >>> report = wn.formats.convert_with_report(net.state_dict(), to="plain")
        >>> report
        ConversionReport(renamed=0, kept=0, folded=1, normalized=0, resplit=0)
        >>> list(report.state_dict)
        ['0.bias', '0.weight', '1.weight', '1.bias']
    """
    if to not in FORMATS:
        raise WeightNormError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    patterns = [include] if isinstance(include, str) else list(include)
    for p in patterns:
        if not isinstance(p, str):
            raise WeightNormError(f"include: expected str patterns, got {type(p).__name__} {p!r}")
    if patterns and to == "plain":
        raise WeightNormError(
            "include normalizes plain weights: expected to='weightnorm' or 'parametrize', "
            "got to='plain'"
        )
    targets, like_plain = _read_like(like) if like is not None else ({}, set())
    _check_keys(state_dict, "")
    pairs = _pairs(state_dict)
    for g_key, v_key, _ in pairs.values():  # before any work: no norm of an integer tensor
        _check_floating(g_key, state_dict[g_key], "the g of a weight norm")
        _check_floating(v_key, state_dict[v_key], "the v of a weight norm")
    g_keys = {g: base for base, (g, _, _) in pairs.items()}
    v_keys = {v for _, v, _ in pairs.values()}
    per_key = dict(dims or {})
    matched: dict[str, list[str]] = {p: [] for p in patterns}  # pattern -> plain keys it matches
    done: set[str] = set()  # patterns that selected something normalized
    split_by_include: set[str] = set()
    counts: Counter[str] = Counter()
    out: OrderedDict[str, Any] = OrderedDict()
    for key, value in state_dict.items():
        if key in v_keys:
            continue  # written with its g
        if key in g_keys:
            base = g_keys[key]
            g_key, v_key, fmt = pairs[base]
            g, v = state_dict[g_key], state_dict[v_key]
            done.update(p for p in patterns if fnmatch.fnmatchcase(base, p))
            if to == "plain" or base in like_plain:
                with torch.no_grad():
                    out[base] = _spec_of(g, v, base).weight(v, g)
                counts["folded"] += 1
                continue
            target = targets.get(base)
            resplit = False
            if target is not None:
                g, v, resplit = _fit(g, v, base, target)
            _write_pair(out, base, g, v, to)
            counts["resplit" if resplit else "kept" if fmt == to else "renamed"] += 1
            continue
        selected = [p for p in patterns if fnmatch.fnmatchcase(key, p)]
        for p in selected:
            matched[p].append(key)
        target = targets.get(key) if to != "plain" else None
        wanted = bool(selected) and isinstance(value, Tensor) and value.ndim >= 2
        if target is None and not wanted:
            out[key] = value
            continue
        _check_floating(key, value, "a weight to normalize")
        if target is not None:  # like's unit dim wins over dim and dims
            g = _split(value, key, target.dim, target.groups)
        else:
            g = _split(value, key, per_key.get(key, dim))
            split_by_include.add(key)
        _write_pair(out, key, g, value, to)
        counts["normalized"] += 1
        done.update(selected)
    for p in patterns:
        if p in done:
            continue
        if not matched[p]:
            raise WeightNormError(f"include pattern {p!r} matches no key of the state dict")
        shown = ", ".join(f"{k} ({_describe(state_dict[k])})" for k in matched[p][:3])
        more = f" and {len(matched[p]) - 3} more" if len(matched[p]) > 3 else ""
        raise WeightNormError(
            f"include pattern {p!r} selects nothing that can be weight-normalized: expected "
            f"floating-point tensors of at least 2 dims, got {shown}{more}"
        )
    unused = sorted(k for k in per_key if k not in split_by_include)
    if unused:
        raise WeightNormError(
            f"dims: expected keys of plain weights that include selects (and like does not "
            f"decide), got {', '.join(unused)}"
        )
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return ConversionReport(
        out,
        renamed=counts["renamed"],
        kept=counts["kept"],
        folded=counts["folded"],
        normalized=counts["normalized"],
        resplit=counts["resplit"],
    )


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.ndim}-D {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def _fit(g: Tensor, v: Tensor, base: str, target: WeightNormSpec) -> tuple[Tensor, Tensor, bool]:
    """``(g, v)`` along ``target``'s unit dim (and groups): as they are, g reshaped to the
    keep-dim shape, or re-split (True: the same weight, its g along the other dim)."""
    try:
        spec = WeightNormSpec(tuple(v.shape), target.dim, target.groups)
    except (IndexError, ValueError) as err:
        raise WeightNormError(f"{base} of shape {tuple(v.shape)}: {err}") from None
    if g.shape == spec.g_shape:
        return g, v, False
    if g.numel() == spec.units == 1:
        return g.reshape(spec.g_shape), v, False  # a whole-tensor g: torch's 0-d, or keep-dim
    source = _spec_of(g, v, base)
    if (source.dim, source.groups) == (spec.dim, spec.groups):
        return g.reshape(spec.g_shape), v, False
    with torch.no_grad():
        w = source.weight(v, g)
        return spec.split(w), w, True


def _write_pair(out: OrderedDict[str, Any], base: str, g: Tensor, v: Tensor, to: Format) -> None:
    if to == "weightnorm":
        out[base + "_g"], out[base + "_v"] = g, v
    else:
        prefix, _, name = base.rpartition(".")
        head = prefix + "." if prefix else ""
        out[f"{head}parametrizations.{name}.original0"] = g
        out[f"{head}parametrizations.{name}.original1"] = v
