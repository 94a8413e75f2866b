"""Weight normalization of any parameter of any module.

How it works. ``weight_norm(module, "weight")`` replaces the parameter ``weight`` by two
parameters, ``weight_g`` (magnitude) and ``weight_v`` (direction; the *same* Parameter object that
was ``weight``, so an optimizer built before keeps a handle on it), and switches the module's class
to a subclass that adds one property, ``weight``, computing ``g * v / ||v||`` on every read. There
are no hooks: the weight is current everywhere, inside and outside ``forward``, and the training
step runs nothing but the math. The subclass is cached per original class and pickles as the
original class plus the list of normalized names, so ``copy.deepcopy``, ``pickle`` and
``torch.save(model)`` work. Removing the last weight norm restores the original class.

With a fixed gain (``gain=c``) ``weight_g`` is a buffer filled with ``c`` instead of a
parameter: saved, loaded, moved and copied with the module, never trained.

The layer classes (``WNLinear`` ...) are this same mechanism with the property declared on the
class; folding them gives back the plain ``torch.nn`` class.

``torch.func.functional_call(module, {"weight": W}, x)``: torch swaps W in with
``setattr(module, "weight", W)`` and back with ``setattr(module, "weight", orig)``, both from its
``swap_tensor``. An assignment made from that function's frame is taken as a swap, not as a new
weight: W is kept aside (``module.__dict__[_SWAPPED]``, a stack per name, for nested calls) and
returned by the property until it is swapped back; g and v are never touched. Every other
assignment (``module.weight = t``) still sets ``g = ||t||``, ``v = t``. That dict is in every
weight-normed module's ``__dict__``, empty between calls: under ``torch.compile`` the property's
``name in swapped`` is then guarded. Dynamo (torch 2.13) does not guard a key *missing* from a
module's ``__dict__`` when it compiles the property's frame on its own: the read ``swap_tensor``
makes before swapping was compiled, and reused for the read inside the call, which computed
``g * v/||v||`` instead of W.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, ClassVar, Literal, TypeVar, cast

import torch
from torch import Tensor, nn

from . import functional as F
from ._errors import WeightNormError
from ._torch_compat import find_torch_weight_norms, refresh_rnn_weights

__all__ = [
    "PerOutput",
    "WeightNormSpec",
    "default_dim",
    "is_weight_normed",
    "remove_weight_norm",
    "weight_norm",
    "weight_norm_specs",
]

M = TypeVar("M", bound=nn.Module)

#: The default ``dim``: one g per output unit of the layer (see :func:`default_dim`).
PerOutput = Literal["output"]

_SPECS = "_wn_specs"  # module.__dict__[_SPECS]: dict[str, WeightNormSpec]
_LAST = (
    "_wn_last"  # module.__dict__[_LAST]: dict[str, (alias of a w read outside forward, version)]
)
_SWAPPED = "_wn_swapped"  # module.__dict__[_SWAPPED]: dict[str, list[(swapped-in, swapped-out)]]
# (always there, see the module docstring)
_EMPTY: dict[str, WeightNormSpec] = {}
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _torch_swap_tensor_code() -> CodeType | None:
    """The code of the function through which torch.func.functional_call swaps module tensors."""
    try:
        from torch.nn.utils._named_member_accessor import swap_tensor
    except ImportError:  # torch moved it: the test suite says so (test_reparam)
        return None
    return cast(CodeType | None, getattr(swap_tensor, "__code__", None))


#: ``swap_tensor.__code__``: an assignment made from a frame running it is a functional_call swap.
_SWAP_CODE = _torch_swap_tensor_code()
#: The local of ``swap_tensor`` that holds the tensor it swaps out (and will swap back in).
_SWAP_ORIG_LOCAL = "orig_tensor"


@dataclass(frozen=True)
class WeightNormSpec:
    """How one parameter is normalized: the unit ``dim`` (non-negative or ``None``), ``eps``,
    ``groups`` (> 1 only for a grouped transposed convolution, see :mod:`weightnorm.functional`)
    and ``fixed_gain`` (``g`` a buffer, not a trained parameter: ``weight_norm(..., gain=c)``).

    ``ndim`` (the weight's rank) fixes the reduced dims and whether PyTorch's fused kernels fit
    the layout, computed once here rather than at every read of the weight."""

    dim: int | None
    eps: float = F.DEFAULT_EPS
    groups: int = 1
    fixed_gain: bool = False
    ndim: int = field(default=0, repr=False, compare=False)
    reduce_dims: tuple[int, ...] = field(init=False, repr=False, compare=False)
    layout_fusable: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dims = tuple(F._reduce_dims(self.ndim, self.dim, self.groups)) if self.ndim else ()
        fusable = F._fused_layout(self.ndim, self.dim, self.groups)
        object.__setattr__(self, "reduce_dims", dims)
        object.__setattr__(self, "layout_fusable", fusable)


# --------------------------------------------------------------------------------------------
# The property and the class machinery
# --------------------------------------------------------------------------------------------


def _gain(module: nn.Module, name: str, spec: WeightNormSpec) -> Tensor:
    """``<name>_g``: a parameter, or with a fixed gain a buffer."""
    return cast(Tensor, (module._buffers if spec.fixed_gain else module._parameters)[name + "_g"])


def _compute(module: nn.Module, name: str, spec: WeightNormSpec) -> Tensor:
    v = cast(Tensor, module._parameters[name + "_v"])
    g = _gain(module, name, spec)
    if v.ndim != spec.ndim:  # replaced by a tensor of another rank: take the checked path
        return F.weight_norm(v, g, spec.dim, spec.eps, groups=spec.groups)
    return F._weight_norm_core(
        v, g, spec.dim, spec.eps, spec.groups, spec.reduce_dims, spec.layout_fusable
    )


def _current_weight(module: nn.Module, name: str, spec: WeightNormSpec) -> Tensor:
    if torch.compiler.is_compiling():  # no Python-side bookkeeping inside a traced graph
        return _compute(module, name, spec)  # (the math then takes its composite form)
    d = module.__dict__
    last = d.get(_LAST)
    if last:
        entry = last.pop(name, None)
        if entry is not None and entry[0]._version != entry[1]:
            # the w handed out last was changed in place (``nn.init.*_``): make it the new weight
            _set_weight(module, name, spec, entry[0])
    w = _compute(module, name, spec)
    # frames: 0 this function, 1 the property, 2 whoever read the weight
    readers: frozenset[CodeType] = type(module)._wn_readers  # type: ignore[attr-defined]
    if sys._getframe(2).f_code not in readers and not w.is_inference():
        # read outside the module's own forward (nn.init.*_, a tied weight, a logger): keep an
        # alias to see an in-place change at the next read. Detached, it shares w's version
        # counter but not its graph. (A forward's reads need nothing kept: its graph holds w.)
        (last if last is not None else d.setdefault(_LAST, {}))[name] = (w.detach(), w._version)
    return w


def _readers(cls: type) -> frozenset[CodeType]:
    """The code of every ``forward`` in ``cls``'s MRO: a weight read there is the module's own."""
    codes = {_WeightNormMixin._update_flat_weights.__code__}  # an RNN's forward reads through it
    for klass in cls.__mro__:
        forward = klass.__dict__.get("forward")
        code = getattr(forward, "__code__", None)
        if code is not None:
            codes.add(code)
    return frozenset(codes)


def _sync(module: nn.Module) -> None:
    """Write back any in-place change made to a weight handed out earlier."""
    last = module.__dict__.get(_LAST)
    if not last:
        return
    specs = weight_norm_specs(module)
    for name, (w, version) in list(last.items()):
        if name in specs and w._version != version:
            _set_weight(module, name, specs[name], w)
    last.clear()


def _set_weight(module: nn.Module, name: str, spec: WeightNormSpec, value: Any) -> None:
    """Make ``value`` the weight: ``g = ||value||``, ``v = value`` (in place: objects are kept).
    With a fixed gain only its direction is taken: ``v = value``, ``g`` stays."""
    v = cast(nn.Parameter, module._parameters[name + "_v"])
    g = _gain(module, name, spec)
    if not isinstance(value, Tensor) or value.shape != v.shape:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise WeightNormError(
            f"{type(module).__name__}.{name} is weight-normalized: it can be assigned a tensor of "
            f"shape {tuple(v.shape)}, got {got}"
        )
    with torch.no_grad():
        src = value.detach()
        if not spec.fixed_gain:
            g.copy_(F.norm_except_dim(src, spec.dim, groups=spec.groups).reshape(g.shape))
        v.copy_(src)
    module.__dict__.get(_LAST, {}).pop(name, None)


def _swap(module: nn.Module, name: str, value: Any, frame: FrameType) -> None:
    """An assignment to ``name`` made by torch's ``swap_tensor`` (``frame``): swap ``value`` in,
    or, when it is the tensor the innermost swap took out, swap it back. g and v stay as they are.

    Raises:
        WeightNormError: torch's ``swap_tensor`` no longer keeps the tensor it swaps out where it
            did (nothing is changed then).
    """
    swapped: dict[str, list[tuple[Any, Any]]] = module.__dict__.setdefault(_SWAPPED, {})
    stack = swapped.get(name)
    if stack and value is stack[-1][1]:  # the swap back
        stack.pop()
        if not stack:
            del swapped[name]  # (the dict stays: the module docstring says why)
        return
    local = frame.f_locals
    if _SWAP_ORIG_LOCAL not in local:
        raise WeightNormError(
            f"{_describe(module)}.{name} is weight-normalized and torch's swap_tensor (used by "
            "torch.func.functional_call) changed: it no longer keeps the tensor it swaps out in "
            f"{_SWAP_ORIG_LOCAL!r}, so weightnorm cannot swap {name!r} safely; pass "
            f"{name + '_g'!r} and {name + '_v'!r} to functional_call instead"
        )
    if value is not None and not isinstance(value, Tensor):
        raise WeightNormError(
            f"{_describe(module)}.{name}: functional_call can swap in a tensor, got "
            f"{type(value).__name__}"
        )
    swapped.setdefault(name, []).append((value, local[_SWAP_ORIG_LOCAL]))


def _assigner_frame() -> FrameType | None:
    """The frame that assigned the weight: the first one above ``__setattr__`` (and above any
    subclass's ``__setattr__`` calling ``super()``)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "__setattr__":
        frame = frame.f_back  # this helper, and torch.compiler.disable's wrapper
    while frame is not None and frame.f_code.co_name == "__setattr__":
        frame = frame.f_back
    return frame


def _assign_eagerly(module: nn.Module, name: str, spec: WeightNormSpec, value: Any) -> None:
    """``module.<name> = value`` for a normalized ``name``: a functional_call swap when made by
    torch's ``swap_tensor``, otherwise a new weight (``g = ||value||``, ``v = value``)."""
    frame = _assigner_frame()
    if frame is not None and frame.f_code is _SWAP_CODE:
        _swap(module, name, value, frame)
    else:
        _set_weight(module, name, spec, value)


_Assigner = Callable[[nn.Module, str, WeightNormSpec, Any], None]
_assign_outside: _Assigner | None = None  # made by _assign_outside_graph at first use


def _assign_outside_graph() -> _Assigner:
    """:func:`_assign_eagerly` run outside any graph dynamo traces (it cannot inspect frames): an
    assignment to a normalized weight inside ``torch.compile`` is a graph break. Made at first
    use: ``torch.compiler.disable`` imports dynamo, which ``import weightnorm`` should not. (Kept
    in a global, not behind ``functools.cache``: dynamo traces through a cache wrapper, warning.)"""
    global _assign_outside
    if _assign_outside is None:
        _assign_outside = cast(
            _Assigner,
            torch.compiler.disable(_assign_eagerly),  # type: ignore[no-untyped-call]
        )
    return _assign_outside


def _assign(module: nn.Module, name: str, spec: WeightNormSpec, value: Any) -> None:
    if torch.compiler.is_compiling():
        _assign_outside_graph()(module, name, spec, value)
    else:
        _assign_eagerly(module, name, spec, value)


def _make_property(name: str) -> property:
    def fget(self: nn.Module) -> Any:
        d = self.__dict__
        spec = d.get(_SPECS, _EMPTY).get(name)
        if spec is None:  # a WN* layer before (or after) its weight norm: a plain parameter
            return nn.Module.__getattr__(self, name)
        swapped = d.get(_SWAPPED)  # inside torch.func.functional_call(module, {name: W})
        if swapped is not None and name in swapped:
            return swapped[name][-1][0]
        return _current_weight(self, name, spec)

    def fset(self: nn.Module, value: Any) -> None:
        spec = self.__dict__.get(_SPECS, _EMPTY).get(name)
        if spec is None:
            raise AttributeError(f"cannot set {name!r} on {type(self).__name__} to {value!r}")
        _set_weight(self, name, spec, value)

    return property(
        fget, fset, doc=f"``{name}`` computed as ``g * v / ||v||`` from ``{name}_g``, ``{name}_v``."
    )


class _WeightNormMixin:
    """Behaviour shared by every weight-normalized module class (dynamic or ``WN*``)."""

    _wn_props: ClassVar[frozenset[str]] = frozenset()
    _wn_readers: ClassVar[frozenset[CodeType]] = frozenset()  # see _current_weight

    def __setattr__(self, name: str, value: Any) -> None:
        spec = self.__dict__.get(_SPECS, _EMPTY).get(name)
        if spec is not None:
            _assign(cast(nn.Module, self), name, spec, value)
            return
        super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        parent = getattr(super(), "__getstate__", None)
        with torch.no_grad():  # (nn.RNNBase's refreshes its cache of weights: no graph needed)
            state = dict(parent() if parent is not None else self.__dict__)
        state.pop(_LAST, None)  # handed-out tensors are not part of the module
        state.pop(_SWAPPED, None)  # a functional_call in progress is not either (nor shared:
        # __setstate__ gives the copy its own)
        flat = state.get("_flat_weights")
        if flat is not None:  # an RNN caches computed weights (non-leaf: deepcopy refuses them);
            # store v in their place, a leaf; __setstate__ rebuilds the cache with the weights
            names = state["_flat_weights_names"]
            specs = self.__dict__.get(_SPECS, _EMPTY)
            params = self.__dict__["_parameters"]
            state["_flat_weights"] = [
                params[n + "_v"] if n in specs else w for n, w in zip(names, flat, strict=True)
            ]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]
        self.__dict__.setdefault(_SWAPPED, {})
        refresh_rnn_weights(cast(nn.Module, self))  # an RNN's cache: the weights, not v

    def _init_flat_weights(self) -> None:
        """nn.RNNBase's (re)build of its cache of weights (``_flat_weights``), read by its forward:
        torch's reads every weight twice and would keep the graph of a computed one; this reads
        each once, under no_grad (the forward rebuilds the cache with the graph it needs, see
        :meth:`_update_flat_weights`). Called on ``.to()``, on apply and removal of weight norm
        and after unpickling, so that between forwards the cache holds the current weights."""
        names = self.__dict__.get("_flat_weights_names")
        if names is None:
            return
        module = cast(nn.Module, self)
        specs = self.__dict__.get(_SPECS, _EMPTY)
        with torch.no_grad():
            flat = [
                _compute(module, n, specs[n]) if n in specs else getattr(module, n, None)
                for n in names
            ]
        self.__dict__["_flat_weights"] = flat
        self.__dict__["_flat_weight_refs"] = [
            weakref.ref(w) if w is not None else None for w in flat
        ]

    def _update_flat_weights(self) -> None:
        """nn.RNNBase calls this at every forward to refresh its list of weights. Its own version
        reads each weight up to four times (hasattr and getattr, to compare, then to rebuild);
        a computed weight is new at every read, so rebuild the list once, reading each once."""
        names = self.__dict__.get("_flat_weights_names")
        if names is None:
            return
        module = cast(nn.Module, self)
        flat = []
        for n in names:  # (a loop, not a comprehension: the read must come from this frame)
            flat.append(getattr(module, n))
        self._flat_weights = flat

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        _sync(cast(nn.Module, self))
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        module = cast(nn.Module, self)
        for name, spec in weight_norm_specs(module).items():
            _accept_other_formats(module, state_dict, prefix, name, spec)
        module.__dict__.pop(_LAST, None)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        module = cast(nn.Module, self)
        specs = weight_norm_specs(module)
        before = {n: _gain(module, n, s).detach() for n, s in specs.items()}
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        kept_g = False
        for name, old_g in before.items():
            g = _gain(module, name, specs[name])
            v = cast(nn.Parameter, module._parameters[name + "_v"])
            if v.dtype in _LOW_PRECISION and g.dtype in _LOW_PRECISION:
                # keep g in float32: a half-precision g cannot take small updates
                kept = old_g.to(device=g.device, dtype=torch.float32)
                if specs[name].fixed_gain:  # (a buffer: replaced, as _apply does)
                    module._buffers[name + "_g"] = kept
                else:
                    g.data = kept
                kept_g = True
        module.__dict__.pop(_LAST, None)
        if kept_g:  # an RNN's cache was rebuilt from the half-precision g
            refresh_rnn_weights(module)
        return out

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        specs = self.__dict__.get(_SPECS, _EMPTY)
        if not specs:
            return cast(str, base)
        parts = [
            f"{n}(dim={s.dim}{', groups=' + str(s.groups) if s.groups > 1 else ''}"
            f"{', gain=fixed' if s.fixed_gain else ''})"
            for n, s in specs.items()
        ]
        return (
            f"{base}, weight_norm=[{', '.join(parts)}]"
            if base
            else f"weight_norm=[{', '.join(parts)}]"
        )


def _rebuild(root: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    """Unpickling entry point: an empty instance of the weight-normed subclass of ``root``."""
    cls = _normed_class(root, frozenset(names))
    return cast(nn.Module, object.__new__(cls))


def _dynamic_reduce_ex(self: nn.Module, protocol: Any) -> Any:
    cls = type(self)
    state = self.__getstate__()  # type: ignore[no-untyped-call]
    return (_rebuild, (cls._wn_root, tuple(sorted(cls._wn_props))), state)  # type: ignore[attr-defined]


_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _root_class(cls: type) -> type:
    return cast(type, cls.__dict__.get("_wn_root", cls))


def _normed_class(root: type, names: frozenset[str]) -> type:
    """The class for an instance of ``root`` whose parameters ``names`` are weight-normed."""
    if not names:
        return cast(type, root.__dict__.get("_wn_plain", root))
    have: frozenset[str] = getattr(root, "_wn_props", frozenset())
    missing = names - have
    if not missing:
        return root
    key = (root, missing)
    cls = _CLASSES.get(key)
    if cls is None:
        bases = (root,) if issubclass(root, _WeightNormMixin) else (_WeightNormMixin, root)
        namespace: dict[str, Any] = {n: _make_property(n) for n in sorted(missing)}
        namespace.update(
            _wn_readers=_readers(root),
            _wn_root=root,
            _wn_props=have | missing,
            __reduce_ex__=_dynamic_reduce_ex,
            __module__=root.__module__,
            __doc__=root.__doc__,
        )
        cls = type(f"WeightNormed{root.__name__}", bases, namespace)
        _CLASSES[key] = cls
    return cls


def _set_specs(module: nn.Module, specs: dict[str, WeightNormSpec]) -> None:
    root = _root_class(type(module))
    module.__dict__[_SPECS] = specs
    module.__dict__.pop(_LAST, None)
    if specs:
        module.__dict__.setdefault(_SWAPPED, {})
    else:
        module.__dict__.pop(_SWAPPED, None)
    module.__class__ = _normed_class(root, frozenset(specs))


def weight_norm_specs(module: nn.Module) -> dict[str, WeightNormSpec]:
    """The weight norms of ``module`` itself, by parameter name (a copy).

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.weight_norm_specs(wn.weight_norm(torch.nn.Linear(3, 2)))
        {'weight': WeightNormSpec(dim=0, eps=1e-12, groups=1, fixed_gain=False)}
    """
    return dict(module.__dict__.get(_SPECS, _EMPTY))


# --------------------------------------------------------------------------------------------
# Loading checkpoints written in other formats
# --------------------------------------------------------------------------------------------


def _accept_other_formats(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, name: str, spec: WeightNormSpec
) -> None:
    """Rewrite, in the (copied) ``state_dict`` given to ``load_state_dict``, the keys of ``name``.

    Accepts torch's parametrize keys, a plain ``<name>``, and a g that was normalized along a
    different dim (torch's ``dim=0`` default on a ConvTranspose): those are folded to ``w`` and
    re-split along this module's dim, so the loaded layer computes the same weight.
    """
    kg, kv = prefix + name + "_g", prefix + name + "_v"
    p0 = prefix + "parametrizations." + name + ".original0"
    p1 = prefix + "parametrizations." + name + ".original1"
    if kg not in state_dict and kv not in state_dict:
        if p0 in state_dict and p1 in state_dict:
            state_dict[kg] = state_dict.pop(p0)
            state_dict[kv] = state_dict.pop(p1)
        elif prefix + name in state_dict:
            w = state_dict.pop(prefix + name)
            if isinstance(w, Tensor):
                state_dict[kg] = F.norm_except_dim(w, spec.dim, groups=spec.groups)
            state_dict[kv] = w
            return
        else:
            return
    g, v = state_dict.get(kg), state_dict.get(kv)
    own_g: Tensor | None = _gain(module, name, spec)
    if not isinstance(g, Tensor) or not isinstance(v, Tensor) or own_g is None:
        return
    if g.shape == own_g.shape:
        return
    if g.numel() == 1 and own_g.numel() == 1:  # torch's whole-tensor g is 0-d, ours keeps dims
        state_dict[kg] = g.reshape(own_g.shape)
        return
    source_dim = F.dim_of_g(g.shape, v.shape)
    if source_dim is False:
        return  # let load_state_dict report the size mismatch
    with torch.no_grad():
        w = F.weight_norm(v, g, source_dim)
        state_dict[kg] = F.norm_except_dim(w, spec.dim, groups=spec.groups)
        state_dict[kv] = w


# --------------------------------------------------------------------------------------------
# Public API: one module, one parameter
# --------------------------------------------------------------------------------------------


def default_dim(module: nn.Module, name: str = "weight") -> tuple[int, int]:
    """The per-output-unit ``(dim, groups)`` for parameter ``name`` of ``module``.

    ``0`` for Linear, Conv, Embedding and recurrent weights (rows are output units). A
    ConvTranspose weight is laid out ``(in, out/groups, *kernel)``: its output units run along
    dim 1, and with ``groups > 1`` each output channel's vector is a slice of its group's rows.

    Example::

        >>> import torch
        >>> default_dim(torch.nn.ConvTranspose1d(4, 6, 3))
        (1, 1)
    """
    if name == "weight" and isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 1, int(module.groups)
    return 0, 1


def _describe(module: nn.Module) -> str:
    return _root_class(type(module)).__name__


def weight_norm(
    module: M,
    name: str = "weight",
    dim: int | PerOutput | None = "output",
    eps: float = F.DEFAULT_EPS,
    *,
    gain: float | None = None,
) -> M:
    r"""Weight-normalize parameter ``name`` of ``module`` in place and return the module.

    .. math::
        \mathbf{w} = \frac{g}{\|\mathbf{v}\|}\,\mathbf{v}

    The parameter is replaced by ``<name>_g`` (one magnitude per unit, kept in float32 for
    half-precision weights) and ``<name>_v`` (the direction: the same Parameter object that was
    ``<name>``). ``module.<name>`` stays readable at any time and is always current. Outputs are
    unchanged: ``g`` starts at ``||w||`` and ``v`` at ``w``.

    With a fixed ``gain=c`` there is no learned magnitude: ``w = c v/||v||``, every unit of norm
    ``c``, and ``<name>_g`` is a buffer holding ``c`` per unit (in the state dict, so the
    checkpoint is an ordinary weight-norm one; loaded, moved and copied with the module, never
    seen by an optimizer). Outputs change then: only the direction of ``w`` is kept, and
    assigning the weight (``module.weight = t``, ``nn.init.*_``) sets its direction only. This
    is EDM2's magnitude-preserving layer with ``c = 1`` (Karras et al., "Analyzing and
    Improving the Training Dynamics of Diffusion Models", CVPR 2024, eq. 47: its ``MPConv``
    divides a weight normalized to ``||v|| = sqrt(fan_in)`` by ``sqrt(fan_in)``, which is
    ``v/||v||``); pair it with :func:`weightnorm.force_weight_norm`.

    Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2.

    Args:
        module (nn.Module): the module to change.
        name (str, optional): the parameter. Default: ``"weight"``.
        dim (int, None or "output", optional): the unit dimension. ``"output"`` is one unit per
            output unit of the layer, ConvTranspose included (see :func:`default_dim`); an int
            keeps PyTorch's meaning except that negative values count from the end; ``None``
            normalizes the whole tensor. Default: ``"output"``.
        eps (float, optional): lower bound on ``||v||``. Default: ``1e-12``.
        gain (float, optional): a fixed gain ``c > 0`` instead of a learned ``g``. Default:
            ``None`` (``g`` learned, the paper).

    Returns:
        The same module.

    Raises:
        WeightNormError: unknown, ``None``, non-floating or uninitialized (lazy) parameter, a
            parameter already normalized (by us or by PyTorch), ``dim`` out of range, a
            ``gain`` that is not positive and finite, or an embedding with ``sparse=True``.
        TypeError: ``gain`` is not a real number.

    Example::

        >>> import torch, weightnorm as wn
        >>> conv = wn.weight_norm(torch.nn.Conv1d(4, 8, 3))
        >>> sorted(n for n, _ in conv.named_parameters())
        ['bias', 'weight_g', 'weight_v']
        >>> conv.weight_g.shape
        torch.Size([8, 1, 1])
        >>> mp = wn.weight_norm(torch.nn.Linear(4, 3), gain=1.0)  # fixed: every row of norm 1
        >>> sorted(n for n, _ in mp.named_parameters()), [n for n, _ in mp.named_buffers()]
        (['bias', 'weight_v'], ['weight_g'])
        >>> bool(torch.allclose(mp.weight.norm(dim=1), torch.ones(3)))
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    kind = _describe(module)
    specs = weight_norm_specs(module)
    if name in specs:
        raise WeightNormError(
            f"{kind}.{name} is already weight-normalized; call wn.remove_weight_norm(module, "
            f"{name!r}) first to change its settings"
        )
    for found in find_torch_weight_norms(module):
        if found.name == name:
            raise WeightNormError(
                f"{kind}.{name} already carries torch's {found.kind} weight norm; convert it with "
                "wn.replace_torch_weight_norm(model), or remove it with wn.fold(module)"
            )
    if name not in module._parameters:
        available = ", ".join(module._parameters) or "none"
        raise WeightNormError(
            f"{kind} has no parameter {name!r}; expected one of its own parameters: {available}"
        )
    param = module._parameters[name]
    if param is None:
        raise WeightNormError(f"{kind}.{name} is None; expected a tensor to normalize")
    if isinstance(param, nn.parameter.UninitializedParameter):
        raise WeightNormError(
            f"{kind}.{name} is uninitialized (a lazy module); run one forward pass to give it "
            "a shape, then apply weight norm"
        )
    if not param.is_floating_point():
        raise WeightNormError(f"{kind}.{name} has dtype {param.dtype}; expected a floating dtype")
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse:
        raise WeightNormError(
            f"{kind} has sparse=True: its weight gradient is sparse, but g * v/||v|| is computed "
            "whole at every forward, so g and v need dense gradients and the sparse backward "
            "fails (torch's weight norm fails the same way); expected sparse=False"
        )
    for suffix in ("_g", "_v"):
        if hasattr(module, name + suffix):
            raise WeightNormError(f"{kind} already has an attribute {name + suffix!r}")
    if eps < 0:
        raise WeightNormError(f"eps must be >= 0, got {eps}")
    _check_gain(gain)
    if dim == "output":
        unit_dim, groups = default_dim(module, name)
        if param.ndim == 0:
            unit_dim = None  # type: ignore[assignment]
    elif dim is None or (isinstance(dim, int) and not isinstance(dim, bool)):
        try:
            unit_dim, groups = F.normalize_dim(dim, param.ndim), 1  # type: ignore[assignment]
        except IndexError as err:
            raise WeightNormError(f"{kind}.{name} has shape {tuple(param.shape)}: {err}") from None
    else:
        raise WeightNormError(f"dim must be an int, None or 'output', got {dim!r}")
    spec = WeightNormSpec(
        dim=unit_dim, eps=float(eps), groups=groups, fixed_gain=gain is not None, ndim=param.ndim
    )

    with torch.no_grad():
        norm = F.norm_except_dim(param.detach(), spec.dim, groups=spec.groups)
    g_dtype = torch.float32 if param.dtype in _LOW_PRECISION else param.dtype
    if gain is None:
        g = nn.Parameter(norm.to(g_dtype), requires_grad=param.requires_grad)
        _rename_parameter(module, name, {name + "_g": g, name + "_v": param})
    else:
        _rename_parameter(module, name, {name + "_v": param})
        module.register_buffer(name + "_g", torch.full_like(norm, float(gain), dtype=g_dtype))
    specs[name] = spec
    _set_specs(module, specs)
    refresh_rnn_weights(module)  # an RNN's cache of weights held the Parameter, now v
    return module


def _check_gain(gain: object) -> None:
    if gain is None:
        return
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise TypeError(
            f"gain must be None (a learned g) or a positive finite number (a fixed gain), got "
            f"{type(gain).__name__} {gain!r}"
        )
    if not (math.isfinite(gain) and gain > 0):
        raise WeightNormError(
            f"gain must be None (a learned g) or a positive finite number (a fixed gain), got "
            f"{gain!r}"
        )


def _rename_parameter(module: nn.Module, old: str, new: dict[str, nn.Parameter]) -> None:
    """Replace ``old`` in ``module._parameters`` by the entries of ``new``, keeping the order."""
    items = list(module._parameters.items())
    module._parameters.clear()
    for key, value in items:
        if key == old:
            module._parameters.update(new)
        else:
            module._parameters[key] = value


def remove_weight_norm(module: M, name: str = "weight") -> M:
    r"""Fold the weight norm of ``name`` back into a plain parameter and return the module.

    The parameter ``<name>`` becomes an ``nn.Parameter`` holding the current ``g * v / ||v||``,
    also under ``torch.no_grad()`` and ``torch.inference_mode()``. It is the same Parameter
    object as ``<name>_v`` was, so an optimizer built on the normalized module keeps training it.
    When the module carries no weight norm any more its class is the original one again
    (``WNConv1d`` folds to ``nn.Conv1d``).

    Args:
        module (nn.Module): a module with a weight norm on ``name`` (ours; for PyTorch's use
            :func:`weightnorm.fold`).
        name (str, optional): the parameter. Default: ``"weight"``.

    Returns:
        The same module.

    Raises:
        WeightNormError: ``name`` is not weight-normalized by this library.

    Example::

        >>> import torch, weightnorm as wn
        >>> lin = wn.remove_weight_norm(wn.weight_norm(torch.nn.Linear(3, 2)))
        >>> type(lin) is torch.nn.Linear, isinstance(lin.weight, torch.nn.Parameter)
        (True, True)
    """
    specs = weight_norm_specs(module)
    if name not in specs:
        hint = ""
        if any(f.name == name for f in find_torch_weight_norms(module)):
            hint = " (it carries torch's weight norm: use wn.fold(module))"
        normed = ", ".join(specs) or "none"
        raise WeightNormError(
            f"{_describe(module)}.{name} is not weight-normalized{hint}; weight-normalized "
            f"parameters of this module: {normed}"
        )
    _sync(module)
    spec = specs.pop(name)
    v = cast(nn.Parameter, module._parameters[name + "_v"])
    with torch.no_grad():
        w = _compute(module, name, spec)
        v.copy_(w)
    if spec.fixed_gain:
        del module._buffers[name + "_g"]
        _rename_parameter(module, name + "_v", {name: v})
    else:
        del module._parameters[name + "_v"]
        _rename_parameter(module, name + "_g", {name: v})
    _set_specs(module, specs)
    refresh_rnn_weights(module)  # an RNN's cache held the computed weight: the Parameter again
    return module


def is_weight_normed(module: nn.Module, name: str = "weight") -> bool:
    """Whether parameter ``name`` of ``module`` carries this library's weight norm.

    PyTorch's own weight norms are not counted; :func:`weightnorm.fold` removes those too.

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.is_weight_normed(wn.WNLinear(2, 2)), wn.is_weight_normed(torch.nn.Linear(2, 2))
        (True, False)
    """
    return name in module.__dict__.get(_SPECS, _EMPTY)
