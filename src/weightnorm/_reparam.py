"""Weight normalization of any parameter of any module.

How it works. ``weight_norm(module, "weight")`` keeps the slot ``weight`` in
``module._parameters`` (it holds ``None`` then, like an absent bias), appends ``weight_g``
(magnitude) and ``weight_v`` (direction: the *same* Parameter object that was ``weight``, so an
optimizer built before keeps its handle on it), records a
:class:`~weightnorm.functional.WeightNormSpec` for it, and gives the module a subclass of its
class with a property ``weight`` that computes ``g * v / ||v||`` (:mod:`weightnorm.functional`)
at every read: the weight is current everywhere, inside and outside ``forward``, and there are
no module hooks. The subclass is made once per original class and pickles as that class plus the
normalized names; removing the last weight norm restores the original class. The layer classes
(``WNLinear`` ...) are the same mechanism with the property declared on the class.

- ``module.weight = t`` sets ``g = ||t||`` and ``v = t`` (with a fixed gain, only ``v``).
- The tensor the property handed out last is watched: an in-place change to it (``nn.init.*_``,
  ``w.mul_``) is written into ``g`` and ``v`` at the next read of the weight, at
  ``state_dict()``, deepcopy and pickling, or when the watch ends. Read with a graph, it is
  watched until a backward pass is about to compute its gradient (a pre hook on its autograd
  node), read without one until it is freed (a detached alias and a weak reference); a change
  made to a tensor after a backward pass went through it is not seen (read the weight again).
  Writes through ``.data`` bypass PyTorch's version counter and cannot be seen.
- ``torch.func.functional_call(module, {"weight": W})`` fills the slot for the call; the
  property returns what fills it, and ``g`` and ``v`` are not touched.
- With a fixed gain (``gain=c``) ``weight_g`` is a buffer filled with ``c``: saved, loaded,
  moved and copied with the module, never trained.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn

from . import _torch_compat as compat
from . import functional as F
from ._errors import WeightNormError
from ._torch_removal import TorchRemovable, expose
from .functional import WeightNormSpec

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

_SPECS = "_wn_specs"  # module.__dict__[_SPECS]: {name: WeightNormSpec}
_WATCH = "_wn_watch"  # module.__dict__[_WATCH]: {name: _Watch}, the weights handed out
_EMPTY: dict[str, WeightNormSpec] = {}


# --------------------------------------------------------------------------------------------
# Reading and writing a normalized weight
# --------------------------------------------------------------------------------------------


def _gain(module: nn.Module, name: str, spec: WeightNormSpec) -> Tensor:
    """``<name>_g``: a parameter, or with a fixed gain a buffer."""
    return cast(Tensor, (module._parameters if spec.gain is None else module._buffers)[name + "_g"])


def _compute(
    module: nn.Module, name: str, spec: WeightNormSpec, captured: bool | None = None
) -> Tensor:
    """``g v/||v||`` of ``name`` (``captured``: :func:`weightnorm._torch_compat.capturing`)."""
    if captured is None:
        captured = compat.capturing()
    v = cast(Tensor, module._parameters[name + "_v"])
    if not captured and v.shape != spec.shape:  # (not under jit.trace: shapes are tensors)
        raise WeightNormError(
            f"{_describe(module)}.{name}_v has shape {tuple(v.shape)}, but {name} was normalized "
            f"with shape {spec.shape}; remove the weight norm and apply it again to change it"
        )
    g = _gain(module, name, spec)
    return F.weight_and_norms(v, g, spec, captured)[0]


#: The weight handed out last, the version it had, the token of the read that made it, and, read
#: without a graph, a weak reference to it. Read with a graph, the tensor itself, until a pre hook
#: on its autograd node ends the watch: when that node's backward is about to run, every consumer
#: of the weight has run its own backward and released it, so the watch adds no memory to a
#: training step (and no op). Read without a graph (no node), a detached alias (it shares the
#: tensor's storage and version counter, not its life), until the weak reference's callback ends
#: the watch when the tensor is freed. The hooks and callbacks hold only the module's weak
#: reference and the token, so no reference cycle runs through an autograd node.
_Watch = tuple[Tensor, int, object, "weakref.ref[Tensor] | None"]


def _read(module: nn.Module, name: str) -> Tensor:
    """The property's getter: what fills the slot (functional_call), else ``g v/||v||``,
    watched: see the module docstring."""
    params = module._parameters
    slot = params.get(name)
    if slot is not None:
        return slot
    spec = module.__dict__.get(_SPECS, _EMPTY).get(name)
    if spec is None:  # (a WN* layer while torch's __init__ registers the parameter)
        raise AttributeError(f"{type(module).__name__} has no attribute {name!r} yet")
    if compat.capturing():  # no Python-side bookkeeping inside a graph or a transform
        return _compute(module, name, spec, True)
    watch = module.__dict__[_WATCH]
    if name in watch:
        _settle(module, name)
    w = _compute(module, name, spec, False)
    token = object()
    end = partial(_end, weakref.ref(module), name, token)
    if w.grad_fn is not None:
        w.grad_fn.register_prehook(end)
        watch[name] = (w, w._version, token, None)
    elif not w.is_inference():  # (an inference tensor cannot be changed in place)
        watch[name] = (w.detach(), w._version, token, weakref.ref(w, end))
    return w


def _settle(module: nn.Module, name: str) -> None:
    """Stop watching the weight handed out last; write an in-place change of it into g, v."""
    watch = module.__dict__[_WATCH].pop(name, None)
    if watch is not None and watch[0]._version != watch[1]:
        _set_weight(module, name, watch[0])


def _end(module_ref: weakref.ref[nn.Module], name: str, token: object, *_: Any) -> None:
    """The weight of the read ``token`` is about to be used by a backward pass, or was freed:
    settle it if it is still the one watched."""
    module = module_ref()
    watch = None if module is None else module.__dict__.get(_WATCH, _EMPTY).get(name)
    if watch is not None and watch[2] is token:
        _settle(cast(nn.Module, module), name)


def _sync(module: nn.Module) -> None:
    """Write every in-place change of a weight handed out into its g and v."""
    for name in list(module.__dict__.get(_WATCH, ())):
        _settle(module, name)


def _set_weight(module: nn.Module, name: str, value: Any) -> None:
    """Make ``value`` the weight: ``g = ||value||``, ``v = value``, in place (the objects are
    kept). With a fixed gain only its direction is taken: ``v = value``, ``g`` stays."""
    spec = module.__dict__[_SPECS][name]
    v = cast(nn.Parameter, module._parameters[name + "_v"])
    if not isinstance(value, Tensor) or value.shape != v.shape:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise WeightNormError(
            f"{_describe(module)}.{name} is weight-normalized: it can be assigned a tensor of "
            f"shape {tuple(v.shape)}, got {got}"
        )
    module.__dict__[_WATCH].pop(name, None)
    with torch.no_grad():
        src = value.detach()
        if spec.gain is None:
            g = _gain(module, name, spec)
            g.copy_(spec.split(src).reshape(g.shape))
        v.copy_(src)


# --------------------------------------------------------------------------------------------
# The classes of weight-normalized modules
# --------------------------------------------------------------------------------------------


def _property(name: str) -> property:
    def weight(self: nn.Module) -> Tensor:
        return _read(self, name)

    doc = f"``{name}`` computed as ``g * v / ||v||`` from ``{name}_g`` and ``{name}_v``."
    return property(weight, doc=doc)


class _WeightNormMixin(TorchRemovable):
    """What every weight-normalized module class adds to ``nn.Module``, each for one behaviour
    (and, from :class:`~weightnorm._torch_removal.TorchRemovable`, what torch's removal
    functions find)."""

    _wn_props: ClassVar[frozenset[str]] = frozenset()

    def _wn_torch_names(self) -> dict[str, int | None]:
        return {n: s.dim for n, s in self.__dict__.get(_SPECS, _EMPTY).items()}

    def _wn_torch_remove(self, name: str) -> None:
        remove_weight_norm(cast(nn.Module, self), name)

    def __setattr__(self, name: str, value: Any) -> None:
        """``module.<name> = t`` for a normalized name sets g and v."""
        if name in self.__dict__.get(_SPECS, _EMPTY):
            _set_weight(cast(nn.Module, self), name, value)
        else:
            super().__setattr__(name, value)

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and deepcopy: an in-place change to a weight handed out is written first; the
        watched weights are not part of the module, and an RNN's cache of computed weights
        (non-leaf tensors) is rebuilt by ``__setstate__``."""
        _sync(cast(nn.Module, self))
        with torch.no_grad():  # (nn.RNNBase's refreshes its cache first: no graph needed)
            state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop(_WATCH, None)
        compat.drop_rnn_weights(state, set(state[_SPECS]))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__[_WATCH] = {}
        compat.refresh_rnn_weights(cast(nn.Module, self))

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` cannot compile the property that computes the weight."""
        raise WeightNormError(
            f"torch.jit.script cannot compile a weight-normalized {_describe(self)} (its weight is "
            "computed by a Python property); fold the model first (wn.fold(model): plain layers "
            "with the same weights) and script that, or use torch.jit.trace / torch.export"
        )

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        _sync(cast(nn.Module, self))
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Loading also reads torch's parametrize keys, a plain weight, and a ``g`` along
        another dim (see :func:`_accept_other_formats`)."""
        module = cast(nn.Module, self)
        for name, spec in module.__dict__[_SPECS].items():
            _accept_other_formats(module, state_dict, prefix, name, spec)
        module.__dict__[_WATCH].clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """``.to()``, ``.half()``, ...: a float32 ``g`` stays float32 for half-precision weights
        (a half-precision g cannot take small updates); its values are kept exactly."""
        module = cast(nn.Module, self)
        specs: dict[str, WeightNormSpec] = module.__dict__[_SPECS]
        before = {n: _gain(module, n, s).detach() for n, s in specs.items()}
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        module.__dict__[_WATCH].clear()
        for name, old in before.items():
            g = _gain(module, name, specs[name])
            v = cast(Tensor, module._parameters[name + "_v"])
            if v.dtype in F.LOW_PRECISION and g.dtype in F.LOW_PRECISION:
                kept = old.to(device=g.device, dtype=torch.float32)
                if specs[name].gain is None:
                    g.data = kept
                else:
                    module._buffers[name + "_g"] = kept
                compat.refresh_rnn_weights(module)  # (its cache was built from the half g)
        return out

    def extra_repr(self) -> str:
        base = cast(str, super().extra_repr())  # type: ignore[misc]
        parts = [
            f"{n}(dim={s.dim}{f', groups={s.groups}' if s.groups > 1 else ''}"
            f"{f', gain={s.gain}' if s.gain is not None else ''})"
            for n, s in self.__dict__[_SPECS].items()
        ]
        return ", ".join([*([base] if base else []), f"weight_norm=[{', '.join(parts)}]"])

    def _update_flat_weights(self) -> None:
        """nn.RNNBase's rebuild of its cache of weights at every forward: each read once."""
        compat.read_rnn_weights(cast(nn.Module, self))

    def _init_flat_weights(self) -> None:
        """nn.RNNBase's rebuild of its cache on ``.to()`` and unpickling (and on applying and
        removing weight norm): the current weights, without a graph."""
        compat.read_rnn_weights(cast(nn.Module, self), graph=False)


def _rebuild(root: type[nn.Module], names: tuple[str, ...]) -> nn.Module:
    """Unpickling entry point: an empty instance of the weight-normed subclass of ``root``."""
    return cast(nn.Module, object.__new__(_normed_class(root, frozenset(names))))


def _reduce_ex(self: nn.Module, protocol: Any) -> Any:
    cls = type(self)
    names = tuple(sorted(cls._wn_props))  # type: ignore[attr-defined]
    return (_rebuild, (cls._wn_root, names), self.__getstate__())  # type: ignore[attr-defined,no-untyped-call]


_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _root_class(cls: type) -> type:
    return cast(type, cls.__dict__.get("_wn_root", cls))


def _normed_class(root: type, names: frozenset[str]) -> type:
    """The class for an instance of ``root`` whose parameters ``names`` are weight-normed:
    ``root`` itself (a ``WN*`` layer declares its property), its plain class when ``names`` is
    empty, or a subclass made once with a property per name ``root`` lacks."""
    if not names:
        return cast(type, root.__dict__.get("_wn_plain", root))
    missing = names - getattr(root, "_wn_props", frozenset())
    if not missing:
        return root
    cls = _CLASSES.get((root, missing))
    if cls is None:
        bases = (root,) if issubclass(root, _WeightNormMixin) else (_WeightNormMixin, root)
        namespace: dict[str, Any] = {n: _property(n) for n in sorted(missing)}
        namespace.update(
            _wn_root=root,
            _wn_props=getattr(root, "_wn_props", frozenset()) | missing,
            __reduce_ex__=_reduce_ex,
            __module__=root.__module__,
            __doc__=root.__doc__,
        )
        cls = _CLASSES[(root, missing)] = type(f"WeightNormed{root.__name__}", bases, namespace)
    return cls


def _set_specs(module: nn.Module, specs: dict[str, WeightNormSpec]) -> None:
    root = _root_class(type(module))
    if specs:
        module.__dict__[_SPECS] = specs
        module.__dict__.setdefault(_WATCH, {})
    else:
        module.__dict__.pop(_SPECS, None)
        module.__dict__.pop(_WATCH, None)
    module.__class__ = _normed_class(root, frozenset(specs))
    expose(module)  # to torch's removal functions (weightnorm._torch_removal)


def weight_norm_specs(module: nn.Module) -> dict[str, WeightNormSpec]:
    """The weight norms of ``module`` itself, by parameter name (a copy).

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.weight_norm_specs(wn.weight_norm(torch.nn.Linear(3, 2)))
        {'weight': WeightNormSpec(shape=(2, 3), dim=0, groups=1, eps=1e-12, gain=None)}
    """
    return dict(module.__dict__.get(_SPECS, _EMPTY))


class Found(NamedTuple):
    """One weight norm in a model, this library's or torch's."""

    qualname: str  # "encoder.0.weight"
    module: nn.Module
    name: str
    spec: WeightNormSpec
    g: Tensor
    v: Tensor
    kind: Literal["weightnorm", "legacy", "parametrize"]


def find_weight_norms(model: nn.Module, *, theirs: bool = False) -> Iterator[Found]:
    """Every weight norm of this library in ``model`` (and torch's with ``theirs``), in module
    order; a shared module once. Torch's get the default eps (they have none)."""
    for qualname, module in model.named_modules():
        head = f"{qualname}." if qualname else ""
        specs = module.__dict__.get(_SPECS, _EMPTY)
        for name, spec in specs.items():
            g, v = _gain(module, name, spec), cast(Tensor, module._parameters[name + "_v"])
            yield Found(head + name, module, name, spec, g, v, "weightnorm")
        if theirs:
            for t in compat.find_torch_weight_norms(module, head):
                spec = WeightNormSpec(tuple(t.v.shape), t.dim)
                yield Found(head + t.name, module, t.name, spec, t.g, t.v, t.kind)


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
    kg, kv, plain = prefix + name + "_g", prefix + name + "_v", prefix + name
    p0, p1 = (f"{prefix}parametrizations.{name}.original{i}" for i in (0, 1))
    own_g = _gain(module, name, spec)
    if kg not in state_dict and kv not in state_dict:
        if p0 in state_dict and p1 in state_dict:
            state_dict[kg], state_dict[kv] = state_dict.pop(p0), state_dict.pop(p1)
        elif plain in state_dict:
            w = state_dict[kv] = state_dict.pop(plain)
            if isinstance(w, Tensor) and w.shape == spec.shape:
                fixed = spec.gain is not None  # (a fixed gain keeps its value)
                state_dict[kg] = own_g.detach().clone() if fixed else spec.split(w.detach())
            return
    g, v = state_dict.get(kg), state_dict.get(kv)
    if not isinstance(g, Tensor) or not isinstance(v, Tensor) or g.shape == own_g.shape:
        return
    if g.numel() == 1 and own_g.numel() == 1:  # a whole-tensor g: torch's 0-d, or keep-dim
        state_dict[kg] = g.reshape(own_g.shape)
        return
    source_dim = F.dim_of_g(g.shape, v.shape)
    if source_dim is False or v.shape != spec.shape:
        return  # let load_state_dict report the size mismatch
    with torch.no_grad():
        w = F.weight_norm(v, g, source_dim)
        state_dict[kg], state_dict[kv] = spec.split(w), w


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


def _describe(module: object) -> str:
    return _root_class(type(module)).__name__


def make_spec(
    module: nn.Module,
    name: str,
    shape: tuple[int, ...],
    dim: int | PerOutput | None,
    eps: float = F.DEFAULT_EPS,
    gain: float | None = None,
) -> WeightNormSpec:
    """The spec for parameter ``name`` of ``module``, ``dim`` as :func:`weight_norm` takes it;
    a WeightNormError naming the parameter for a bad one."""
    groups = 1
    if dim == "output":
        dim, groups = (None, 1) if not shape else default_dim(module, name)
    elif not (dim is None or (isinstance(dim, int) and not isinstance(dim, bool))):
        raise WeightNormError(f"dim must be an int, None or 'output', got {dim!r}")
    try:
        return WeightNormSpec(shape, dim, groups, eps, gain)
    except (IndexError, WeightNormError) as err:
        raise WeightNormError(f"{_describe(module)}.{name} has shape {shape}: {err}") from None


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
    ``<name>``), in that order after the module's other parameters, as PyTorch's own weight
    norms register them (an optimizer state saved with those loads by position).
    ``module.<name>`` stays readable at any time and is always current. Outputs are
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
        >>> [n for n, _ in conv.named_parameters()]
        ['bias', 'weight_g', 'weight_v']
        >>> conv.weight_g.shape
        torch.Size([8, 1, 1])
        >>> mp = wn.weight_norm(torch.nn.Linear(4, 3), gain=1.0)  # fixed: every row of norm 1
        >>> [n for n, _ in mp.named_parameters()], [n for n, _ in mp.named_buffers()]
        (['bias', 'weight_v'], ['weight_g'])
        >>> bool(torch.allclose(mp.weight.norm(dim=1), torch.ones(3)))
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(module).__name__}")
    kind = _describe(module)
    if name in module.__dict__.get(_SPECS, _EMPTY):
        raise WeightNormError(
            f"{kind}.{name} is already weight-normalized; call wn.remove_weight_norm(module, "
            f"{name!r}) first to change its settings"
        )
    for found in compat.find_torch_weight_norms(module):
        if found.name == name:
            raise WeightNormError(
                f"{kind}.{name} already carries torch's {found.kind} weight norm; convert it with "
                "wn.replace_torch_weight_norm(model), or remove it with wn.fold(module)"
            )
    param = module._parameters.get(name)
    if name not in module._parameters:
        available = ", ".join(n for n, p in module._parameters.items() if p is not None)
        raise WeightNormError(
            f"{kind} has no parameter {name!r}; expected one of its own parameters: "
            f"{available or 'none'}"
        )
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
    F.check_gain(gain)  # (a TypeError before the spec's WeightNormError)
    spec = make_spec(module, name, tuple(param.shape), dim, eps, gain)
    with torch.no_grad():
        norms = spec.split(param.detach())
    dtype = torch.float32 if param.dtype in F.LOW_PRECISION else param.dtype
    g = norms.to(dtype) if gain is None else torch.full_like(norms, gain, dtype=dtype)
    register(module, name, spec, g, param)
    return module


def register(
    module: nn.Module, name: str, spec: WeightNormSpec, g: Tensor, v: nn.Parameter
) -> None:
    """Put a weight norm on ``module``: the one place that does (:func:`weight_norm`, and
    :func:`weightnorm.replace_torch_weight_norm`, which passes torch's own g and v objects).
    The slot ``name`` stays in ``module._parameters`` holding None; ``<name>_g`` (a Parameter,
    or with a fixed gain a buffer) and ``<name>_v`` are appended after the other parameters."""
    module._parameters[name] = None
    if spec.gain is None:
        g_param = g if isinstance(g, nn.Parameter) else nn.Parameter(g, v.requires_grad)
        module.register_parameter(name + "_g", g_param)
    else:
        module.register_buffer(name + "_g", g)
    module.register_parameter(name + "_v", v)
    _set_specs(module, {**module.__dict__.get(_SPECS, _EMPTY), name: spec})
    compat.refresh_rnn_weights(module)  # an RNN's cache of weights held the Parameter, now v


def remove_weight_norm(module: M, name: str = "weight") -> M:
    r"""Fold the weight norm of ``name`` back into a plain parameter and return the module.

    The parameter ``<name>`` becomes an ``nn.Parameter`` holding the current ``g * v / ||v||``,
    also under ``torch.no_grad()`` and ``torch.inference_mode()``, in its original place among
    the module's parameters. It is the same Parameter object as ``<name>_v`` was, so an
    optimizer built on the normalized module keeps training it. When the module carries no
    weight norm any more its class is the original one again (``WNConv1d`` folds to
    ``nn.Conv1d``).

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
        >>> type(lin) is torch.nn.Linear, [n for n, _ in lin.named_parameters()]
        (True, ['weight', 'bias'])
    """
    specs = weight_norm_specs(module)
    if name not in specs:
        hint = ""
        if any(f.name == name for f in compat.find_torch_weight_norms(module)):
            hint = " (it carries torch's weight norm: use wn.fold(module))"
        raise WeightNormError(
            f"{_describe(module)}.{name} is not weight-normalized{hint}; weight-normalized "
            f"parameters of this module: {', '.join(specs) or 'none'}"
        )
    _settle(module, name)
    spec = specs.pop(name)
    v = cast(nn.Parameter, module._parameters[name + "_v"])
    with torch.no_grad():
        v.copy_(_compute(module, name, spec))
    del module._parameters[name + "_v"]
    del (module._parameters if spec.gain is None else module._buffers)[name + "_g"]
    module._parameters[name] = v  # back into its slot
    _set_specs(module, specs)
    compat.refresh_rnn_weights(module)  # an RNN's cache held the computed weight: the Parameter
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
