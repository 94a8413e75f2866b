"""Recognise and take apart PyTorch's own two weight norms.

``torch.nn.utils.weight_norm`` (legacy: a forward pre-hook, parameters ``<name>_g``/``<name>_v``)
and ``torch.nn.utils.parametrizations.weight_norm`` (parametrize: ``parametrizations.<name>``
with ``original0`` = g and ``original1`` = v). Both store ``dim=-1`` for "the whole tensor".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm as _LegacyHook

from . import functional as F

__all__ = ["TorchWeightNorm", "find_torch_weight_norms", "refresh_rnn_weights", "take_apart"]

Kind = Literal["legacy", "parametrize"]


@dataclass(frozen=True)
class TorchWeightNorm:
    """One of torch's weight norms found on a module parameter."""

    kind: Kind
    name: str
    dim: int | None  # in our convention: None is the whole tensor


def _torch_dim(dim: int) -> int | None:
    return None if dim == -1 else dim


def _is_torch_wn_parametrization(p: nn.Module) -> bool:
    # torch's class is private; match it by name so a rename degrades to "not found", not a crash.
    return type(p).__name__ == "_WeightNorm" and hasattr(p, "dim")


def find_torch_weight_norms(module: nn.Module) -> list[TorchWeightNorm]:
    """List torch's weight norms on ``module`` itself (not its children)."""
    found = [
        TorchWeightNorm("legacy", hook.name, _torch_dim(hook.dim))
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, _LegacyHook)
    ]
    if parametrize.is_parametrized(module):
        for name, plist in module.parametrizations.items():  # type: ignore[union-attr,operator]
            for p in plist:
                if _is_torch_wn_parametrization(p):
                    found.append(TorchWeightNorm("parametrize", name, _torch_dim(p.dim)))
    return found


def take_apart(module: nn.Module, found: TorchWeightNorm, *, fold: bool = True) -> Tensor:
    """Remove one torch weight norm, leave a plain parameter ``<name>``, return g (detached).

    The plain parameter is the original ``v`` Parameter object, so an optimizer that held ``v``
    keeps training the weight. With ``fold`` it holds ``w = g v/||v||``; without, it keeps the
    values of ``v``. Works under ``torch.no_grad()`` and ``torch.inference_mode()`` (torch's own
    removal leaves a buffer there).
    """
    name = found.name
    if found.kind == "legacy":
        key = next(
            k
            for k, hook in module._forward_pre_hooks.items()
            if isinstance(hook, _LegacyHook) and hook.name == name
        )
        g = cast(nn.Parameter, module._parameters[name + "_g"])
        v = cast(nn.Parameter, module._parameters[name + "_v"])
        del module._forward_pre_hooks[key]
        module.__dict__.pop(name, None)  # the hook's stale copy of w
        del module._parameters[name + "_g"]
        del module._parameters[name + "_v"]
    else:
        plist = cast(parametrize.ParametrizationList, module.parametrizations[name])  # type: ignore[index]
        if len(plist) != 1:
            raise ValueError(
                f"parameter {name!r} of {type(module).__name__} carries {len(plist)} "
                "parametrizations; only a lone weight norm can be taken apart"
            )
        g = cast(nn.Parameter, plist.original0)
        v = cast(nn.Parameter, plist.original1)
        # not torch's remove_parametrizations: under no_grad it leaves a buffer, and it makes
        # a new Parameter, losing the optimizer's handle on v
        _remove_parametrization_keep_objects(module, name)
        _drop_compat_hook(module, name)
    g_value = g.detach().clone()
    v_param = v if isinstance(v, nn.Parameter) else nn.Parameter(v.detach(), v.requires_grad)
    if fold:
        with torch.no_grad():
            v_param.copy_(_folded_weight(v.detach(), g_value, found.dim))
    module.register_parameter(name, v_param)
    refresh_rnn_weights(module)
    return g_value


def _folded_weight(v: Tensor, g: Tensor, dim: int | None) -> Tensor:
    """``g v/||v||`` as torch's own removal computes it (``torch._weight_norm``, bit for bit),
    except that a unit with ``||v|| <= eps`` (torch: NaN for a zero v) takes the eps-safe value
    of :func:`weightnorm.functional.weight_norm` (zero for a zero v).

    The same scheme as the fused path of :mod:`weightnorm.functional`: torch's kernel first, the
    norms checked against eps, the eps-safe form only where they fail."""
    w = torch._weight_norm(v, g, -1 if dim is None else dim)
    norms = F.norm_except_dim(v, dim)
    degenerate = norms <= F.DEFAULT_EPS
    if not bool(degenerate.any()):
        return w
    safe = F.weight_norm(v, g.to(norms.dtype).reshape(norms.shape), dim)
    return torch.where(degenerate, safe, w)


def refresh_rnn_weights(module: nn.Module) -> None:
    """Rebuild the cache of weights an ``nn.RNNBase`` keeps (``_flat_weights``) from what its
    attributes hold now. Needed after a parameter was replaced without ``setattr``: torch's own
    check at the next forward compares weak references and can miss the change, and between
    forwards the cache would still hold the old (computed) weight."""
    if isinstance(module, nn.RNNBase) and "_flat_weights_names" in module.__dict__:
        with torch.no_grad():
            module._init_flat_weights()


def _remove_parametrization_keep_objects(module: nn.Module, name: str) -> None:
    """Drop ``parametrizations.<name>`` without computing anything; restore the class if empty."""
    parametrizations = cast(nn.ModuleDict, module.parametrizations)
    del parametrizations[name]
    cls = type(module)
    if len(parametrizations) == 0:
        delattr(module, "parametrizations")
        module.__class__ = cls.__bases__[0]
    elif name in cls.__dict__:
        # torch's parametrized class holds a property per parametrized name. The class is
        # shared with every copy of the module (deepcopy keeps it), so deleting the property
        # from it (as torch's own removal does) would break the copies: give this module a
        # class of its own without it.
        namespace = {
            k: v for k, v in cls.__dict__.items() if k not in (name, "__dict__", "__weakref__")
        }
        module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def _drop_compat_hook(module: nn.Module, name: str) -> None:
    """Remove the state-dict pre-hook torch's parametrize weight norm leaves for ``name``.

    It is a local function (it makes the module unpicklable) that renames ``<name>_g``/``_v``.
    """
    for key, hook in list(module._load_state_dict_pre_hooks.items()):
        fn = getattr(hook, "hook", hook)
        if getattr(fn, "__name__", "") != "_weight_norm_compat_hook":
            continue
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False))
        if "name" in cells and cells["name"].cell_contents == name:
            del module._load_state_dict_pre_hooks[key]
