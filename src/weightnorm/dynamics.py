"""Beyond the paper: forced weight normalization, and the quantities of training dynamics.

Under weight normalization the gradient of ``v`` is orthogonal to ``v`` (paper eq. 3), so a
gradient step only lengthens ``v`` (paper section 2.1), and the angle by which a step turns each
unit shrinks as ``||v||`` grows: as ``1/||v||^2`` under SGD (the gradient itself scales as
``1/||v||``), as ``1/||v||`` under Adam (whose steps do not scale with the gradient). The norm
of ``v`` sets the effective learning rate. EDM2 (Karras et al.,
"Analyzing and Improving the Training Dynamics of Diffusion Models", CVPR 2024) removes that
drift with *forced* weight normalization: after every step each unit of the stored weight is
rescaled to a fixed norm, while the forward still normalizes (so the gradients stay the
projected ones of eq. 3). nGPT (Loshchilov et al., "nGPT: Normalized Transformer with
Representation Learning on the Hypersphere", 2024) keeps every weight row on the unit sphere
the same way.

- :func:`force_weight_norm` does this for a model's weight-normalized modules, through a step
  post hook on the optimizer you pass (any ``torch.optim`` optimizer); the optimizer-level mode
  takes ``WeightNormOptimizer(..., forced=...)``. A fixed (not learned) gain is
  ``weight_norm(..., gain=c)``: EDM2's magnitude-preserving layers are ``gain=1.0`` with
  ``norm="sqrt_fan_in"``.
- :func:`weight_norm_stats` reports ``||v||`` and ``g`` per unit, and
  :class:`AngularStepTracker` the angle each step turns every unit by (also of a plain model's
  weights, the baseline): what the paper and EDM2 argue about, for loggers.

The math is in :mod:`weightnorm.functional` (:func:`~weightnorm.functional.renormalize_`,
:func:`~weightnorm.functional.angle_between`); this module finds the tensors and holds the hooks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from . import functional as F
from ._errors import WeightNormError
from ._model import DEFAULT_LAYERS
from ._reparam import find_weight_norms, make_spec
from .optim import WeightNormOptimizer

__all__ = [
    "AngularStep",
    "AngularStepTracker",
    "ForcedWeightNorm",
    "WeightNormStats",
    "force_weight_norm",
    "weight_norm_stats",
]


class _Target(NamedTuple):
    """One weight whose units are watched: ``v`` (a plain weight's own tensor) and ``g``."""

    name: str  # qualified: "encoder.0.weight"
    spec: F.WeightNormSpec
    g: Tensor | None
    v: Tensor


def _module_targets(model: nn.Module) -> list[_Target]:
    """Every weight norm of this library in ``model`` (a shared ``v`` once)."""
    seen: set[int] = set()
    targets = []
    for f in find_weight_norms(model):
        if id(f.v) not in seen:
            seen.add(id(f.v))
            targets.append(_Target(f.qualname, f.spec, f.g, f.v))
    return targets


def _optimizer_targets(optimizer: WeightNormOptimizer) -> list[_Target]:
    """The ``g`` and ``v`` a :class:`WeightNormOptimizer` owns."""
    return [_Target(e.name, e.spec, e.g, e.v) for e in optimizer._entries]


def _plain_targets(model: nn.Module) -> list[_Target]:
    """The weight of every Linear/Conv/ConvTranspose layer of a plain model, per output unit."""
    targets = []
    for qualname, module in model.named_modules():
        w = module._parameters.get("weight") if isinstance(module, DEFAULT_LAYERS) else None
        if w is not None:
            spec = make_spec(module, "weight", tuple(w.shape), "output")
            name = f"{qualname}.weight" if qualname else "weight"
            targets.append(_Target(name, spec, None, w))
    return targets


def _no_weight_norm(model: nn.Module, what: str) -> WeightNormError:
    theirs = [f.qualname for f in find_weight_norms(model, theirs=True) if f.kind != "weightnorm"]
    hint = (
        f" (it carries torch's weight norm on {', '.join(theirs[:4])}: convert it with "
        "wn.replace_torch_weight_norm(model))"
        if theirs
        else " (apply wn.weight_norm / wn.apply_weight_norm, or use WN* layers; a model trained "
        "by wn.optim.WeightNormOptimizer is plain: pass the optimizer)"
    )
    return WeightNormError(
        f"{what} needs a model with weight-normalized parameters, got a {type(model).__name__} "
        f"with none{hint}"
    )


def _check_types(model: object, optimizer: object, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: expected an nn.Module as the model, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{what}: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")


def _owned(targets: list[_Target], optimizer: torch.optim.Optimizer, what: str) -> list[_Target]:
    """The targets whose ``v`` the optimizer updates."""
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    owned = [t for t in targets if id(t.v) in ids]
    if not owned:
        shown = ", ".join(f"{t.name}{'_v' if t.g is not None else ''}" for t in targets[:4])
        raise WeightNormError(
            f"{what}: the optimizer owns none of the model's {len(targets)} "
            f"{'weight-normalized v' if targets[0].g is not None else 'weights'} "
            f"({shown}{', ...' if len(targets) > 4 else ''}); expected an optimizer built over "
            "the model's parameters"
        )
    return owned


# --------------------------------------------------------------------------------------------
# Forced weight normalization of modules
# --------------------------------------------------------------------------------------------

#: id(v) -> the live handle forcing it (a handle keeps its v alive, so an id is never reused
#: while its entry exists); only to refuse forcing one v twice.
_FORCING: weakref.WeakValueDictionary[int, ForcedWeightNorm] = weakref.WeakValueDictionary()


class ForcedWeightNorm:
    """What :func:`force_weight_norm` returns: the hook that holds every ``v`` at its norm.

    :attr:`norms` lists the forced weights and their norms; :meth:`remove` stops forcing.
    The hook belongs to the optimizer object it was registered on: an optimizer built anew
    (or a copy, which torch makes without hooks) needs :func:`force_weight_norm` again.
    """

    def __init__(
        self, targets: list[_Target], norms: list[float], optimizer: torch.optim.Optimizer
    ) -> None:
        self._targets = targets
        self._forced = [(t.v, t.spec, n) for t, n in zip(targets, norms, strict=True)]
        self._optimizer = weakref.ref(optimizer)
        self._handle: RemovableHandle | None = None

    @property
    def norms(self) -> dict[str, float]:
        """``{weight name: norm}``: the norm every unit of each forced ``v`` is held at."""
        return {t.name: n for t, (_, _, n) in zip(self._targets, self._forced, strict=True)}

    @property
    def active(self) -> bool:
        """Whether the hook is registered (not removed, and its optimizer still exists)."""
        return self._handle is not None and self._optimizer() is not None

    def remove(self) -> None:
        """Stop forcing: remove the hook (the weights keep their current values)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for t in self._targets:
            if _FORCING.get(id(t.v)) is self:
                del _FORCING[id(t.v)]

    def _renormalize(self, settled: bool = False) -> None:
        F.force(self._forced, settled)

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._renormalize()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"ForcedWeightNorm({len(self._targets)} weights, {state})"


def force_weight_norm(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, norm: F.ForcedNorm = "sqrt_fan_in"
) -> ForcedWeightNorm:
    r"""Hold every unit of the model's weight-normalized ``v`` at a fixed norm after each step.

    .. math::
        \mathbf{v} \leftarrow c\,\frac{\mathbf{v}}{\|\mathbf{v}\|}
        \quad\text{after every } \texttt{optimizer.step()}, \qquad
        \mathbf{w} = g\,\frac{\mathbf{v}}{\|\mathbf{v}\|}\ \text{in the forward}

    Forced weight normalization (Karras et al., "Analyzing and Improving the Training Dynamics
    of Diffusion Models", CVPR 2024, eq. 66, ``MPConv`` in NVlabs/edm2). Registers a step post
    hook on ``optimizer`` (:meth:`torch.optim.Optimizer.register_step_post_hook`) that rescales
    every unit of each weight-normalized ``v`` of ``model`` that ``optimizer`` updates, in
    place, under ``no_grad``, outside any graph; and rescales them once now, so the invariant
    holds from step 0. ``w``, and so the model's function, does not change (``w`` does not
    depend on ``||v||``); the forward still normalizes, so gradients stay the projected ones of
    the paper's eq. 3, and the angle each step turns a unit by no longer shrinks as ``||v||``
    grows. Works with any ``torch.optim`` optimizer (LBFGS with its closure: once per step), LR
    schedulers, ``GradScaler`` (a step it skips is not followed by the hook), DDP (identical
    parameters renormalize identically on every rank) and a model compiled with
    ``torch.compile`` (the hook runs outside the graph; nothing recompiles).

    The norm ``c``: ``"sqrt_fan_in"`` (default) is EDM2's, ``sqrt`` of the number of elements of
    each unit (its ``normalize`` gives the stored weight elements of unit mean square): with
    Adam, whose steps are at most about ``lr`` in every element, the angle a step turns a unit
    by then scales with ``lr`` and not with the unit's fan-in (at most about ``lr`` radians;
    ``weightnorm reproduce effective-lr`` measures the spread over layers). A number holds
    every unit at that norm: ``1.0`` is nGPT's unit-norm rows (Loshchilov et al., 2024), with
    ``g`` learned. EDM2's magnitude-preserving layers also fix the gain:
    ``weight_norm(..., gain=1.0)`` (its ``w * (1/sqrt(fan_in))`` on a weight of norm
    ``sqrt(fan_in)`` is ``v/||v||``).

    Resuming: register, then load the model's and optimizer's state dicts (or the other way
    round: when forcing starts, units already at their norm to within rounding, such as those
    of a checkpoint written under forcing, are left bit for bit), and the run continues exactly
    as it would have. The hook belongs to this optimizer object; it is not saved in its state
    dict (the norm is configuration, not state).

    Args:
        model (nn.Module): a model carrying this library's weight norms (``wn.weight_norm``,
            ``wn.apply_weight_norm``, ``WN*`` layers); a DDP wrapper or a compiled model works
            (the weight names then carry its prefix).
        optimizer (torch.optim.Optimizer): the optimizer that updates them (its parameter
            groups at this call decide which ``v`` are forced).
        norm (float or "sqrt_fan_in", optional): the fixed norm ``c`` of every unit (see
            :func:`weightnorm.functional.forced_norm`). Default: ``"sqrt_fan_in"``.

    Returns:
        A :class:`ForcedWeightNorm` handle: ``.norms`` (``{weight name: c}``), ``.remove()``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``optimizer`` not a
            ``torch.optim.Optimizer``, or ``norm`` of the wrong type.
        WeightNormError: ``norm`` not positive and finite or an unknown string, a model with no
            weight-normalized parameter, an optimizer that updates none of them, a
            ``WeightNormOptimizer`` (use its ``forced=`` argument), or a ``v`` already forced.

    Example::

        >>> import torch, weightnorm as wn
        >>> net = wn.apply_weight_norm(torch.nn.Sequential(
        ...     torch.nn.Linear(9, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)))
        >>> opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        >>> forced = wn.force_weight_norm(net, opt)       # EDM2: ||v|| = sqrt(fan_in) per unit
        >>> forced.norms
        {'0.weight': 3.0, '2.weight': 4.0}
        >>> net(torch.randn(8, 9)).pow(2).mean().backward()
        >>> opt.step()                                    # ...then every v is set back
        >>> bool(torch.allclose(net[2].weight_v.norm(dim=1), torch.full((2,), 4.0)))
        True
        >>> forced.remove()
    """
    what = "force_weight_norm"
    _check_types(model, optimizer, what)
    if isinstance(optimizer, WeightNormOptimizer):
        raise WeightNormError(
            "force_weight_norm takes a torch optimizer of a weight-normalized model; a "
            "WeightNormOptimizer owns its g and v itself: build it with "
            "WeightNormOptimizer(..., forced=norm) instead"
        )
    try:
        F.check_forced_norm(norm)
    except ValueError as err:
        raise WeightNormError(f"{what}: {err}") from None
    targets = _module_targets(model)
    if not targets:
        raise _no_weight_norm(model, what)
    targets = _owned(targets, optimizer, what)
    for t in targets:
        other = _FORCING.get(id(t.v))
        if other is not None and other.active:
            raise WeightNormError(
                f"{what}: {t.name}_v is already forced by {other!r}; call .remove() on the "
                "handle force_weight_norm returned first (to change the norm, or the optimizer)"
            )
    norms = [F.forced_norm(norm, t.spec.shape, t.spec.dim, groups=t.spec.groups) for t in targets]
    handle = ForcedWeightNorm(targets, norms, optimizer)
    handle._renormalize(settled=True)
    handle._handle = optimizer.register_step_post_hook(handle._hook)
    for t in targets:
        _FORCING[id(t.v)] = handle
    return handle


# --------------------------------------------------------------------------------------------
# What to log
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightNormStats:
    """``||v||`` and ``g`` of one weight-normalized weight, per unit.

    Attributes:
        v_norm (Tensor): ``||v||`` of each unit, flat, in output-unit order (float32 for
            half-precision ``v``).
        g (Tensor): ``g`` of each unit, flat, in the same order (a copy).
        learned_gain (bool): whether ``g`` is trained (``False`` for a fixed gain).
    """

    v_norm: Tensor
    g: Tensor
    learned_gain: bool

    def summary(self) -> dict[str, float]:
        """``v_norm_min/mean/max`` and ``g_min/mean/max`` as floats (one host read)."""
        v, g = self.v_norm.double(), self.g.double()
        values = torch.stack([v.min(), v.mean(), v.max(), g.min(), g.mean(), g.max()]).tolist()
        keys = ("v_norm_min", "v_norm_mean", "v_norm_max", "g_min", "g_mean", "g_max")
        return dict(zip(keys, values, strict=True))


def _stats(t: _Target) -> WeightNormStats:
    with torch.no_grad():
        g = t.g if t.g is not None else t.spec.split(t.v)
        return WeightNormStats(
            v_norm=t.spec.norms(t.v.detach()).reshape(-1),
            g=g.detach().reshape(-1).clone(),
            learned_gain=t.spec.gain is None,
        )


def weight_norm_stats(source: nn.Module | WeightNormOptimizer) -> dict[str, WeightNormStats]:
    """``||v||`` and ``g`` per unit of every weight-normalized weight, by qualified name.

    Under weight norm a gradient step only lengthens ``v`` (the gradient is orthogonal to
    ``v``, paper eq. 3 and section 2.1), and the angle each step turns a unit by shrinks as
    ``||v||`` grows: its growth is the effective learning-rate decay that forced weight
    normalization (:func:`force_weight_norm`, EDM2) removes. Nothing is computed in a graph.

    Args:
        source (nn.Module or WeightNormOptimizer): a model carrying this library's weight norms,
            or the optimizer-level mode's optimizer (its own ``g`` and ``v``).

    Returns:
        ``{weight name: WeightNormStats}``; :meth:`WeightNormStats.summary` gives floats.

    Raises:
        TypeError: ``source`` is neither.
        WeightNormError: a model with no weight-normalized parameter.

    Example::

        >>> import torch, weightnorm as wn
        >>> net = wn.apply_weight_norm(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> stats = wn.weight_norm_stats(net)["0.weight"]
        >>> stats.v_norm.shape, stats.learned_gain
        (torch.Size([3]), True)
        >>> sorted(stats.summary())
        ['g_max', 'g_mean', 'g_min', 'v_norm_max', 'v_norm_mean', 'v_norm_min']
    """
    if isinstance(source, WeightNormOptimizer):
        targets = _optimizer_targets(source)
    elif isinstance(source, nn.Module):
        targets = _module_targets(source)
        if not targets:
            raise _no_weight_norm(source, "weight_norm_stats")
    else:
        raise TypeError(
            "weight_norm_stats: expected an nn.Module or a WeightNormOptimizer, got "
            f"{type(source).__name__}"
        )
    return {t.name: _stats(t) for t in targets}


@dataclass(frozen=True)
class AngularStep:
    """The angle, in radians, by which one optimizer step turned each unit of a weight.

    Attributes:
        per_unit (Tensor): one angle per unit in ``[0, pi]``, flat, in output-unit order.
    """

    per_unit: Tensor

    @property
    def mean(self) -> float:
        """The mean angle over the units (a host read)."""
        return float(self.per_unit.double().mean())

    @property
    def max(self) -> float:
        """The largest angle over the units (a host read)."""
        return float(self.per_unit.max())

    def summary(self) -> dict[str, float]:
        """``angle_mean`` and ``angle_max`` as floats (one host read)."""
        a = self.per_unit.double()
        mean, largest = torch.stack([a.mean(), a.max()]).tolist()
        return {"angle_mean": mean, "angle_max": largest}


class AngularStepTracker:
    r"""Measure the angle every optimizer step turns each unit of ``v`` by.

    .. math::
        \theta = \angle\Big(\frac{\mathbf v_t}{\|\mathbf v_t\|},
            \frac{\mathbf v_{t+1}}{\|\mathbf v_{t+1}\|}\Big)
            = 2\operatorname{atan2}\big(\|\hat{\mathbf v}_t - \hat{\mathbf v}_{t+1}\|,
            \|\hat{\mathbf v}_t + \hat{\mathbf v}_{t+1}\|\big)

    the effective step on the direction of ``w`` (for ``g > 0``), which the paper (section 2.1)
    shows shrinking as ``||v||`` grows, and which forced weight normalization (EDM2) keeps from
    shrinking that way. A step pre hook copies every tracked ``v`` (one copy of the
    weights, kept for the duration of the step) and a step post hook computes the angles with
    :func:`weightnorm.functional.angle_between` (float32 for float32 ``v``: angles below about
    1e-7 rad are rounding). No host sync: :meth:`last` returns tensors, and
    :attr:`AngularStep.mean`, :attr:`AngularStep.max` and :meth:`AngularStep.summary` read them
    when asked.

    Args:
        model (nn.Module): a model carrying this library's weight norms (their ``v`` is
            tracked); with a :class:`~weightnorm.optim.WeightNormOptimizer`, the plain model it
            trains (its ``v``); or a plain model (the weight of each Linear/Conv/ConvTranspose
            layer, per output unit: the baseline the effective learning rate is compared to).
        optimizer (torch.optim.Optimizer): the optimizer that updates them (a
            ``WeightNormOptimizer``: its own ``v``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``optimizer`` not an optimizer.
        WeightNormError: nothing to track (no weight updated by ``optimizer``, or a
            ``WeightNormOptimizer`` of another model).

    Example::

        >>> import torch, weightnorm as wn
        >>> net = wn.apply_weight_norm(torch.nn.Sequential(torch.nn.Linear(4, 3)))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> tracker = wn.AngularStepTracker(net, opt)
        >>> net(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
        >>> step = tracker.last()["0.weight"]
        >>> step.per_unit.shape, 0.0 <= step.mean <= step.max < 3.15
        (torch.Size([3]), True)
        >>> tracker.remove()
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        what = "AngularStepTracker"
        _check_types(model, optimizer, what)
        if isinstance(optimizer, WeightNormOptimizer):
            ours = {id(p) for p in model.parameters()}
            names = {name for name, w in optimizer._weights().items() if id(w) in ours}
            if not names:
                raise WeightNormError(
                    f"{what}: the WeightNormOptimizer trains none of this model's parameters "
                    f"(it normalizes {', '.join(optimizer.dims())}); expected the model it was "
                    "built on"
                )
            self._targets = [t for t in _optimizer_targets(optimizer) if t.name in names]
        else:
            targets = _module_targets(model) or _plain_targets(model)
            if not targets:
                raise WeightNormError(
                    f"{what}: {type(model).__name__} has no weight-normalized parameter and no "
                    "Linear/Conv/ConvTranspose weight to track"
                )
            self._targets = _owned(targets, optimizer, what)
        self._before: list[Tensor] | None = None
        self._last: dict[str, AngularStep] = {}
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._before = [t.v.detach().clone() for t in self._targets]

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        before, self._before = self._before, None
        if before is not None:
            self._last = {
                t.name: AngularStep(F.angle(b, t.v.detach(), t.spec).reshape(-1))
                for t, b in zip(self._targets, before, strict=True)
            }

    def last(self) -> dict[str, AngularStep]:
        """``{weight name: AngularStep}`` of the last step (empty before the first one)."""
        return dict(self._last)

    def remove(self) -> None:
        """Remove both hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._before = None
