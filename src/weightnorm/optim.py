"""Weight normalization at the optimizer: zero cost in the forward and backward passes.

The model keeps its plain weights. :class:`WeightNormOptimizer` owns ``g`` and ``v`` for each
normalized weight, and at every step converts ``grad_w`` into ``grad_g`` and ``grad_v`` with the
paper's eq. 3, lets the wrapped optimizer update ``g`` and ``v``, and writes ``w = g v/||v||``
back into the weight. The forward and backward passes are those of the plain network; the
trajectory is that of the reparameterized model (the paper authors' own Keras implementation
worked this way). The math is that of the modules (:mod:`weightnorm.functional`'s kernels, its
:class:`~weightnorm.functional.WeightNormSpec` per weight).

It normalizes the weights of a plain model (every ``layers`` module, or the parameters named in
``params``), or, through :meth:`WeightNormOptimizer.from_model`, takes over the weight norms a
model already carries (this library's or PyTorch's, with their ``g``, ``v`` and dims) and folds
the model.

Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2-3.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from . import _torch_compat as compat
from . import functional as F
from ._errors import WeightNormError
from ._model import DEFAULT_LAYERS, fold
from ._reparam import PerOutput, WeightNormSpec, find_weight_norms, make_spec

__all__ = ["WeightNormOptimizer"]

#: torch.optim optimizers whose update of each element depends on that element (and its own
#: state) only, with per-tensor state that is the same for every tensor (a step count): one
#: flat tensor holding every ``g`` and ``v`` is updated exactly as the separate tensors would be.
_ELEMENTWISE: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta,
    torch.optim.ASGD, torch.optim.Rprop,
)  # fmt: skip


def _check_forced(forced: object) -> None:
    if forced is not None:
        try:
            F.check_forced_norm(forced)
        except ValueError as err:
            raise WeightNormError(f"forced: {err}") from None
        except TypeError as err:
            raise TypeError(f"forced: {err}") from None


def _is_elementwise(factory: Callable[..., Any]) -> bool:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory in _ELEMENTWISE


class _Entry:
    """One normalized weight: the model's tensor ``w`` and the optimizer's ``g`` and ``v``.

    ``v`` is a contiguous copy of the weight (or of the ``v`` taken over from a model: it keeps
    its norm), ``g`` ``||w||`` (or the ``g`` taken over: it keeps its dtype); with
    ``learn_g=False`` (a fixed gain) ``g`` is a plain tensor the wrapped optimizer never sees.
    Under FSDP2 (a DTensor weight sharded by rows) everything is this rank's rows. ``g`` and
    ``v`` may become views into the flat Parameter of a :class:`_Pack` (then ``g_grad`` and
    ``v_grad`` are the matching views of its gradient). Each write of the weight keeps the norms
    of ``v`` and the kernel that computed them, whose backward converts the next gradient
    (``v`` does not change in between).
    """

    def __init__(
        self,
        name: str,
        w: nn.Parameter,
        spec: WeightNormSpec,
        g: Tensor | None = None,
        v: Tensor | None = None,
    ) -> None:
        self.name, self.w, self.spec = name, w, spec
        self.target: Tensor = w  # what is written: the weight, or this rank's rows of it
        local = compat.local_rows(w)
        if local is not None:
            if not (local[1] and spec.dim == 0 and spec.groups == 1):
                raise WeightNormError(
                    f"{name} is a DTensor with placements {cast(Any, w).placements} normalized "
                    f"along dim={spec.dim}"
                    f"{f', groups={spec.groups}' if spec.groups > 1 else ''}; the optimizer-level "
                    "mode supports sharded weights whose units are whole on each rank: dim=0 "
                    "under Shard(0) (FSDP2). Use the reparameterized modules (wn.weight_norm) "
                    "for this weight instead"
                )
            self.target = local[0]
            self.spec = spec = WeightNormSpec(tuple(self.target.shape), 0, 1, spec.eps, spec.gain)
        with torch.no_grad():
            v = (self.target if v is None else v).detach()
            if v.shape != self.target.shape:
                raise WeightNormError(
                    f"{name}: v of shape {tuple(v.shape)} given for a weight of shape "
                    f"{tuple(self.target.shape)}"
                )
            if spec.gain is not None:
                dtype = g.dtype if g is not None else _g_dtype(w.dtype)
                g = torch.full(spec.g_shape, spec.gain, dtype=dtype)
            elif g is None:
                g = spec.split(v).to(_g_dtype(w.dtype))
            elif g.numel() != spec.units:
                raise WeightNormError(
                    f"{name}: g of shape {tuple(g.shape)} given, expected {spec.g_shape} for a "
                    f"weight of shape {spec.shape} with dim={spec.dim}, groups={spec.groups}"
                )
            # copies: the optimizer owns g and v, never the model's tensors
            g = g.detach().reshape(spec.g_shape).clone().to(w.device)
            v = v.to(device=w.device, dtype=w.dtype).clone(memory_format=torch.contiguous_format)
        self.g: Tensor = g if spec.gain is not None else nn.Parameter(g)
        self.v: Tensor = nn.Parameter(v)
        self.g_grad: Tensor | None = None
        self.v_grad: Tensor | None = None
        self.norms: Tensor | None = None
        self.kernel: F.Kernel = F.PLAIN

    def stepped(self) -> tuple[Tensor, ...]:
        """The tensors the wrapped optimizer updates: ``g`` (when learned) and ``v``."""
        return (self.g, self.v) if self.spec.gain is None else (self.v,)

    def to_g_v_grads(self, copies: tuple[list[Tensor], list[Tensor]]) -> None:
        """grad_g = grad_w . v/||v||; grad_v = g/||v|| (grad_w - (grad_w . v)/||v||^2 v).

        Writes into the flat gradient views are appended to ``copies`` (destinations, sources),
        for the caller to make in one call."""
        grad_w = self.w.grad
        if grad_w is not None and self.target is not self.w:
            grad_w = cast(Any, grad_w).to_local()  # (a DTensor, as the weight)
        learned = self.spec.gain is None
        if grad_w is None or self.norms is None:
            # separate g, v: not stepped; flat ones take a zero-gradient step (see the class)
            for t, view in [(self.v, self.v_grad)] + ([(self.g, self.g_grad)] if learned else []):
                if view is None:
                    t.grad = None
                else:
                    view.zero_()
            return
        v, g = self.v.detach(), self.g.detach()
        grad_v, grad_g = self.kernel.backward(grad_w, v, g, self.norms, self.spec)
        grads = [(self.v, self.v_grad, grad_v)] + (
            [(self.g, self.g_grad, grad_g)] if learned else []
        )
        for t, view, grad in grads:
            if view is None:
                t.grad = grad.to(t.dtype)
            else:
                copies[0].append(view)
                copies[1].append(grad)

    @torch.no_grad()
    def write_weight(self) -> None:
        """``w = g v/||v||`` into the model's weight (in place: the same Parameter), keeping the
        norms of ``v`` and the kernel for the next :meth:`to_g_v_grads`."""
        w, self.norms, self.kernel = F.weight_and_norms(self.v, self.g, self.spec)
        self.target.copy_(w)


def _g_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in F.LOW_PRECISION else dtype


class _Pack:
    """One flat Parameter holding the ``g`` and ``v`` of several weights (one dtype, one
    device). The wrapped optimizer steps it instead of two tensors per layer: on the CPU a
    torch.optim step costs some 15-30 microseconds per tensor besides the arithmetic, which for
    small layers is most of what weight norm would add to a step."""

    def __init__(self, tensors: list[tuple[_Entry, str]]) -> None:
        self.param = nn.Parameter(
            torch.cat([getattr(e, which).detach().reshape(-1) for e, which in tensors])
        )
        # one gradient buffer for every step: each slice is written at each step (no zeroing),
        # and no fresh memory for the allocator to fault in
        self.buffer = torch.empty_like(self.param)
        flat, offset = self.param.detach(), 0
        for e, which in tensors:
            t = getattr(e, which)
            n = t.numel()
            setattr(e, which, flat[offset : offset + n].view(t.shape))
            setattr(e, which + "_grad", self.buffer[offset : offset + n].view(t.shape))
            offset += n

    def attach(self) -> None:
        """Make the buffer the flat Parameter's gradient (``zero_grad`` may have unset it)."""
        if self.param.grad is not self.buffer:
            self.param.grad = self.buffer


#: What ``params`` takes: names or patterns, or a mapping of them to a unit dim.
ParamSelection = Iterable[str] | Mapping[str, int | PerOutput | None]


def _qualified(qualname: str, name: str) -> str:
    return f"{qualname}.{name}" if qualname else name


def _refuse_normalized(model: nn.Module) -> None:
    for found in find_weight_norms(model, theirs=True):
        what = found.name + ("" if found.kind == "weightnorm" else f" (torch's {found.kind})")
        where = found.qualname.rpartition(".")[0] or "the model"
        raise WeightNormError(
            f"{where} is already weight-normalized ({what}); "
            "WeightNormOptimizer(model, ...) takes a plain model: use "
            "WeightNormOptimizer.from_model(model, optimizer, ...) to train the weight norms "
            "it carries, or wn.fold(model) first to drop them"
        )


def _select_by_layers(
    model: nn.Module, layers: tuple[type[nn.Module], ...], eps: float, gain: float | None
) -> list[_Entry]:
    entries: list[_Entry] = []
    normalized: set[int] = set()
    for qualname, module in model.named_modules():
        w = module._parameters.get("weight") if isinstance(module, layers) else None
        if w is None or not w.requires_grad or id(w) in normalized:
            continue
        spec = make_spec(module, "weight", tuple(w.shape), "output", eps, gain)
        entries.append(_Entry(_qualified(qualname, "weight"), w, spec))
        normalized.add(id(w))
    if not entries:
        raise WeightNormError(
            f"no {', '.join(t.__name__ for t in layers)} weight to normalize in the model"
        )
    return entries


def _select_by_params(
    model: nn.Module, params: ParamSelection, eps: float, gain: float | None
) -> list[_Entry]:
    wanted: list[tuple[str, int | PerOutput | None]]
    if isinstance(params, str):
        wanted = [(params, "output")]
    elif isinstance(params, Mapping):
        wanted = list(params.items())
    else:
        wanted = [(p, "output") for p in params]
    for pattern, _ in wanted:
        if not isinstance(pattern, str):
            raise WeightNormError(
                f"params takes parameter names or fnmatch patterns (str), got "
                f"{type(pattern).__name__} {pattern!r}"
            )
    if not wanted:
        raise WeightNormError("params is empty; expected parameter names or patterns")
    matched: set[str] = set()
    chosen: dict[int, tuple[str, WeightNormSpec, str]] = {}  # id -> name, spec, pattern
    entries: list[_Entry] = []
    names: list[str] = []
    # every path to every parameter, shared modules and tied parameters included
    for qualname, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is None:
                continue
            full = _qualified(qualname, name)
            names.append(full)
            hits = [(p, d) for p, d in wanted if p == full or fnmatch.fnmatchcase(full, p)]
            if not hits:
                continue
            matched.update(p for p, _ in hits)
            problem = (
                "is uninitialized (a lazy module); run one forward pass first"
                if isinstance(param, nn.parameter.UninitializedParameter)
                else f"has dtype {param.dtype}; expected a floating parameter"
                if not param.is_floating_point()
                else "does not require grad; expected a trainable parameter (leave frozen ones "
                "out of params)"
                if not param.requires_grad
                else None
            )
            if problem is not None:
                raise WeightNormError(f"params: {full} {problem}")
            for pattern, dim in hits:
                try:
                    spec = make_spec(module, name, tuple(param.shape), dim, eps, gain)
                except WeightNormError as err:
                    raise WeightNormError(f"params[{pattern!r}]: {err}") from None
                seen = chosen.get(id(param))
                if seen is None:
                    chosen[id(param)] = (full, spec, pattern)
                    entries.append(_Entry(full, param, spec))
                elif (seen[1].dim, seen[1].groups) != (spec.dim, spec.groups):
                    where = full if seen[0] == full else f"{seen[0]} (tied to {full})"
                    raise WeightNormError(
                        f"params: {where} is asked for dim={seen[1].dim}, groups={seen[1].groups}"
                        f" by {seen[2]!r} and dim={spec.dim}, groups={spec.groups} by {pattern!r}"
                    )
    unmatched = [p for p, _ in wanted if p not in matched]
    if unmatched:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise WeightNormError(
            f"params: {', '.join(map(repr, unmatched))} match no parameter of the model; "
            f"its parameters: {shown or 'none'}"
        )
    return entries


class WeightNormOptimizer(torch.optim.Optimizer):
    r"""Train a plain model as if it were weight-normalized, through any ``torch.optim`` optimizer.

    .. math::
        \nabla_g L = \frac{\nabla_{\mathbf w} L \cdot \mathbf v}{\|\mathbf v\|}, \qquad
        \nabla_{\mathbf v} L = \frac{g}{\|\mathbf v\|}\nabla_{\mathbf w} L
            - \frac{g\,\nabla_g L}{\|\mathbf v\|^2}\mathbf v

    The selected weights of ``model`` (by default the ``weight`` of every ``layers`` module,
    per output unit as :func:`weightnorm.weight_norm` would; or the parameters named in
    ``params``) are represented by ``g = ||w||`` and ``v = w``, which the wrapped optimizer
    updates; every other parameter is updated directly. After each :meth:`step` the model's
    weights equal ``g v / ||v||``. Forward and backward cost nothing extra. The trajectory equals
    that of the model reparameterized by :func:`weightnorm.weight_norm` with the same dims under
    the same optimizer, up to float rounding. To train a model that already carries weight norms
    (this library's or PyTorch's), use :meth:`from_model`.

    ``state_dict()`` holds the wrapped optimizer's state and every ``g`` and ``v``;
    ``load_state_dict`` restores both, so training resumes exactly (also write the model's own
    state dict). Use ``zero_grad`` as usual; the model's gradients are read at each step.
    :meth:`weight_norm_parameters`, :meth:`dims` and :meth:`specs` say what is normalized.

    Beyond the paper: ``gain=c`` fixes every ``g`` (no learned magnitude) and ``forced=``
    holds every unit of ``v`` at a fixed norm after each step (forced weight normalization,
    EDM2), the optimizer-level forms of :func:`weightnorm.weight_norm`'s ``gain`` and
    :func:`weightnorm.force_weight_norm`; :meth:`forced_norms` lists the norms.

    Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2-3.

    Args:
        model (nn.Module): a plain model (one carrying weight norms, ours or PyTorch's, is
            refused: see :meth:`from_model`).
        optimizer (callable): builds the wrapped optimizer from a list of parameter groups,
            e.g. ``torch.optim.Adam`` or ``lambda groups: torch.optim.SGD(groups, momentum=0.9)``.
        layers (tuple of types, optional): modules whose ``weight`` is normalized when
            ``params`` is not given. Default: Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d.
        params (iterable of str, or mapping of str to dim, optional): the parameters to
            normalize instead of ``layers``, by qualified name (``"decoder.0.weight"``) or
            ``fnmatch`` pattern (``"encoder.*.conv.weight"``; ``*`` also crosses dots). With an
            iterable each one gets the per-output-unit dim of its module
            (:func:`weightnorm.default_dim`: ConvTranspose per output channel, grouped ones
            included); a mapping ``{name or pattern: dim}`` gives the dim: an int (negative
            counts from the end, as in :func:`weightnorm.weight_norm`), ``None`` (the whole
            tensor) or ``"output"``. Every entry must match a parameter, and every matched one
            must be floating and require grad; two entries giving one parameter different dims
            are refused. Tied parameters are normalized once, under the first name matched.
            Default: ``None`` (use ``layers``).
        eps (float, optional): lower bound on ``||v||``. Default: ``1e-12``.
        flat (bool, optional): hand the wrapped optimizer every ``g`` and ``v`` (of one dtype
            and device) as one flat tensor instead of two tensors per layer: the same update
            for optimizers that act element by element, and fewer tensors to step (on the CPU
            that saves more than the conversion costs). Default ``None``: flat when
            ``optimizer`` is one of torch.optim's element-wise optimizers (SGD, Adam, AdamW,
            Adamax, NAdam, RAdam, RMSprop, Adagrad, Adadelta, ASGD, Rprop, or a
            ``functools.partial`` of one), separate tensors otherwise (a factory function,
            optimizers with per-tensor rules such as LAMB or Shampoo). When flat, a weight that
            gets no gradient in a step still has its ``g`` and ``v`` stepped with a zero
            gradient (momentum carries them), as any flat-parameter optimizer does; pass
            ``False`` to skip them instead.
        gain (float, optional): a fixed gain ``c > 0`` for every normalized weight instead of
            a learned ``g``: ``w = c v/||v||`` (the weights are rewritten so at construction),
            as :func:`weightnorm.weight_norm` with ``gain=c``. Default: ``None`` (learned).
        forced (float or "sqrt_fan_in", optional): forced weight normalization: after every
            step, and once at construction, each unit of every ``v`` is rescaled to this norm
            (:func:`weightnorm.functional.renormalize_`), before the weights are written, as
            :func:`weightnorm.force_weight_norm` does for modules. ``"sqrt_fan_in"`` is EDM2's
            choice (see :func:`weightnorm.functional.forced_norm`). Default: ``None`` (off).
        **defaults: keyword arguments of ``optimizer`` (``lr=...``).

    Raises:
        WeightNormError: the model already carries weight norms, nothing to normalize, a
            ``params`` entry that matches nothing, a matched parameter that is not floating or
            does not require grad, a dim out of range, ``layers`` given with ``params``, a
            ``gain`` or ``forced`` norm that is not positive and finite.
        TypeError: ``gain`` or ``forced`` of the wrong type.

    Example::

        >>> import torch, weightnorm as wn
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = wn.optim.WeightNormOptimizer(net, torch.optim.Adam, lr=1e-2)
        >>> net(torch.randn(16, 4)).pow(2).mean().backward()
        >>> opt.step(); opt.zero_grad()
        >>> g = opt.weight_norm_parameters()["0.weight"][0]
        >>> bool(torch.allclose(net[0].weight.norm(dim=1), g.flatten()))
        True
        >>> whole = wn.optim.WeightNormOptimizer(net, torch.optim.Adam, params={"*.weight": None})
        >>> whole.dims()
        {'0.weight': None, '2.weight': None}
        >>> mp = wn.optim.WeightNormOptimizer(net, torch.optim.Adam, gain=1.0, forced="sqrt_fan_in")
        >>> mp.forced_norms()
        {'0.weight': 2.0, '2.weight': 2.8284271247461903}
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        layers: tuple[type[nn.Module], ...] = DEFAULT_LAYERS,
        params: ParamSelection | None = None,
        eps: float = F.DEFAULT_EPS,
        flat: bool | None = None,
        gain: float | None = None,
        forced: F.ForcedNorm | None = None,
        **defaults: Any,
    ) -> None:
        F.check_eps(eps)
        F.check_gain(gain)
        _check_forced(forced)
        _refuse_normalized(model)
        if params is None:
            entries = _select_by_layers(model, tuple(layers), eps, gain)
        elif tuple(layers) != DEFAULT_LAYERS:
            raise WeightNormError(
                "give layers or params, not both: params names the parameters itself"
            )
        else:
            entries = _select_by_params(model, params, eps, gain)
        self._setup(model, entries, optimizer, flat, forced, defaults)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        eps: float | None = None,
        flat: bool | None = None,
        forced: F.ForcedNorm | None = None,
        **defaults: Any,
    ) -> WeightNormOptimizer:
        r"""Take over the weight norms ``model`` carries, fold the model, and train it as before.

        ``model`` may carry this library's weight norms (:func:`weightnorm.weight_norm`,
        ``WN*`` layers), PyTorch's legacy ``torch.nn.utils.weight_norm`` and/or
        ``torch.nn.utils.parametrizations.weight_norm``, in any mix. Each normalized weight is
        taken over with its own dim (PyTorch's ``dim=None``/``-1`` whole tensor, a
        ConvTranspose that PyTorch normalizes per input channel, this library's grouped
        ConvTranspose, wav2vec2's ``dim=2``...) and its current ``g`` and ``v`` values (``v``
        keeps its norm, which sets the size of the steps on the direction, paper section 2.1;
        ``g`` keeps its dtype). The model is then folded in place (:func:`weightnorm.fold`):
        its weights become plain parameters holding ``g v/||v||``, with forward and backward
        at the plain model's cost. Its other trainable parameters are optimized directly.
        Training the folded model with this optimizer follows the trajectory of the original
        model trained with ``optimizer`` over its parameters, up to float rounding.

        A weight norm whose ``g`` and ``v`` are both frozen (``requires_grad=False``) is
        folded and stays frozen, not taken over. A fixed gain (``weight_norm(..., gain=c)``)
        stays fixed: its ``g`` is taken over and never stepped.

        Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016, eq. 2-3.

        Args:
            model (nn.Module): a model carrying weight norms; changed in place.
            optimizer (callable), flat, forced, **defaults: as in :class:`WeightNormOptimizer`.
            eps (float, optional): lower bound on ``||v||`` for every weight. Default ``None``:
                this library's weight norms keep their own ``eps``, PyTorch's (which have
                none) get ``1e-12``.

        Returns:
            The optimizer; :meth:`weight_norm_parameters`, :meth:`dims` and :meth:`specs`
            list what it took over, by the qualified name of the (now plain) weight.

        Raises:
            WeightNormError: no weight norm in ``model``, a weight whose ``g`` and ``v`` are
                not both trainable or both frozen, a PyTorch parametrization list holding more
                than the weight norm, or one ``v`` shared by two modules. Nothing is changed
                then.

        Example::

            >>> import torch, weightnorm as wn
            >>> torch_wn = torch.nn.utils.parametrizations.weight_norm
            >>> net = torch.nn.Sequential(
            ...     wn.WNConv1d(2, 4, 3, padding=1),
            ...     torch_wn(torch.nn.Conv1d(4, 4, 5, padding=2), dim=2),  # wav2vec2's pos conv
            ...     torch.nn.Conv1d(4, 1, 1),
            ... )
            >>> opt = wn.optim.WeightNormOptimizer.from_model(net, torch.optim.Adam, lr=1e-3)
            >>> opt.dims()
            {'0.weight': 0, '1.weight': 2}
            >>> [type(m).__name__ for m in net]      # folded: plain layers
            ['Conv1d', 'Conv1d', 'Conv1d']
            >>> net(torch.randn(3, 2, 8)).pow(2).mean().backward()
            >>> opt.step(); opt.zero_grad()
        """
        if eps is not None:
            F.check_eps(eps)
        _check_forced(forced)
        found: list[tuple[Any, WeightNormSpec, Tensor, Tensor]] = []
        frozen, owners = 0, dict[int, str]()
        for f in find_weight_norms(model, theirs=True):
            if f.spec.gain is None and f.g.requires_grad != f.v.requires_grad:
                raise WeightNormError(
                    f"{f.qualname}: g {'requires' if f.g.requires_grad else 'does not require'} "
                    f"grad and v {'does' if f.v.requires_grad else 'does not'}; expected both "
                    "trainable (taken over) or both frozen (folded)"
                )
            if id(f.v) in owners:
                raise WeightNormError(
                    f"{f.qualname} and {owners[id(f.v)]} share one v; expected one module per "
                    "normalized weight"
                )
            owners[id(f.v)] = f.qualname
            if not f.v.requires_grad:
                frozen += 1
                continue
            spec = (
                f.spec
                if eps is None
                else WeightNormSpec(f.spec.shape, f.spec.dim, f.spec.groups, eps, f.spec.gain)
            )
            with torch.no_grad():  # the values as they are now, before folding rewrites v
                found.append((f, spec, f.g.detach().clone(), f.v.detach().clone()))
        if not found:
            raise WeightNormError(
                "the model carries no trainable weight norm"
                + (f" ({frozen} frozen)" if frozen else "")
                + " (this library's, torch.nn.utils.weight_norm or torch.nn.utils."
                "parametrizations.weight_norm); for a plain model use "
                "WeightNormOptimizer(model, optimizer, layers=... or params=...)"
            )
        fold(model)
        entries = []
        for f, spec, g, v in found:
            w = f.module._parameters[f.name]  # fold leaves the v Parameter as the weight
            entries.append(_Entry(f.qualname, cast(nn.Parameter, w), spec, g=g, v=v))
        taken = cls.__new__(cls)
        taken._setup(model, entries, optimizer, flat, forced, defaults)
        return taken

    def _setup(
        self,
        model: nn.Module,
        entries: list[_Entry],
        optimizer: Callable[..., torch.optim.Optimizer],
        flat: bool | None,
        forced: F.ForcedNorm | None,
        defaults: dict[str, Any],
    ) -> None:
        self._entries = entries
        if flat is None:
            flat = _is_elementwise(optimizer)
        self._packs: list[_Pack] = []
        if flat:
            by_kind: dict[tuple[torch.dtype, torch.device], list[tuple[_Entry, str]]] = {}
            for e in entries:
                for t, which in zip(e.stepped(), ("g", "v")[-len(e.stepped()) :], strict=True):
                    by_kind.setdefault((t.dtype, t.device), []).append((e, which))
            self._packs = [_Pack(tensors) for tensors in by_kind.values()]
            stepped: list[Tensor] = [pack.param for pack in self._packs]
        else:
            stepped = [t for e in entries for t in e.stepped()]
        normalized = {id(e.w) for e in entries}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in normalized]
        groups: list[dict[str, Any]] = [{"params": stepped}]
        if others:
            groups.append({"params": others})
        self.inner = optimizer(groups, **defaults)
        super().__init__([{"params": stepped}], {})
        # share the wrapped optimizer's groups and state: LR schedulers act on the real ones
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state
        self.defaults = self.inner.defaults
        # forced weight normalization: the fixed norm of each entry's units
        self._forced = [] if forced is None else [F.forced_norm(forced, e.v.shape, e.spec.dim,
                                                                groups=e.spec.groups)
                                                  for e in entries]  # fmt: skip
        # (v already at its norm, as loaded from a forced run, keeps its bits)
        self._renormalize(settled=True)
        for e in entries:  # the weights from g and v, once every entry has its final g and v
            e.write_weight()

    def _renormalize(self, settled: bool = False) -> None:
        """Forced weight normalization: every unit of every ``v`` to its fixed norm."""
        F.force(
            [(e.v, e.spec, n) for e, n in zip(self._entries, self._forced, strict=False)], settled
        )

    def weight_norm_parameters(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{weight name: (g, v)}`` for every normalized weight (with ``flat``, views into the
        flat tensor the wrapped optimizer steps; a fixed gain's ``g`` is a plain tensor that it
        does not step)."""
        return {e.name: (e.g, e.v) for e in self._entries}

    def dims(self) -> dict[str, int | None]:
        """``{weight name: dim}``: the unit dim of every normalized weight (non-negative, or
        ``None`` for the whole tensor), in :func:`weightnorm.weight_norm`'s convention.

        A grouped ConvTranspose normalized per output channel reports ``1`` with
        ``groups > 1`` (see :meth:`specs`); give it as ``"output"`` in ``params``.
        """
        return {e.name: e.spec.dim for e in self._entries}

    def specs(self) -> dict[str, WeightNormSpec]:
        """``{weight name: WeightNormSpec}`` for every normalized weight (its whole shape, also
        for a weight sharded by FSDP2)."""
        return {
            e.name: WeightNormSpec(tuple(e.w.shape), e.spec.dim, e.spec.groups, e.spec.eps,
                                   e.spec.gain)
            for e in self._entries
        }  # fmt: skip

    def _weights(self) -> dict[str, Tensor]:
        """``{weight name: the model's weight}`` (the tensors written at each step)."""
        return {e.name: e.w for e in self._entries}

    def forced_norms(self) -> dict[str, float]:
        """``{weight name: norm}``: the norm every unit of each ``v`` is held at after every
        step (``forced``); empty when forced weight normalization is off."""
        return {e.name: n for e, n in zip(self._entries, self._forced, strict=False)}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Convert the weight gradients (eq. 3), step the wrapped optimizer, write the weights."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for pack in self._packs:
            pack.attach()
        copies: tuple[list[Tensor], list[Tensor]] = ([], [])
        for entry in self._entries:
            entry.to_g_v_grads(copies)
        if copies[0]:
            compat.foreach_copy_(*copies)  # into the flat gradients: one call for all
        self.inner.step()
        self._renormalize()  # (before the write: the norms kept for the next backward are v's)
        for entry in self._entries:
            entry.write_weight()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model's gradients and those of ``g`` and ``v``."""
        self.inner.zero_grad(set_to_none)  # also the flat gradients
        for entry in self._entries:
            if set_to_none:
                entry.w.grad = None
            elif entry.w.grad is not None:
                entry.w.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state and every ``g`` and ``v``."""
        return {
            "inner": self.inner.state_dict(),
            "weight_norm": {
                e.name: (e.g.detach().clone(), e.v.detach().clone()) for e in self._entries
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s content (and write the weights from ``g`` and ``v``)."""
        saved = state_dict.get("weight_norm")
        if not isinstance(saved, dict) or "inner" not in state_dict:
            raise WeightNormError(
                "expected a WeightNormOptimizer state dict with keys 'inner' and 'weight_norm'"
            )
        names = [e.name for e in self._entries]
        if sorted(saved) != sorted(names):
            raise WeightNormError(
                f"the state dict normalizes {sorted(saved)}, this optimizer {sorted(names)}"
            )
        for entry in self._entries:
            g, v = saved[entry.name]
            if tuple(g.shape) != tuple(entry.g.shape) or tuple(v.shape) != tuple(entry.v.shape):
                raise WeightNormError(
                    f"{entry.name}: the state dict has g, v of shapes {tuple(g.shape)}, "
                    f"{tuple(v.shape)}; this optimizer {tuple(entry.g.shape)}, "
                    f"{tuple(entry.v.shape)}"
                )
        with torch.no_grad():
            for entry in self._entries:
                g, v = saved[entry.name]
                entry.g.copy_(g)
                entry.v.copy_(v)
                entry.write_weight()
        self.inner.load_state_dict(state_dict["inner"])

    def __repr__(self) -> str:
        return f"WeightNormOptimizer({len(self._entries)} weights, {self.inner!r})"
