"""Every PyTorch internal this library reads, in one place (``tests/test_torch_internals.py``
checks each one on every torch release CI runs).

Each is the only way to get a feature:

- ``torch._weight_norm_interface`` and its backward: PyTorch's fused CPU kernels, one pass each
  way (the CPU fast path); ``torch._weight_norm``: what torch's own removal computes (folding a
  torch weight norm bit for bit as torch would);
- ``torch._C._are_functorch_transforms_active``: whether a ``torch.func`` transform runs (its
  tensors cannot be read on the host);
- torch's two weight norms, to recognise and take apart: the legacy forward pre-hook class
  ``torch.nn.utils.weight_norm.WeightNorm``; the parametrization class named ``_WeightNorm``
  (``original0`` = g, ``original1`` = v); the local ``_weight_norm_compat_hook`` it leaves on
  the module; ``nn.RNNBase``'s cache of its weights (``_flat_weights``);
- ``torch._C.DisableTorchFunctionSubclass``: operations on a tensor subclass as on a plain
  tensor (inside the computed weight's ``__torch_function__``);
- how torch's removal functions find what they remove (:class:`HookDict`,
  :class:`RemovalHook`; ``weightnorm._torch_removal`` builds on them):
  ``torch.nn.utils.remove_weight_norm`` looks through ``module._forward_pre_hooks.items()`` for
  an instance of the legacy hook class with its ``name``, calls its ``remove(module)`` and
  deletes its key; ``nn.Module.__call__`` skips every hook when the hook dicts are empty (their
  truthiness); ``parametrize.remove_parametrizations`` follows a fixed sequence on
  ``module.parametrizations`` (``weightnorm._torch_removal`` describes it);
- ``torch._foreach_copy_``: one call for many copies (the optimizer-level mode's gradients);
- ``DTensor`` and ``Shard``, whose import moved in torch 2.5.

Nothing here imports the rest of the library (but its error type).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm as LegacyHook

from ._errors import WeightNormError

__all__ = [
    "PLAIN",
    "HookDict",
    "RemovalHook",
    "TorchWeightNorm",
    "capturing",
    "drop_rnn_weights",
    "find_torch_weight_norms",
    "hook_dict",
    "fused_weight_norm",
    "foreach_copy_",
    "fused_weight_norm_backward",
    "jit_tracing",
    "distribute_like",
    "is_dtensor_type",
    "local_rows",
    "no_torch_function",
    "read_rnn_weights",
    "refresh_rnn_weights",
    "rnn_weight_names",
    "take_apart",
    "torch_removal",
]


def fused_weight_norm(v: Tensor, g: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``(w, norms)`` by PyTorch's fused kernel (with its C++ autograd node). It needs a
    contiguous ``v`` and ``g`` (it reads a strided one as if it were contiguous) and divides by
    the unclamped norms."""
    return torch._weight_norm_interface(v, g, dim)


def fused_weight_norm_backward(
    grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, dim: int
) -> tuple[Tensor, Tensor]:
    """``(grad_v, grad_g)`` of :func:`fused_weight_norm` by its fused C++ backward."""
    op = torch.ops.aten._weight_norm_interface_backward
    return cast(tuple[Tensor, Tensor], op(grad_w.contiguous(), v, g, norms, dim))


def torch_removal(v: Tensor, g: Tensor, dim: int | None) -> Tensor:
    """``g v/||v||`` as torch's own removal of its weight norms computes it (NaN for a zero
    unit); ``dim=None`` is the whole tensor."""
    return torch._weight_norm(v, g, -1 if dim is None else dim)


def no_torch_function() -> AbstractContextManager[object]:
    """A block in which tensor subclasses' ``__torch_function__`` is not called (their
    operations run as a plain tensor's)."""
    return cast(AbstractContextManager[object], torch._C.DisableTorchFunctionSubclass())


def capturing() -> bool:
    """Whether a graph is being captured or a transform runs: ``torch.compile`` or
    ``torch.export`` (dynamo), ``torch.jit.trace``, or a ``torch.func`` transform. Tensor
    values cannot be read on the host then, and Python-side bookkeeping does not belong in
    the graph."""
    return (
        torch.compiler.is_compiling()
        or jit_tracing()
        or torch._C._are_functorch_transforms_active()
    )


def jit_tracing() -> bool:
    """Whether ``torch.jit.trace`` runs (a tensor's shape then holds tensors)."""
    return torch._C._get_tracing_state() is not None


#: The tensor types whose values the kernels read (a subclass such as a FakeTensor of
#: non-strict export or a DTensor gets plain differentiable operations)
PLAIN = (Tensor, nn.Parameter)


def _dtensor_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor  # type: ignore[attr-defined]
    return cast(type, DTensor)


def is_dtensor_type(cls: type) -> bool:
    """Whether ``cls`` is exactly ``DTensor`` (FSDP2's sharded parameters and what is computed
    from them)."""
    return cls is _dtensor_class()


def distribute_like(value: Tensor, like: Tensor) -> Tensor:
    """``value`` (a whole tensor, the same on every rank) as a DTensor placed as ``like``."""
    try:
        from torch.distributed.tensor import distribute_tensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import distribute_tensor  # type: ignore[attr-defined]
    spec = cast(Any, like)
    return cast(Tensor, distribute_tensor(value, spec.device_mesh, spec.placements))


def local_rows(t: Tensor) -> tuple[Tensor, bool] | None:
    """For a DTensor (``torch.distributed.tensor``; ``torch.distributed._tensor`` before torch
    2.5): this rank's part of it, and whether that is whole rows (``Shard(0)`` on every mesh
    dim, as FSDP2 shards); None for any other tensor."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor, Shard  # type: ignore[attr-defined]
    if not isinstance(t, DTensor):
        return None
    return t.to_local(), all(p == Shard(0) for p in t.placements)


# --------------------------------------------------------------------------------------------
# torch's own weight norms
# --------------------------------------------------------------------------------------------

Kind = Literal["legacy", "parametrize"]


@dataclass(frozen=True, eq=False)
class TorchWeightNorm:
    """One of torch's weight norms on a module parameter: ``dim`` in our convention (None is
    the whole tensor), and its ``g`` and ``v`` Parameters."""

    kind: Kind
    name: str
    dim: int | None
    g: nn.Parameter
    v: nn.Parameter


def find_torch_weight_norms(module: nn.Module, where: str = "") -> list[TorchWeightNorm]:
    """Torch's weight norms on ``module`` itself (not its children); ``where`` (its qualified
    name and a dot) starts an error message.

    Raises:
        WeightNormError: a parametrized parameter carries more than torch's weight norm.
    """
    found = []
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, LegacyHook) and not isinstance(hook, RemovalHook):
            g, v = (cast(nn.Parameter, module._parameters[hook.name + s]) for s in ("_g", "_v"))
            found.append(TorchWeightNorm("legacy", hook.name, _our_dim(hook.dim), g, v))
    if parametrize.is_parametrized(module):
        plists = cast(dict[str, parametrize.ParametrizationList], module.parametrizations)
        for name, plist in plists.items():
            if not any(_is_torch_weight_norm(p) for p in plist):
                continue
            if len(plist) != 1:
                raise WeightNormError(
                    f"{where or type(module).__name__ + '.'}{name} carries {len(plist)} "
                    "parametrizations; expected torch's weight norm alone"
                )
            dim = _our_dim(cast(int, plist[0].dim))
            g, v = cast(nn.Parameter, plist.original0), cast(nn.Parameter, plist.original1)
            found.append(TorchWeightNorm("parametrize", name, dim, g, v))
    return found


def _our_dim(dim: int) -> int | None:
    return None if dim == -1 else dim


def _is_torch_weight_norm(p: nn.Module) -> bool:
    # torch's class is private; match it by name so a rename degrades to "not found", not a crash
    return type(p).__name__ == "_WeightNorm" and hasattr(p, "dim")


def take_apart(module: nn.Module, found: TorchWeightNorm) -> None:
    """Remove one of torch's weight norms from ``module``: its hook or parametrization, the
    hook's stale copy of the weight, and ``<name>_g``/``<name>_v`` (whose objects ``found``
    holds), leaving no attribute ``<name>``; the caller registers what replaces it. Works under
    ``torch.no_grad()`` and ``torch.inference_mode()`` (torch's own removal leaves a buffer)."""
    name = found.name
    if found.kind == "legacy":
        for key, hook in list(module._forward_pre_hooks.items()):
            if (
                isinstance(hook, LegacyHook)
                and not isinstance(hook, RemovalHook)
                and hook.name == name
            ):
                del module._forward_pre_hooks[key]
        module.__dict__.pop(name, None)  # the hook's stale copy of w
        del module._parameters[name + "_g"], module._parameters[name + "_v"]
        return
    # not torch's remove_parametrizations: under no_grad it leaves a buffer, and it makes a new
    # Parameter, losing the optimizer's handle on v
    parametrizations = cast(nn.ModuleDict, module.parametrizations)
    del parametrizations[name]
    cls = type(module)
    if len(parametrizations) == 0:
        delattr(module, "parametrizations")
        module.__class__ = cls.__bases__[0]
    elif name in cls.__dict__:
        # torch's parametrized class holds a property per parametrized name and is shared with
        # every copy of the module (deepcopy keeps it): deleting the property from it (as torch's
        # removal does) would break the copies, so this module gets a class of its own
        namespace = {k: v for k, v in cls.__dict__.items() if k not in (name, "__dict__")}
        namespace.pop("__weakref__", None)
        module.__class__ = type(cls.__name__, cls.__bases__, namespace)
    # the state-dict pre-hook torch's parametrize weight norm leaves: a local function (it
    # makes the module unpicklable) closing over the name, that renames <name>_g/_v on load
    for key, hook in list(module._load_state_dict_pre_hooks.items()):
        fn = getattr(hook, "hook", hook)
        if getattr(fn, "__name__", "") != "_weight_norm_compat_hook":
            continue
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False))
        if "name" in cells and cells["name"].cell_contents == name:
            del module._load_state_dict_pre_hooks[key]


# --------------------------------------------------------------------------------------------
# What torch.nn.utils.remove_weight_norm finds
# --------------------------------------------------------------------------------------------


class RemovalHook(LegacyHook):
    """An instance of torch's legacy weight-norm hook class that only removes: what
    ``torch.nn.utils.remove_weight_norm(module, name)`` finds (by class and ``name``) and asks to
    ``remove(module)``, here with ``remove(module, name)``. Called as a hook, it does nothing."""

    def __init__(self, name: str, dim: int | None, remove: Callable[[nn.Module, str], object]):
        super().__init__(name, -1 if dim is None else dim)
        self._remove = remove

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        return None

    def compute_weight(self, module: nn.Module) -> Any:
        return getattr(module, self.name)

    def remove(self, module: nn.Module) -> None:
        self._remove(module, self.name)


class HookDict(OrderedDict[Any, Any]):
    """A module's ``_forward_pre_hooks`` with extra entries, ``hidden``, that only ``items()``
    lists (their keys are strings; torch's are ints).

    ``nn.Module.__call__`` calls ``forward`` directly when its hook dicts are empty, testing their
    truthiness (their length, read in C): hidden entries do not count, so they cost a call of the
    module nothing. A module with hooks of its own calls every hook ``items()`` lists: a hidden
    entry is a no-op there. ``torch.nn.utils.remove_weight_norm`` iterates ``items()`` and
    deletes the key of the hook it found. Pickled and copied, it is a plain ``OrderedDict`` of
    the real hooks.
    """

    hidden: dict[str, Any]

    def __init__(self, real: Iterable[tuple[Any, Any]] = ()) -> None:
        super().__init__(real)
        self.hidden = {}

    def items(self) -> Any:  # (a list when there are hidden entries)
        if not self.hidden:
            return super().items()
        return [*super().items(), *self.hidden.items()]

    def __delitem__(self, key: Any) -> None:
        if isinstance(key, str):  # hidden (a removal may have dropped it already)
            self.hidden.pop(key, None)
        else:
            super().__delitem__(key)

    def __reduce__(self) -> tuple[Any, ...]:
        return (OrderedDict, (list(super().items()),))


def hook_dict(module: nn.Module) -> HookDict | None:
    """``module._forward_pre_hooks`` as a :class:`HookDict`: made one if it is an empty dict
    (a non-empty one cannot be replaced: the handles of its hooks hold it); None otherwise."""
    hooks = module.__dict__.get("_forward_pre_hooks")
    if isinstance(hooks, HookDict):
        return hooks
    if hooks is None or len(hooks) > 0:
        return None
    made = module.__dict__["_forward_pre_hooks"] = HookDict()
    return made


# nn.RNNBase keeps a list of its weights, ``_flat_weights`` (their names in
# ``_flat_weights_names``), that its forward reads. torch rebuilds it at every forward
# (``_update_flat_weights``, which reads every weight up to four times: each read of a computed
# weight is a new tensor) and on ``.to()`` and unpickling (``_init_flat_weights``); a
# weight-normalized RNN overrides both with :func:`read_rnn_weights`.


def rnn_weight_names(module: nn.Module) -> list[str]:
    """The names of the weights (and biases) an ``nn.RNNBase`` keeps in its cache; none for
    any other module."""
    return list(module.__dict__.get("_flat_weights_names", ()))


def read_rnn_weights(
    module: nn.Module, read: Callable[[str], Tensor | None], *, graph: bool = True
) -> None:
    """Rebuild an RNN's cache reading each of its weights once with ``read`` (``graph=False``:
    without autograd, as its cache between forwards)."""
    names = rnn_weight_names(module)
    if graph:
        module.__dict__["_flat_weights"] = [read(n) for n in names]
    elif names:
        with torch.no_grad():
            flat = [read(n) for n in names]
        module.__dict__["_flat_weights"] = flat
        module.__dict__["_flat_weight_refs"] = [None if w is None else weakref.ref(w) for w in flat]


def drop_rnn_weights(state: dict[str, object], names: set[str]) -> None:
    """In a pickled ``state`` of an RNN, drop the cached weights ``names`` (computed tensors,
    which deepcopy refuses): unpickling rebuilds the cache."""
    flat = state.get("_flat_weights")
    if isinstance(flat, list):
        keys = cast(list[str], state["_flat_weights_names"])
        state["_flat_weights"] = [
            None if n in names else w for n, w in zip(keys, flat, strict=True)
        ]


def refresh_rnn_weights(module: nn.Module) -> None:
    """Rebuild the cache of weights an ``nn.RNNBase`` keeps from what its attributes hold now:
    needed after a parameter was replaced without ``setattr`` (torch's own check compares weak
    references and can miss it; between forwards the cache would hold the old weight)."""
    if isinstance(module, nn.RNNBase) and rnn_weight_names(module):
        with torch.no_grad():
            module._init_flat_weights()


def foreach_copy_(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """``d.copy_(s)`` for every pair, in one call."""
    torch._foreach_copy_(destinations, sources)
