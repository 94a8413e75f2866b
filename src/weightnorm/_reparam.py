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
- The property hands out a :class:`ComputedWeight`: an in-place change to it, to a view of it or
  to its ``.data`` (``nn.init.*_``, ``w.mul_``, ``w.data = t``) is written into ``g`` and ``v``
  before the operation returns, so nothing is ever pending. A change to a weight read before
  ``g`` or ``v`` changed (an optimizer step, a load) is refused. Inside the module's own call
  the forward reads the computed tensor itself (an input of the layer's computation: no Python
  call per operation on it).
- ``torch.func.functional_call(module, {"weight": W})`` fills the slot for the call; the
  property returns what fills it, and ``g`` and ``v`` are not touched.
- With a fixed gain (``gain=c``) ``weight_g`` is a buffer filled with ``c``: saved, loaded,
  moved and copied with the module, never trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
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
    "ComputedWeight",
    "PerOutput",
    "cached",
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
_IN_CALL = "_wn_in_call"  # in module.__dict__ while the module's call runs
_EMPTY: dict[str, WeightNormSpec] = {}


# --------------------------------------------------------------------------------------------
# Reading and writing a normalized weight
# --------------------------------------------------------------------------------------------


def _gain(module: nn.Module, name: str, spec: WeightNormSpec) -> Tensor:
    """``<name>_g``: a parameter, or with a fixed gain a buffer."""
    return cast(Tensor, (module._parameters if spec.gain is None else module._buffers)[name + "_g"])


def _direction(module: nn.Module, name: str) -> Tensor:
    """``<name>_v``: the Parameter, or what pruning or a parametrization of it computes."""
    v = module._parameters.get(name + "_v")
    return cast(Tensor, v if v is not None else getattr(module, name + "_v"))


def _own_direction(module: nn.Module, name: str, doing: str) -> nn.Parameter:
    """``<name>_v`` as the Parameter itself; a WeightNormError saying what to do when pruning
    or a parametrization has taken it over."""
    v = module._parameters.get(name + "_v")
    if v is None:
        raise WeightNormError(
            f"{_describe(module)}.{name}_v is itself reparameterized (pruned, or parametrized "
            f"with torch.nn.utils.parametrize), so {doing} cannot write it; remove that first "
            f"(prune.remove(module, '{name}_v') or parametrize.remove_parametrizations(module, "
            f"'{name}_v')), or change what it is computed from"
        )
    return v


def _compute(
    module: nn.Module, name: str, spec: WeightNormSpec, captured: bool | None = None
) -> Tensor:
    """``g v/||v||`` of ``name`` (``captured``: :func:`weightnorm._torch_compat.capturing`)."""
    if captured is None:
        captured = compat.capturing()
    v = _direction(module, name)
    if not captured and v.shape != spec.shape:  # (not under jit.trace: shapes are tensors)
        raise WeightNormError(
            f"{_describe(module)}.{name}_v has shape {tuple(v.shape)}, but {name} was normalized "
            f"with shape {spec.shape}; remove the weight norm and apply it again to change it"
        )
    g = _gain(module, name, spec)
    return F.weight_and_norms(v, g, spec, captured)[0]


class _Link:
    """What a computed weight knows of where it came from: the module, the parameter's name, and
    ``g`` and ``v`` with the versions they had when it was computed (or last written back)."""

    __slots__ = ("g", "module", "name", "state", "v")

    def __init__(self, module: nn.Module, name: str, g: Tensor, v: Tensor) -> None:
        self.module, self.name, self.g, self.v = module, name, g, v
        self.state = _state(g, v)


def _state(g: Tensor, v: Tensor) -> tuple[int, int, int, int]:
    """What changes when ``g`` or ``v`` change: their versions (every in-place write through
    torch's ops) and their memory (``p.data = t``, ``.to()``)."""
    return g._version, v._version, _memory(g), _memory(v)


def _memory(t: Tensor) -> int:
    """Where a plain tensor's data is (0 for a DTensor: it has no storage of its own)."""
    return t.data_ptr() if type(t) in compat.PLAIN else 0


class _ComparesWithParameters(type(Tensor)):  # type: ignore[misc]
    """``torch.testing.assert_close`` compares two tensors only if one's type is an instance of
    the other's: a Parameter counts as an instance of :class:`ComputedWeight`, so that a
    computed weight compares with a Parameter as a plain tensor does (torch's
    ``_ParameterMeta`` answers ``isinstance`` in the same way)."""

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, nn.Parameter) or super().__instancecheck__(instance)


class ComputedWeight(Tensor, metaclass=_ComparesWithParameters):
    r"""The type of a weight read from a weight-normalized module: ``g * v / ||v||``.

    It is an ordinary tensor in every computation (results that do not share its memory are
    plain tensors), with one addition: a change to its values is a change to the module's
    weight. After any operation that changes it in place, or changes a view of it or its
    ``.data`` (``nn.init.*_``, ``w.mul_(2)``, ``w[0] = 0``, ``w.data = t``,
    ``w.data.normal_()``), ``g = ||w||`` and ``v = w`` are written before the operation returns
    (with a fixed gain only ``v``): no other code can see ``g`` and ``v`` disagree with it.
    ``w.detach()`` holds the values and is tied to nothing (to keep, log or compare): a change
    to it is not a change to the module. A weight read before ``g`` or ``v`` changed (an
    optimizer step, a load) no longer is the module's weight: changing it raises
    :class:`~weightnorm.WeightNormError`.
    Passed to ``nn.Parameter`` or ``nn.Buffer`` it becomes an ordinary one (no longer tied to
    the module). Pickled or deep-copied, it is a plain tensor. So that
    ``torch.testing.assert_close`` compares it with a Parameter as with any tensor, a Parameter
    also counts as an instance of this class: ``type(w) is ComputedWeight`` tells them apart.

    Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2.

    Example::

        >>> import torch, weightnorm as wn
        >>> layer = wn.weight_norm(torch.nn.Linear(4, 3))
        >>> isinstance(layer.weight, wn.ComputedWeight)
        True
        >>> _ = torch.nn.init.constant_(layer.weight, 0.5)   # written into g and v at once
        >>> layer.weight_g.flatten().tolist()
        [1.0, 1.0, 1.0]
        >>> layer.weight_v[0].tolist()
        [0.5, 0.5, 0.5, 0.5]
    """

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _READS:  # (a layer's forward: the weight is read, never changed or aliased)
            return _DISABLED(func, types, args, kwargs or {})
        if kwargs is None:
            kwargs = {}
        special = _SPECIAL.get(func)
        with compat.no_torch_function():
            if torch.compiler.is_compiling():  # (a graph input: traced as a plain tensor)
                return func(*args, **kwargs)
            if special is not None:
                return special(func, args, kwargs)
            if func in _DETACHES:  # a value tied to nothing (of this type: nn.Parameter(w) needs)
                out = func(*args, **kwargs)
                out.__class__ = _computed_class(type(out))
                return out
            mine = _computed_weights(args, kwargs)
            before = [_version(t) for t in mine]
            out = func(*args, **kwargs)
            for t, version in zip(mine, before, strict=True):
                if version is None or _version(t) != version or func == _DATA_SET:
                    _write_back(t, func, version is None and kwargs.get("out") is not t)
            if mine:
                out = _link_aliases(func, out, mine)
        return out

    def __setattr__(self, name: str, value: Any) -> None:
        """``nn.Parameter(w)`` and ``nn.Buffer(w)`` mark their result so: it becomes an
        ordinary Parameter or tensor, no longer tied to the module."""
        if name in ("_is_param", "_is_buffer") and value:
            self.__dict__.pop("_wn_link", None)
            self.__dict__.pop("_wn_root", None)
            plain = _PLAIN[type(self)]
            if name == "_is_param" and plain is Tensor:
                self.__class__ = nn.Parameter  # type: ignore[assignment]
                return
            self.__class__ = plain
        Tensor.__setattr__(self, name, value)  # (self may be a plain tensor now)


#: Each computed-weight class, by the class of tensor it is (ComputedWeight: a plain tensor; a
#: class made on first use for a DTensor: FSDP2's sharded weights), and back.
_COMPUTED: dict[type, type] = {Tensor: ComputedWeight}
_PLAIN: dict[type, type] = {ComputedWeight: Tensor}


def _linkable(t: object) -> bool:
    """Whether ``t`` can be handed out as a computed weight: a plain tensor or a DTensor (other
    subclasses, e.g. the fake tensors of a trace, as they are)."""
    return type(t) is Tensor or compat.is_dtensor_type(type(t))


def _computed_class(cls: type) -> type:
    computed = _COMPUTED.get(cls)
    if computed is None:
        computed = type(f"Computed{cls.__name__}", (ComputedWeight, cls), {"__module__": __name__})
        _COMPUTED[cls], _PLAIN[computed] = computed, cls
    return computed


def _version(t: Tensor) -> int | None:
    """``t``'s version counter; None for an inference tensor (it has none)."""
    return None if t.is_inference() else t._version


def _computed_weights(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[ComputedWeight]:
    """The computed weights among a torch function's arguments (and in its lists of tensors)."""
    found = []
    for a in (*args, *kwargs.values()):
        if type(a) in _PLAIN and "_wn_link" in a.__dict__:
            found.append(a)
        elif type(a) in (list, tuple):
            found += [t for t in a if type(t) in _PLAIN and "_wn_link" in t.__dict__]
    return found


def _link(t: Tensor, link: _Link, root: Tensor | None) -> ComputedWeight:
    t.__class__ = _computed_class(type(t))
    t.__dict__["_wn_link"] = link
    if root is not None:  # a view of part of the weight: what is written back is its root's
        t.__dict__["_wn_root"] = root
    return cast(ComputedWeight, t)


def _write_back(t: ComputedWeight, func: Any, inference: bool) -> None:
    """An operation may have changed ``t`` (an inference tensor has no version: any in-place
    method counts): write its weight into g and v, or refuse if it is stale."""
    if inference and not _mutates(func):
        return
    link: _Link = t.__dict__["_wn_link"]
    root: Tensor = t.__dict__.get("_wn_root", t)
    module = link.module
    spec = module.__dict__.get(_SPECS, _EMPTY).get(link.name)
    if spec is not None:
        _own_direction(module, link.name, "a change to the weight")
    if spec is None or not _current(
        link, _gain(module, link.name, spec), _direction(module, link.name)
    ):
        raise WeightNormError(
            f"this tensor was read from {_describe(module)}.{link.name} before its "
            f"{link.name}_g or {link.name}_v changed (an optimizer step, a load, a removal), so "
            "it no longer is the module's weight and changing it in place cannot be applied; "
            f"read {link.name} again and change that (e.g. nn.init.normal_(module.{link.name}))"
        )
    if func == _DATA_SET and root is not t:
        raise WeightNormError(
            f"'.data = ...' on a view of {_describe(module)}.{link.name} cannot be applied; "
            f"assign the whole weight: module.{link.name} = tensor"
        )
    _set_weight(module, link.name, root)
    link.state = _state(link.g, link.v)


def _mutates(func: Any) -> bool:
    """Whether ``func`` changes a tensor argument in place (for an inference tensor, which has
    no version counter): torch's in-place methods (``mul_``), the in-place operators, item
    assignment and ``.data = t``. (``out=`` writes are caught by the caller's check.)"""
    name = getattr(func, "__name__", "")
    if name.startswith("__"):
        return name in _INPLACE_DUNDERS or func == _DATA_SET
    return name.endswith("_")


_INPLACE_DUNDERS = frozenset(
    {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
     "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}
)  # fmt: skip


def _link_aliases(func: Any, out: Any, mine: list[ComputedWeight]) -> Any:
    """Results that share a computed weight's memory (its views and ``.data``) are
    computed weights of the same module; every other result is a plain tensor."""
    if type(out) in (list, tuple):
        return type(out)(_link_aliases(func, o, mine) for o in out)
    if not _linkable(out):
        return out
    if func in _ALIASES:  # (one argument: the computed weight)
        t = mine[0]
        return _link(out, t.__dict__["_wn_link"], t.__dict__.get("_wn_root"))
    base = out._base
    if base is not None:
        for t in mine:
            if base is (t._base if t._base is not None else t):  # a view of it
                return _link(out, t.__dict__["_wn_link"], t.__dict__.get("_wn_root", t))
    return out


def _plain(t: Tensor) -> Tensor:
    """A plain tensor sharing ``t``'s memory, ``requires_grad`` kept for a leaf."""
    alias = t.detach()
    return alias.requires_grad_(t.requires_grad) if t.is_leaf else alias


def _as_plain_tensor(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Pickling: a plain tensor (its module is not part of it)."""
    return func(_plain(args[0]), *args[1:], **kwargs)


def _deepcopy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """deepcopy: a plain tensor, recorded in the memo under the weight's own id (torch records
    it under the alias copied, whose id a later alias may reuse). A non-leaf's deepcopy raises
    as torch's does."""
    t, memo = args[0], args[1] if len(args) > 1 else kwargs.get("memo", {})
    if not t.is_leaf:
        return func(*args, **kwargs)
    if id(t) not in memo:
        alias = _plain(t)
        memo[id(t)] = func(alias, {})
    return memo[id(t)]


def _shown_as_a_tensor(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``repr``/``str``/``format``: printed as torch prints a tensor."""
    t, computed = args[0], type(args[0])
    t.__class__ = _PLAIN[computed]
    try:
        return func(*args, **kwargs)
    finally:
        t.__class__ = computed


#: The operations of the layers' forwards on their weight: they read it, never change it or return
#: a tensor that shares its memory, so they run as on a plain tensor at once (the common case,
#: kept cheap). ``F.embedding`` is not one: with ``max_norm`` it renormalizes rows in place.
_READS = frozenset(
    {
        torch.nn.functional.linear,
        torch.conv1d,
        torch.conv2d,
        torch.conv3d,
        torch.conv_transpose1d,
        torch.conv_transpose2d,
        torch.conv_transpose3d,
    }
)
_DISABLED = torch._C._disabled_torch_function_impl

#: ``w.data = t`` (it changes no version counter); compared with ``==``: each access to a
#: descriptor's ``__set__`` makes a new method-wrapper, equal to the others.
_DATA_SET = Tensor.data.__set__  # type: ignore[attr-defined]
#: ``w.data``: its result shares all of the weight's memory without being a view of it, and it is
#: how initializers write (``w.data.normal_()``). (``w.detach()`` is a value tied to nothing, to
#: keep or compare, e.g. as a buffer of another module: not a handle on this one.)
_ALIASES = frozenset({Tensor.data.__get__})  # type: ignore[attr-defined]
_DETACHES = frozenset({Tensor.detach, torch.detach})
_SPECIAL: dict[Any, Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]] = {
    Tensor.__reduce_ex__: _as_plain_tensor,
    Tensor.__deepcopy__: _deepcopy,
    Tensor.__repr__: _shown_as_a_tensor,
    Tensor.__str__: _shown_as_a_tensor,
    Tensor.__format__: _shown_as_a_tensor,
}


def _read_plain(module: nn.Module, name: str) -> Tensor | None:
    """An RNN's cache of its weights (read by its forward, and by ``flatten_parameters`` on
    CUDA, which rewrites them in place): plain tensors, computed or not."""
    spec = module.__dict__.get(_SPECS, _EMPTY).get(name)
    if spec is None or module._parameters.get(name) is not None:
        return cast("Tensor | None", getattr(module, name, None))
    return _compute(module, name, spec)


def _read(module: nn.Module, name: str) -> Tensor:
    """The property's getter: what fills the slot (functional_call), else ``g v/||v||`` as a
    :class:`ComputedWeight` (a plain tensor while a graph is captured, and a tensor subclass
    such as a DTensor as it is)."""
    params = module._parameters
    slot = params.get(name)
    if slot is not None:
        return slot
    spec = module.__dict__.get(_SPECS, _EMPTY).get(name)
    if spec is None:  # (a WN* layer while torch's __init__ registers the parameter)
        raise AttributeError(f"{type(module).__name__} has no attribute {name!r} yet")
    if compat.capturing():  # no Python-side bookkeeping inside a graph or a transform
        return _compute(module, name, spec, True)
    g, v = _gain(module, name, spec), _direction(module, name)
    cache = _CACHE.get()
    if cache is not None:  # (a weight computed with a graph is not one without, and back)
        key = (id(module), name, torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        hit = cache.get(key)
        if hit is not None and _current(hit[1], g, v):
            return hit[0]
    if v.shape != spec.shape:
        _compute(module, name, spec, False)  # (raises: v was resized)
    w = F.weight_and_norms(v, g, spec, False)[0]
    in_call = _IN_CALL in module.__dict__
    if (in_call and cache is None) or not (type(w) is Tensor or _linkable(w)):
        return w  # (the forward's input; or e.g. a fake tensor of an export's tracing)
    link = _Link(module, name, g, v)
    if not in_call:
        _link(w, link, None)
    if cache is not None:
        cache[key] = (w, link)
    return w


def _current(link: _Link, g: Tensor, v: Tensor) -> bool:
    """Whether a weight computed from ``link``'s g and v is still the module's: the same
    tensors at the same versions and memory. (A write through ``p.data.copy_`` changes
    neither: torch keeps no trace of it.)"""
    return link.g is g and link.v is v and link.state == _state(g, v)


#: The weights computed inside :func:`cached` blocks, with what they were computed from, by
#: (module id, name, grad mode, inference mode).
_CACHE: ContextVar[dict[tuple[int, str, bool, bool], tuple[Tensor, _Link]] | None] = ContextVar(
    "wn_cache", default=None
)


@contextmanager
def cached() -> Iterator[None]:
    r"""Compute each weight once inside the block and hand out that tensor at every read.

    For step loops that read a weight many times per forward (a hand-written RNN cell: 64 reads
    of one weight would keep 64 copies in the graph). Exact at every read: a cached weight is
    handed out only while its ``g`` and ``v`` are the same tensors at the same versions, so an
    optimizer step, a load or an in-place change inside the block makes the next read compute
    it again. Gradients are those of one weight used many times. The cache ends with the block
    (PyTorch's ``torch.nn.utils.parametrize.cached()`` does the same for its parametrizations).

    Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2.

    Example::

        >>> import torch, weightnorm as wn
        >>> cell = wn.weight_norm(torch.nn.Linear(8, 8))
        >>> with wn.cached():
        ...     h = torch.zeros(1, 8)
        ...     for _ in range(4):
        ...         h = torch.tanh(cell(h))
        ...     cell.weight is cell.weight
        True
    """
    outer = _CACHE.get()  # (a block inside another shares its cache)
    token = _CACHE.set({} if outer is None else outer)
    try:
        yield
    finally:
        _CACHE.reset(token)


def _set_weight(module: nn.Module, name: str, value: Any) -> None:
    """Make ``value`` the weight: ``g = ||value||``, ``v = value``, in place (the objects are
    kept). With a fixed gain only its direction is taken: ``v = value``, ``g`` stays."""
    spec = module.__dict__[_SPECS][name]
    v = _own_direction(module, name, "setting the weight")
    link = value.__dict__.get("_wn_link") if type(value) in _PLAIN else None
    if link is not None and (link.module is not module or link.name != name):
        raise WeightNormError(
            f"{_describe(module)}.{name} was assigned the weight of {_describe(link.module)}."
            f"{link.name}, itself weight-normalized: that would copy its values, not tie the two. "
            "To tie weights, tie them before weight norm (wn.apply_weight_norm then gives the "
            "tied modules one g and one v); to copy the values, assign a copy (w.clone())"
        )
    if not isinstance(value, Tensor) or value.shape != v.shape:
        got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise WeightNormError(
            f"{_describe(module)}.{name} is weight-normalized: it can be assigned a tensor of "
            f"shape {tuple(v.shape)}, got {got}"
        )
    with torch.no_grad(), compat.no_torch_function():  # (value may be a ComputedWeight)
        src = value.detach()
        if compat.is_dtensor_type(type(v)) and not compat.is_dtensor_type(type(src)):
            src = compat.distribute_like(src, v)  # (FSDP2: every rank assigns the whole weight)
        if spec.gain is None:
            g = _gain(module, name, spec)
            g.copy_(spec.split(src).reshape(g.shape))
        v.copy_(src)
    compat.refresh_rnn_weights(module)  # (an RNN's cache between forwards: the new weight)


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

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The module's call (``nn.Module.__call__``), marked: the weights its forward reads are
        the computed tensors themselves, inputs of the layer's computation, not
        :class:`ComputedWeight` handles (a handle costs about 10 us per weight and step: a
        Python call per operation, and the tensor kept as a Python object by the graph)."""
        state = self.__dict__
        if _IN_CALL in state or torch.compiler.is_compiling():  # (nested; or being traced)
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        state[_IN_CALL] = True
        try:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        finally:
            del state[_IN_CALL]

    def __delattr__(self, name: str) -> None:
        """Deleting a normalized weight (what ``torch.nn.utils.parametrize`` does to stack a
        parametrization, e.g. ``spectral_norm``, on it) is refused: the stack would train a
        copy of the weight, not ``g`` and ``v``."""
        if name in self.__dict__.get(_SPECS, _EMPTY):
            raise WeightNormError(
                f"{_describe(self)}.{name} is computed by weightnorm from {name}_g and {name}_v; "
                "it cannot be deleted or taken over by torch.nn.utils.parametrize (a "
                "parametrization such as spectral_norm on it would train a copy of the weight, "
                f"not g and v). Parametrize {name}_v instead where that is what you mean, use "
                "torch's parametrizations.weight_norm for the whole stack, or wn.fold(module) "
                "first for a plain weight"
            )
        super().__delattr__(name)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """``torch.nn.utils.prune`` on a normalized weight registers ``<name>_orig`` from the
        computed weight: refused with what to do instead."""
        base = name.removesuffix("_orig")
        if name.endswith("_orig") and base in self.__dict__.get(_SPECS, _EMPTY):
            raise WeightNormError(
                f"{_describe(self)}.{base} is computed by weightnorm from {base}_g and {base}_v "
                f"and cannot be pruned itself; prune its direction instead (prune.l1_unstructured("
                f"module, '{base}_v', amount): the pruned entries of v are zero in the weight), or "
                "wn.fold(module) first to prune a plain weight"
            )
        super().register_parameter(name, param)  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and deepcopy: an RNN's cache of computed weights is rebuilt by
        ``__setstate__``."""
        with torch.no_grad():  # (nn.RNNBase's refreshes its cache first: no graph needed)
            state = dict(super().__getstate__())  # type: ignore[misc]
        compat.drop_rnn_weights(state, set(state[_SPECS]))
        state.pop(_IN_CALL, None)  # (a copy made inside the module's call is not in one)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        compat.refresh_rnn_weights(cast(nn.Module, self))

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` cannot compile the property that computes the weight."""
        raise WeightNormError(
            f"torch.jit.script cannot compile a weight-normalized {_describe(self)} (its weight is "
            "computed by a Python property); fold the model first (wn.fold(model): plain layers "
            "with the same weights) and script that, or use torch.jit.trace / torch.export"
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Loading also reads torch's parametrize keys, a plain weight, and a ``g`` along
        another dim (see :func:`_accept_other_formats`)."""
        module = cast(nn.Module, self)
        for name, spec in module.__dict__[_SPECS].items():
            _accept_other_formats(module, state_dict, prefix, name, spec)
            for key in (prefix + name + "_g", prefix + name + "_v"):
                _check_finite(state_dict.get(key), f"the checkpoint's {key!r}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        """``.to()``, ``.half()``, ...: a float32 ``g`` stays float32 for half-precision weights
        (a half-precision g cannot take small updates); its values are kept exactly."""
        module = cast(nn.Module, self)
        specs: dict[str, WeightNormSpec] = module.__dict__[_SPECS]
        before = {n: _gain(module, n, s).detach() for n, s in specs.items()}
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        for name, old in before.items():
            g = _gain(module, name, specs[name])
            v = _direction(module, name)
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
        module = cast(nn.Module, self)
        compat.read_rnn_weights(module, partial(_read_plain, module))

    def _init_flat_weights(self) -> None:
        """nn.RNNBase's rebuild of its cache on ``.to()`` and unpickling (and on applying and
        removing weight norm): the current weights, without a graph."""
        module = cast(nn.Module, self)
        compat.read_rnn_weights(module, partial(_read_plain, module), graph=False)


def _reset_parameters(self: nn.Module) -> None:
    """The layer's own ``reset_parameters``, drawing each normalized weight as it draws a plain
    one: it runs with ``v`` in the weight's place (so it initializes ``v`` itself, also a
    sharded or just materialized one: FSDP2's ``to_empty`` then ``reset_parameters``), then
    ``g = ||v||``, so that ``w = v`` as a plain layer would start (a fixed gain stays)."""
    specs = self.__dict__.get(_SPECS, _EMPTY)
    slots = {n: _own_direction(self, n, "reset_parameters") for n in specs}
    try:
        self._parameters.update(slots)  # (the property returns what fills the slot)
        owner: type = next(
            c for c in type(self).__mro__ if vars(c).get("reset_parameters") is _reset_parameters
        )
        cast(Any, super(owner, self)).reset_parameters()
    finally:
        self._parameters.update(dict.fromkeys(slots))
    with torch.no_grad():
        for name, spec in specs.items():
            if spec.gain is None:
                g = _gain(self, name, spec)
                g.copy_(spec.split(slots[name].detach()).reshape(g.shape))
    compat.refresh_rnn_weights(self)


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
        if callable(getattr(root, "reset_parameters", None)) and not any(
            vars(c).get("reset_parameters") is _reset_parameters for c in root.__mro__
        ):
            namespace["reset_parameters"] = _reset_parameters
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
    else:
        module.__dict__.pop(_SPECS, None)
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
            g, v = _gain(module, name, spec), _direction(module, name)
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
    _check_finite(param, f"{kind}.{name}")
    spec = make_spec(module, name, tuple(param.shape), dim, eps, gain)
    with torch.no_grad():
        norms = spec.split(param.detach())
    dtype = torch.float32 if param.dtype in F.LOW_PRECISION else param.dtype
    g = norms.to(dtype) if gain is None else torch.full_like(norms, gain, dtype=dtype)
    register(module, name, spec, g, param)
    return module


def _check_finite(t: object, what: str) -> None:
    """A WeightNormError for a tensor with NaN or Inf (a meta tensor has no values to check)."""
    if not isinstance(t, Tensor) or t.device.type == "meta" or not t.is_floating_point():
        return
    with torch.no_grad(), compat.no_torch_function():
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            nan = int(torch.isnan(t.detach()).sum())
            raise WeightNormError(
                f"{what} has {nan} NaN and {int(bad.sum()) - nan} infinite values; expected "
                "finite values (weight norm would spread one NaN over its whole unit, and g "
                "would be NaN). Repair or re-initialize it first"
            )


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
    unregister(module, name, write=True)
    return module


def unregister(module: nn.Module, name: str, *, write: bool) -> nn.Parameter:
    """Take the weight norm of ``name`` off ``module`` (one of its own): ``v`` goes back into
    the slot ``name``, holding ``g v/||v||`` if ``write`` (a tied weight's second module skips
    it: its ``v`` was written by the first)."""
    specs = weight_norm_specs(module)
    v = _own_direction(module, name, "removing the weight norm")
    spec = specs.pop(name)
    if write:
        with torch.no_grad():
            v.copy_(_compute(module, name, spec))
    del module._parameters[name + "_v"]
    del (module._parameters if spec.gain is None else module._buffers)[name + "_g"]
    module._parameters[name] = v  # back into its slot
    _set_specs(module, specs)
    compat.refresh_rnn_weights(module)  # an RNN's cache held the computed weight: the Parameter
    return v


def is_weight_normed(module: nn.Module, name: str = "weight") -> bool:
    """Whether parameter ``name`` of ``module`` carries this library's weight norm.

    PyTorch's own weight norms are not counted; :func:`weightnorm.fold` removes those too.

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.is_weight_normed(wn.WNLinear(2, 2)), wn.is_weight_normed(torch.nn.Linear(2, 2))
        (True, False)
    """
    return name in module.__dict__.get(_SPECS, _EMPTY)
