"""Whole-model operations: apply weight norm everywhere, fold it away, migrate from PyTorch's."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from . import _torch_compat as compat
from . import functional as F
from ._errors import WeightNormError
from ._reparam import (
    PerOutput,
    _gain,
    find_weight_norms,
    make_spec,
    register,
    unregister,
    weight_norm,
    weight_norm_specs,
)
from ._torch_compat import TorchWeightNorm, find_torch_weight_norms

__all__ = ["DEFAULT_LAYERS", "apply_weight_norm", "fold", "replace_torch_weight_norm"]

M = TypeVar("M", bound=nn.Module)

#: Layer types normalized by :func:`apply_weight_norm` by default (their ``weight``).
DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def _recurrent_weight_names(module: nn.RNNBase) -> list[str]:
    return [n for n in compat.rnn_weight_names(module) if n.startswith("weight_")]


def _targets(
    model: nn.Module,
    layers: tuple[type[nn.Module], ...],
    embedding: bool,
    recurrent: bool,
    exclude: tuple[str | type[nn.Module], ...],
) -> Iterator[tuple[str, nn.Module, str]]:
    patterns = [e for e in exclude if isinstance(e, str)]
    types = tuple(e for e in exclude if isinstance(e, type))
    for qualname, module in model.named_modules():
        if types and isinstance(module, types):
            continue
        if any(fnmatch.fnmatchcase(qualname, p) for p in patterns):
            continue
        names: list[str] = []
        if isinstance(module, layers) or (embedding and isinstance(module, nn.Embedding)):
            names = ["weight"]
        elif recurrent and isinstance(module, nn.RNNBase):
            names = _recurrent_weight_names(module)
        elif recurrent and isinstance(module, nn.RNNCellBase):  # RNNCell, LSTMCell, GRUCell
            names = ["weight_ih", "weight_hh"]
        torch_normed = {f.name for f in find_torch_weight_norms(module)} if names else set()
        for name in names:
            if (
                module._parameters.get(name) is not None
                or name in weight_norm_specs(module)
                or name in torch_normed
            ):
                yield qualname, module, name


def apply_weight_norm(
    model: M,
    *,
    layers: Iterable[type[nn.Module]] = DEFAULT_LAYERS,
    embedding: bool = False,
    recurrent: bool = False,
    exclude: Iterable[str | type[nn.Module]] = (),
    dim: int | PerOutput | None = "output",
    eps: float = F.DEFAULT_EPS,
    gain: float | None = None,
) -> M:
    """Weight-normalize every supported layer of ``model`` in place and return it.

    Layers already normalized by this library are left as they are, so a second call changes
    nothing. Layers carrying PyTorch's weight norm raise: convert those with
    :func:`replace_torch_weight_norm`. Tied weights (one Parameter in several modules, as
    an embedding and a language-model head after ``tie_weights()``) get one weight norm: the
    modules share both ``g`` and ``v``, so they stay tied while training.

    Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016.

    Args:
        model (nn.Module): the model.
        layers (iterable of types, optional): layer types whose ``weight`` is normalized.
            Default: :data:`DEFAULT_LAYERS` (Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d).
        embedding (bool, optional): also ``nn.Embedding`` weights (one g per embedding row).
            Default: ``False``.
        recurrent (bool, optional): also every ``weight_ih_l*``/``weight_hh_l*`` (and
            ``weight_hr_l*``) of ``nn.RNN``/``nn.LSTM``/``nn.GRU``, and ``weight_ih``/
            ``weight_hh`` of ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell``, one g per gate
            row. Default: ``False``.
        exclude (iterable of str or type, optional): modules to skip, by qualified name
            (``fnmatch`` patterns such as ``"head.*"``) or by type. Default: none.
        dim, eps, gain: as in :func:`weightnorm.weight_norm` (``gain=1.0``: a fixed gain, no
            learned ``g``: EDM2's magnitude-preserving layers).

    Returns:
        The same model.

    Example::

        >>> import torch, weightnorm as wn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> net = wn.apply_weight_norm(net, exclude=["2"])
        >>> wn.is_weight_normed(net[0]), wn.is_weight_normed(net[2])
        (True, False)
    """
    excluded = tuple(exclude)
    for item in excluded:
        if not isinstance(item, (str, type)):
            raise WeightNormError(
                f"exclude takes module names (str) or types, got {type(item).__name__} {item!r}"
            )
    layer_types = tuple(layers)
    targets = list(_targets(model, layer_types, embedding, recurrent, excluded))
    _check_ties(model, targets)
    # a Parameter's id: its first normalized use (those normalized by an earlier call too)
    tied = {
        id(f.v): (f.qualname.rpartition(".")[0], f.module, f.name) for f in find_weight_norms(model)
    }
    for qualname, module, name in targets:
        if name in weight_norm_specs(module):
            continue
        if any(f.name == name for f in find_torch_weight_norms(module)):
            raise WeightNormError(
                f"{qualname or 'the model'}.{name} carries torch's weight norm; convert the model "
                "with wn.replace_torch_weight_norm(model) first"
            )
        param = module._parameters[name]
        first = tied.get(id(param))
        if first is None:
            weight_norm(module, name, dim=dim, eps=eps, gain=gain)
            tied[id(param)] = (qualname, module, name)
        else:
            _tie(first, (qualname, module, name), dim, eps, gain)
    return model


def _check_ties(model: nn.Module, targets: list[tuple[str, nn.Module, str]]) -> None:
    """A WeightNormError if a weight to normalize is one Parameter with a weight that would not
    be normalized (an excluded module, a type not selected): the two would drift apart."""
    chosen = {(id(m), n) for _, m, n in targets}
    wanted = {
        id(p): f"{q or 'the model'}.{n}"
        for q, m, n in targets
        if (p := m._parameters.get(n)) is not None  # (not one of torch's weight norms)
    }
    for qualname, module in model.named_modules():
        normalized = {n + "_v" for n in weight_norm_specs(module)}  # (a later call ties to them)
        for name, p in module._parameters.items():
            if p is None or name in normalized:
                continue
            if id(p) in wanted and (id(module), name) not in chosen:
                raise WeightNormError(
                    f"{wanted[id(p)]} is tied to {qualname or 'the model'}.{name} (one "
                    "Parameter), which would not be weight-normalized: the two would drift "
                    "apart. Normalize both (e.g. embedding=True for an embedding tied to a "
                    "head), or exclude both"
                )


def _tie(
    first: tuple[str, nn.Module, str],
    other: tuple[str, nn.Module, str],
    dim: int | PerOutput | None,
    eps: float,
    gain: float | None,
) -> None:
    """Give ``other`` the weight norm of ``first``, whose weight is the same Parameter: one g,
    one v, so the tied weights stay equal. Their units must agree."""
    (q0, m0, n0), (q1, m1, n1) = first, other
    spec0 = weight_norm_specs(m0)[n0]
    v = cast(nn.Parameter, m0._parameters[n0 + "_v"])
    spec1 = make_spec(m1, n1, tuple(v.shape), dim, eps, gain)
    if (spec1.dim, spec1.groups) != (spec0.dim, spec0.groups):
        raise WeightNormError(
            f"{q1 or 'the model'}.{n1} is tied to {q0 or 'the model'}.{n0} (one Parameter), but "
            f"their units differ (dim={spec1.dim} vs dim={spec0.dim}): one weight norm cannot "
            "serve both; untie them, or exclude one of the two modules"
        )
    register(m1, n1, spec0, _gain(m0, n0, spec0), v)


def fold(model: M) -> M:
    """Remove every weight norm in ``model``, ours and both of PyTorch's, in place.

    Every normalized parameter becomes a plain ``nn.Parameter`` holding ``g * v / ||v||`` (also
    under ``torch.no_grad()``/``torch.inference_mode()``): the same Parameter object as ``v``, so
    an optimizer built before keeps training it. The modules get their original classes back,
    and the model runs, exports and trains like one that never had weight norm. A PyTorch weight
    norm folds to what PyTorch's own removal computes, bit for bit (but a zero unit folds to zero,
    where PyTorch's gives NaN).

    Example::

        >>> import torch, weightnorm as wn
        >>> theirs = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(4, 4, 1))
        >>> net = torch.nn.Sequential(wn.WNConv1d(1, 4, 3), theirs)
        >>> [type(m).__name__ for m in wn.fold(net)]
        ['Conv1d', 'Conv1d']
    """
    folded: set[int] = set()  # the v of each weight folded: a tied weight's is written once
    for module in list(model.modules()):
        for name in weight_norm_specs(module):
            v = module._parameters.get(name + "_v")
            folded.add(id(unregister(module, name, write=id(v) not in folded)))
        for found in find_torch_weight_norms(module):
            compat.take_apart(module, found)
            with torch.no_grad():
                found.v.copy_(_torch_folded(found))
            module.register_parameter(found.name, found.v)
            compat.refresh_rnn_weights(module)
    return model


def _torch_folded(found: TorchWeightNorm) -> Tensor:
    """``g v/||v||`` of one of torch's weight norms as torch's own removal computes it, but a
    unit with ``||v|| <= eps`` (torch: NaN for a zero v) takes the eps-safe value."""
    g, v = found.g.detach(), found.v.detach()
    w = compat.torch_removal(v, g, found.dim)
    spec = F.WeightNormSpec(tuple(v.shape), found.dim)
    degenerate = spec.norms(v) <= spec.eps
    return torch.where(degenerate, spec.weight(v, g), w) if bool(degenerate.any()) else w


def replace_torch_weight_norm(model: M) -> M:
    """Turn every PyTorch weight norm in ``model`` into ours, in place, with identical outputs.

    Handles ``torch.nn.utils.weight_norm`` (hooks) and
    ``torch.nn.utils.parametrizations.weight_norm``. ``g`` and ``v`` stay the same Parameter
    objects, with their values, dtypes and dims (a ConvTranspose torch normalizes per input
    channel stays so), registered in the order torch gives them: an optimizer built before (as
    every HiFi-GAN training script builds it) keeps training both, and an optimizer state saved
    before the switch loads after it. Afterwards ``copy.deepcopy``, pickling and
    ``module.weight`` outside ``forward`` work.

    Example::

        >>> import torch, weightnorm as wn
        >>> conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 2, 3))
        >>> opt = torch.optim.Adam(conv.parameters())
        >>> wn.is_weight_normed(wn.replace_torch_weight_norm(conv))
        True
        >>> [p is q for p, q in zip(conv.parameters(), opt.param_groups[0]["params"])]
        [True, True, True]
    """
    for module in list(model.modules()):
        for found in find_torch_weight_norms(module):
            compat.take_apart(module, found)
            spec = F.WeightNormSpec(tuple(found.v.shape), found.dim)
            register(module, found.name, spec, found.g, found.v)
    return model
