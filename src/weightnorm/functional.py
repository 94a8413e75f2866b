"""Pure tensor math of weight normalization.

Nothing here knows about modules: these functions take tensors and return tensors, so they can be
used inside any model, under ``torch.func`` transforms, ``torch.compile`` and ``torch.export``.

Reference: T. Salimans and D. P. Kingma, "Weight Normalization: A Simple Reparameterization to
Accelerate Training of Deep Neural Networks", NeurIPS 2016 (arXiv:1602.07868), sections 2 and 4.

Conventions
-----------
``dim`` names the dimension that indexes the normalized *units* (one scalar ``g`` per index), as in
:func:`torch.nn.utils.parametrizations.weight_norm`: ``dim=0`` normalizes each row of a Linear
weight. ``dim=None`` normalizes the whole tensor as one vector. Unlike PyTorch, a negative ``dim``
counts from the end (``-1`` is the last dimension, not "the whole tensor").

``groups > 1`` describes a grouped transposed convolution, whose weight has the layout
``(in_channels, out_channels // groups, *kernel)``: output channel ``j`` of group ``k`` is fed
only by the input rows of group ``k``. The weight is viewed as
``(groups, in_channels // groups, out_channels // groups, *kernel)`` and normalized per
``(group, column)``, so ``g`` has shape ``(groups, 1, out_channels // groups, 1, ...)``; flattened,
it is ordered like the output channels.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Literal, cast

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_EPS",
    "FORCED_NORMS",
    "ForcedNorm",
    "HigherOrderGradientError",
    "angle_between",
    "check_forced_norm",
    "closed_form_grads",
    "dim_of_g",
    "exact_gradients",
    "forced_norm",
    "g_shape",
    "mean_only_batch_norm",
    "norm_except_dim",
    "normalize_dim",
    "renormalize_",
    "unit_size",
    "weight_norm",
]

#: Lower bound on ``||v||`` in the division: a zero ``v`` gives ``w = 0`` and finite gradients.
DEFAULT_EPS = 1e-12

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def normalize_dim(dim: int | None, ndim: int) -> int | None:
    """Return ``dim`` as a non-negative index into a tensor of rank ``ndim`` (``None`` stays).

    Raises:
        IndexError: ``dim`` is outside ``[-ndim, ndim)``.
        TypeError: ``dim`` is neither an ``int`` nor ``None``.

    Example::

        >>> normalize_dim(-1, 3)
        2
    """
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int or None, got {type(dim).__name__} {dim!r}")
    if ndim == 0:
        raise IndexError(f"dim={dim} given for a 0-dimensional tensor; use dim=None")
    if not -ndim <= dim < ndim:
        raise IndexError(
            f"dim out of range: expected an int in [{-ndim}, {ndim - 1}] for a {ndim}-dimensional "
            f"weight (or None for the whole tensor), got {dim}"
        )
    return dim % ndim


def _grouped_view(v: Tensor, groups: int) -> Tensor:
    if v.ndim < 2 or v.shape[0] % groups != 0:
        raise ValueError(
            f"groups={groups} needs a weight of rank >= 2 whose first dimension is divisible by "
            f"groups, got shape {tuple(v.shape)}"
        )
    return v.reshape(groups, v.shape[0] // groups, *v.shape[1:])


def _reduce_dims(ndim: int, dim: int | None, groups: int) -> list[int]:
    if groups > 1:
        kept = {0, (dim if dim is not None else 1) + 1}
        return [d for d in range(ndim + 1) if d not in kept]
    if dim is None:
        return list(range(ndim))
    return [d for d in range(ndim) if d != dim]


def g_shape(
    weight_shape: torch.Size | tuple[int, ...], dim: int | None, groups: int = 1
) -> tuple[int, ...]:
    """Shape of ``g`` for a weight of ``weight_shape`` normalized over units along ``dim``.

    Example::

        >>> g_shape((8, 3, 5), dim=0)
        (8, 1, 1)
        >>> g_shape((6, 4, 3), dim=1, groups=2)
        (2, 1, 4, 1)
    """
    shape = tuple(weight_shape)
    if groups > 1:
        dim = 1 if dim is None else dim
        return (groups, 1, *(s if d == dim else 1 for d, s in enumerate(shape[1:], start=1)))
    if dim is None:
        return (1,) * len(shape)
    return tuple(s if d == dim else 1 for d, s in enumerate(shape))


def dim_of_g(
    g_shape_: torch.Size | tuple[int, ...], weight_shape: torch.Size | tuple[int, ...]
) -> int | Literal[False] | None:
    """The unit dim for which ``g_shape_`` is the keep-dim shape of ``g``; ``False`` if none.

    A single-element g means the whole tensor (``None``).

    Example::

        >>> dim_of_g((1, 6, 1), (4, 6, 3)), dim_of_g((), (4, 6)), dim_of_g((2, 2), (4, 6))
        (1, None, False)
    """
    if int(torch.Size(g_shape_).numel()) == 1:
        return None
    for d in range(len(weight_shape)):
        if tuple(g_shape_) == g_shape(weight_shape, d):
            return d
    return False


def norm_except_dim(v: Tensor, dim: int | None = 0, *, groups: int = 1) -> Tensor:
    r"""Compute the Euclidean norm of every unit of ``v``, keeping the shape of ``g``.

    Half-precision inputs are accumulated and returned in float32.

    Args:
        v (Tensor): the direction tensor.
        dim (int or None, optional): the unit dimension (see the module docstring). Default: ``0``.
        groups (int, optional): groups of a grouped transposed convolution. Default: ``1``.

    Returns:
        A tensor of shape :func:`g_shape` ``(v.shape, dim, groups)``.

    Example::

        >>> norm_except_dim(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 0).flatten().tolist()
        [5.0, 1.0]
    """
    dim = normalize_dim(dim, v.ndim) if groups == 1 else dim
    x = _grouped_view(v, groups) if groups > 1 else v
    return _norm(x, _reduce_dims(v.ndim, dim, groups))


def weight_norm(
    v: Tensor, g: Tensor, dim: int | None = 0, eps: float = DEFAULT_EPS, *, groups: int = 1
) -> Tensor:
    r"""Compute the weight-normalized tensor ``w = g * v / ||v||``.

    .. math::
        \mathbf{w} = \frac{g}{\max(\|\mathbf{v}\|, \epsilon)}\,\mathbf{v}

    one scalar :math:`g` per unit, so :math:`\|\mathbf{w}\| = |g|` whatever :math:`\mathbf{v}` is
    (paper eq. 2). Gradients are exact and follow paper eq. 3; a zero ``v`` gives ``w = 0`` and
    finite gradients. Norms are computed in float32 for float16/bfloat16 ``v``; the result has the
    dtype of ``v``.

    On a GPU (CUDA with Triton) this is one fused kernel in the forward pass and one in the
    backward, with no host synchronization; on the CPU in float32/float64, PyTorch's fused
    kernels. Either refuses a graph of its backward pass (``create_graph=True``) with
    :class:`HigherOrderGradientError`; inside :func:`exact_gradients` every order is exact.

    Args:
        v (Tensor): direction, the shape of the weight.
        g (Tensor): magnitude, of shape :func:`g_shape` ``(v.shape, dim, groups)`` or anything
            that broadcasts to it.
        dim (int or None, optional): the unit dimension; negative counts from the end, ``None``
            normalizes the whole tensor. Default: ``0``.
        eps (float, optional): lower bound on the norm. Default: ``1e-12``.
        groups (int, optional): groups of a grouped transposed convolution (see the module
            docstring). Default: ``1``.

    Returns:
        The weight, with the shape and dtype of ``v``.

    Example::

        >>> v = torch.tensor([[3.0, 4.0]])
        >>> weight_norm(v, torch.tensor([[10.0]]), dim=0)
        tensor([[6., 8.]])
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups == 1:
        dim = normalize_dim(dim, v.ndim)
    return _weight_norm_core(v, g, dim, eps, groups, tuple(_reduce_dims(v.ndim, dim, groups)))


# --------------------------------------------------------------------------------------------
# Beyond the paper: forced weight normalization, and the angle of a step
# --------------------------------------------------------------------------------------------

#: The fixed norm of forced weight normalization (:func:`renormalize_`): a positive finite
#: number, or ``"sqrt_fan_in"``, the square root of the number of elements of each unit (EDM2's
#: choice, see :func:`forced_norm`).
ForcedNorm = float | Literal["sqrt_fan_in"]
FORCED_NORMS: tuple[str, ...] = ("sqrt_fan_in",)


def unit_size(shape: torch.Size | tuple[int, ...], dim: int | None = 0, *, groups: int = 1) -> int:
    """The number of elements of each unit of a weight of ``shape`` normalized along ``dim``.

    For an output unit of a Linear or Conv layer this is its fan-in (``in_features``,
    ``in_channels / groups * kernel size``); ``dim=None`` makes the whole tensor one unit.

    Example::

        >>> unit_size((8, 3, 5), dim=0), unit_size((6, 4, 3), dim=1, groups=2)
        (15, 9)
        >>> unit_size((2, 3), None)
        6
    """
    shape = tuple(shape)
    total = int(torch.Size(shape).numel())
    units = int(torch.Size(g_shape(shape, dim, groups)).numel())
    return total // units if units else 0


def check_forced_norm(norm: object) -> None:
    """Raise unless ``norm`` is a valid :data:`ForcedNorm`.

    Raises:
        TypeError: ``norm`` is neither a real number nor a string.
        ValueError: a number that is not positive and finite, or an unknown string.

    Example::

        >>> check_forced_norm("sqrt_fan_in"); check_forced_norm(1.0)
        >>> check_forced_norm(0.0)
        Traceback (most recent call last):
        ...
        ValueError: norm must be a positive finite number or one of ('sqrt_fan_in',), got 0.0
    """
    if isinstance(norm, str):
        if norm not in FORCED_NORMS:
            raise ValueError(
                f"norm must be a positive finite number or one of {FORCED_NORMS}, got {norm!r}"
            )
        return
    if isinstance(norm, bool) or not isinstance(norm, (int, float)):
        raise TypeError(
            f"norm must be a positive finite number or one of {FORCED_NORMS}, got "
            f"{type(norm).__name__} {norm!r}"
        )
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(
            f"norm must be a positive finite number or one of {FORCED_NORMS}, got {norm!r}"
        )


def forced_norm(
    norm: ForcedNorm, shape: torch.Size | tuple[int, ...], dim: int | None = 0, *, groups: int = 1
) -> float:
    """The norm every unit of a weight of ``shape`` is held at, as a number.

    A number is returned as it is. ``"sqrt_fan_in"`` is ``sqrt(unit_size(shape, dim))``: the
    norm of a unit whose elements have unit mean square. EDM2 (Karras et al., CVPR 2024) holds
    each output unit of its stored weights there (its ``normalize`` divides by
    ``||v|| / sqrt(fan_in)``): with Adam, whose updates are at most about ``lr`` in every
    element, the angle a step turns a unit of that norm by then scales with ``lr`` (at most
    about ``lr`` radians) whatever the unit's fan-in; at norm 1 it would grow as
    ``lr * sqrt(fan_in)``.

    Raises:
        TypeError, ValueError: ``norm`` is not a :data:`ForcedNorm` (see
            :func:`check_forced_norm`).

    Example::

        >>> forced_norm("sqrt_fan_in", (4, 3, 3), dim=0), forced_norm(1.0, (4, 3, 3))
        (3.0, 1.0)
    """
    check_forced_norm(norm)
    if isinstance(norm, str):  # "sqrt_fan_in"
        return math.sqrt(unit_size(shape, dim, groups=groups))
    return float(norm)


def renormalize_(
    v: Tensor,
    norm: ForcedNorm = 1.0,
    dim: int | None = 0,
    *,
    groups: int = 1,
    eps: float = DEFAULT_EPS,
    rtol: float = 0.0,
) -> Tensor:
    r"""Scale every unit of ``v`` in place to a fixed norm; return ``v``.

    .. math::
        \mathbf{v} \leftarrow \frac{c}{\max(\|\mathbf{v}\|, \epsilon)}\,\mathbf{v}

    one scale per unit, computed under ``torch.no_grad()`` (outside any autograd graph). The
    direction of each unit, and so ``weight_norm(v, g)``, is unchanged (for units with
    ``||v|| > eps``: below it the weight is ``g v/eps``). This is forced weight
    normalization (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion
    Models", CVPR 2024, eq. 66; ``MPConv`` in NVlabs/edm2): under weight norm the gradient is
    orthogonal to ``v`` (paper eq. 3), so a gradient step only lengthens ``v`` and the angle
    each step turns a unit by shrinks as ``||v||`` grows (paper section 2.1); resetting
    ``||v||`` after every step keeps that angle set by the learning rate alone. A zero unit
    stays zero.

    Norms are computed in float32 for float16/bfloat16 ``v`` (then ``||v|| = c`` only to that
    dtype's rounding).

    Args:
        v (Tensor): the direction tensor, changed in place.
        norm (float or "sqrt_fan_in", optional): the norm ``c`` of every unit (see
            :func:`forced_norm`). Default: ``1.0``.
        dim (int or None, optional): the unit dimension (see the module docstring). Default: ``0``.
        groups (int, optional): groups of a grouped transposed convolution. Default: ``1``.
        eps (float, optional): lower bound on ``||v||`` in the division. Default: ``1e-12``.
        rtol (float, optional): units whose norm is already within ``rtol * c`` of ``c`` are
            left bit for bit as they are (``0``: every unit is rescaled). Rescaling a unit that
            is at ``c`` already moves its elements by rounding; a tolerance makes a second call
            change nothing. Default: ``0.0``.

    Returns:
        ``v``.

    Raises:
        TypeError, ValueError: a bad ``norm`` (see :func:`check_forced_norm`); ``eps`` or
            ``rtol`` negative.

    Example::

        >>> v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
        >>> renormalize_(v, 10.0)
        tensor([[ 6.,  8.],
                [ 0., 10.]])
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups == 1:
        dim = normalize_dim(dim, v.ndim)
    target = forced_norm(norm, v.shape, dim, groups=groups)
    _renormalize(v, target, tuple(_reduce_dims(v.ndim, dim, groups)), groups, eps, rtol)
    return v


def _renormalize(
    v: Tensor, target: float, dims: tuple[int, ...], groups: int, eps: float, rtol: float
) -> None:
    """:func:`renormalize_` after validation: ``target`` a number, ``dims`` the reduced dims."""
    with torch.no_grad():
        x = _grouped_view(v, groups) if groups > 1 else v
        current = _norm(x, dims)  # (float32 for half v)
        # (a floor above 0 even for eps=0: a zero unit times c/0 would be NaN, not zero)
        scale = torch.div(target, current.clamp_min(max(eps, torch.finfo(current.dtype).tiny)))
        if rtol > 0:  # units already at the target keep their bits
            settled = (current - target).abs() <= rtol * target
            scale = torch.where(settled, torch.ones_like(scale), scale)
        if groups == 1:
            v.mul_(scale)
        else:  # (the grouped view may be a copy)
            v.copy_((x * scale).reshape(v.shape))


def _settled_rtol(dtype: torch.dtype) -> float:
    """How close to its fixed norm a unit of ``dtype`` counts as already there when forcing
    starts: well above the rounding one renormalization leaves (measured here up to ~9 float32
    ulps for units of 1e5 elements), so that starting to force weights loaded from a forced run
    leaves them bit for bit, and a resumed run continues exactly. (After each step every unit
    is rescaled, without a tolerance.)"""
    if dtype == torch.float64:
        return 1e-12
    if dtype in _LOW_PRECISION:
        return 1e-2
    return 1e-5


def angle_between(
    a: Tensor, b: Tensor, dim: int | None = 0, *, groups: int = 1, eps: float = DEFAULT_EPS
) -> Tensor:
    r"""The angle, in radians, between each unit of ``a`` and the same unit of ``b``.

    .. math::
        \theta = 2 \operatorname{atan2}\big(\|\hat a - \hat b\|, \|\hat a + \hat b\|\big),
        \qquad \hat a = \frac{a}{\max(\|a\|, \epsilon)}

    (Kahan's formula: accurate for small and for nearly opposite angles alike, where
    ``acos(a.b / (|a||b|))`` loses half the digits: a step that turns a unit by 1e-4 rad gives
    a cosine within 5e-9 of 1). The angle of an update of a weight-normalized ``v`` is the angle
    its ``w`` turns by (for ``g > 0``). Computed in float32 for float16/bfloat16 inputs, else
    in their dtype; the rounding of the inputs bounds what it resolves (about 1e-7 rad in
    float32, 1e-16 in float64). A zero unit has no direction: its angle to a nonzero one is
    reported as ``pi/2``, to a zero one as ``0``.

    Args:
        a, b (Tensor): tensors of one shape.
        dim (int or None, optional): the unit dimension (see the module docstring). Default: ``0``.
        groups (int, optional): groups of a grouped transposed convolution. Default: ``1``.
        eps (float, optional): lower bound on the norms. Default: ``1e-12``.

    Returns:
        The angles in ``[0, pi]``, of shape :func:`g_shape` ``(a.shape, dim, groups)``.

    Raises:
        ValueError: ``a`` and ``b`` differ in shape.

    Example::

        >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
        >>> b = torch.tensor([[0.0, 2.0], [-3.0, 0.0], [3.0, 3.0]])
        >>> [round(x, 6) for x in angle_between(a, b).flatten().tolist()]  # pi/2, pi, 0
        [1.570796, 3.141593, 0.0]
    """
    if a.shape != b.shape:
        raise ValueError(
            f"angle_between needs two tensors of one shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if groups == 1:
        dim = normalize_dim(dim, a.ndim)
    return _angle(a, b, tuple(_reduce_dims(a.ndim, dim, groups)), groups, eps)


def _angle(a: Tensor, b: Tensor, dims: tuple[int, ...], groups: int, eps: float) -> Tensor:
    """:func:`angle_between` after validation: ``dims`` the reduced dims."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    if dtype in _LOW_PRECISION:
        dtype = torch.float32
    with torch.no_grad():
        xa = (_grouped_view(a, groups) if groups > 1 else a).to(dtype)
        xb = (_grouped_view(b, groups) if groups > 1 else b).to(dtype)
        floor = max(eps, torch.finfo(dtype).tiny)  # (a zero unit: 0/0 would be NaN)
        ua = xa / _norm(xa, dims).clamp_min(floor)
        ub = xb / _norm(xb, dims).clamp_min(floor)
        return 2 * torch.atan2(_norm(ua - ub, dims), _norm(ua + ub, dims))


# --------------------------------------------------------------------------------------------
# Choosing the implementation
# --------------------------------------------------------------------------------------------

#: The implementations of :func:`weight_norm`, as :func:`_path` names them:
#:
#: - ``"cpu-fused"``: PyTorch's fused CPU kernels (``torch._weight_norm_interface`` and its C++
#:   backward) after one ``norms.min().item()`` check that every norm is above eps (else
#:   ``"composite"``). The fastest on the CPU, where a host read costs nothing.
#: - ``"kernel"``: the custom op ``weightnorm::weight_norm`` and its backward op, eps-safe,
#:   no host synchronization: one Triton kernel each on CUDA; on the ``meta`` device their
#:   fake implementations (they allocate only), which is how the GPU path is counted here.
#: - ``"composite"``: an :class:`torch.autograd.Function` of a few eps-safe whole-tensor ops
#:   with the paper's closed-form backward (exact to every order when differentiated again);
#:   any device, any dtype, grouped transposed convolutions.
#: - ``"traced"``: plain differentiable operations, for ``torch.compile``/``torch.export``,
#:   ``torch.jit.trace`` and ``torch.func`` transforms, whose graphs need no custom op.
Path = Literal["cpu-fused", "kernel", "composite", "traced"]
PATHS: tuple[Path, ...] = ("cpu-fused", "kernel", "composite", "traced")

# None: choose; "exact": inside exact_gradients(); a Path: forced by _force_path (tests)
_SELECT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "weightnorm_select", default=None
)

_FUSED_DTYPES = (torch.float32, torch.float64)
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _path(
    v: Tensor,
    g: Tensor,
    dim: int | None,
    groups: int = 1,
    layout_fusable: bool | None = None,
) -> Path:
    """Which implementation computes ``weight_norm(v, g, dim, groups=groups)`` here.

    ``dim`` is non-negative or ``None``. ``layout_fusable`` is :func:`_fused_layout` (and a
    keep-dim ``g``) when the caller has it at hand (modules compute it once), else ``None``.
    In order: ``"traced"`` under ``torch.compile``/``torch.export``, ``torch.jit.trace`` and
    ``torch.func``; ``"composite"`` inside :func:`exact_gradients`; on the CPU ``"cpu-fused"``
    where :func:`_torch_fusable`, else ``"composite"``; on other devices ``"kernel"`` where
    :func:`_kernel_fits`, else ``"composite"``. A path forced by :func:`_force_path` wins
    after ``"traced"`` (and is checked to be able to run).
    """
    if torch.compiler.is_compiling() or _jit_tracing() or _functorch_active():
        return "traced"
    select = _SELECT.get()
    if select is not None:
        if select == "exact":
            return "composite"
        return _checked(cast(Path, select), v, g, dim, groups, layout_fusable)
    if v.device.type == "cpu":
        return "cpu-fused" if _torch_fusable(v, g, dim, groups, layout_fusable) else "composite"
    return "kernel" if _kernel_fits(v, g, dim, groups) else "composite"


def _fused_layout(ndim: int, dim: int | None, groups: int = 1) -> bool:
    """Whether PyTorch's fused weight-norm kernels fit the layout: units along the first or the
    last dim of a tensor of rank >= 2, no groups. (What ``WeightNormSpec.layout_fusable`` and
    the optimizer-level ``_Entry.fusable`` compute for themselves.)"""
    return groups == 1 and dim is not None and ndim > 1 and (dim == 0 or dim == ndim - 1)


def _torch_fusable(
    v: Tensor,
    g: Tensor,
    dim: int | None,
    groups: int = 1,
    layout_fusable: bool | None = None,
) -> bool:
    """Whether PyTorch's fused CPU kernels compute this weight norm: :func:`_fused_layout`, a
    keep-dim ``g`` of ``v``'s dtype, ``v`` a non-empty float32 or float64 CPU tensor.
    ``layout_fusable``, when given, stands for the layout (rank included) and g-shape checks
    (modules fix both when weight norm is applied)."""
    if layout_fusable is None:
        layout_fusable = _fused_layout(v.ndim, dim, groups) and tuple(g.shape) == g_shape(
            v.shape, dim
        )
    return (
        layout_fusable
        and v.dtype in _FUSED_DTYPES
        and g.dtype is v.dtype
        and v.device.type == "cpu"
        and v.numel() > 0  # torch's fused kernel dies of SIGFPE on an empty tensor
    )


def _kernel_fits(v: Tensor, g: Tensor, dim: int | None, groups: int = 1) -> bool:
    """Whether the ``weightnorm::weight_norm`` op runs its kernels for these tensors: no groups,
    one ``g`` per unit in the keep-dim shape, float16/bfloat16/float32/float64, plain tensors
    (not a subclass such as DTensor, whose ops need sharding rules), on a device with kernels
    (:func:`_kernels_run_on`)."""
    return (
        groups == 1
        and v.dtype in _KERNEL_DTYPES
        and g.dtype in _KERNEL_DTYPES
        and _plain(v)
        and _plain(g)
        and (
            (g.numel() == 1 and g.ndim <= v.ndim)
            if dim is None
            else tuple(g.shape) == g_shape(v.shape, dim)
        )
        and _kernels_run_on(v.device)
        and g.device == v.device
    )


def _plain(t: Tensor) -> bool:
    return type(t) is Tensor or type(t) is torch.nn.Parameter


def _checked(
    path: Path, v: Tensor, g: Tensor, dim: int | None, groups: int, layout: bool | None
) -> Path:
    """A forced ``path``, if it can run on these tensors; a ValueError saying why not."""
    if path == "cpu-fused" and not _torch_fusable(v, g, dim, groups, layout):
        raise ValueError(
            "path 'cpu-fused' needs a non-empty float32/float64 CPU tensor of rank >= 2 with "
            f"units along its first or last dim and a keep-dim g of its dtype; got {v.dtype} "
            f"{tuple(v.shape)} on {v.device}, dim={dim}, groups={groups}, g {g.dtype} "
            f"{tuple(g.shape)}"
        )
    if path == "kernel" and not _kernel_fits(v, g, dim, groups):
        raise ValueError(
            "path 'kernel' needs groups=1, a keep-dim g, a float16/bfloat16/float32/float64 "
            "tensor on CUDA (with Triton installed) or meta, or on the CPU with Triton's "
            "interpreter (TRITON_INTERPRET=1 set before the kernels are first built); got "
            f"{v.dtype} {tuple(v.shape)} on {v.device}, dim={dim}, groups={groups}, g "
            f"{g.dtype} {tuple(g.shape)}"
        )
    return path


@contextlib.contextmanager
def _force_path(path: Path) -> Iterator[None]:
    """Make :func:`weight_norm` (and the modules) take ``path`` inside the block, for tests.

    Raises:
        ValueError: ``path`` is not one of :data:`PATHS`; at a call, the path cannot run on
            those tensors (so that a test cannot silently check another path).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    token = _SELECT.set(path)
    try:
        yield
    finally:
        _SELECT.reset(token)


_CUDA_KERNELS: dict[int | None, bool] = {}  # device index -> Triton kernels usable there


def _kernels_run_on(device: torch.device) -> bool:
    """Whether the custom ops run their Triton kernels (or, on ``meta``, their fake
    implementations) for tensors on ``device``: CUDA with Triton importable and a GPU of
    compute capability 7.0 or more (PyTorch's own bar for Triton); the CPU only with Triton's
    interpreter (tests); ``meta`` always. Triton is imported here, at the first need."""
    kind = device.type
    if kind == "meta":
        return True
    if kind == "cuda":
        ok = _CUDA_KERNELS.get(device.index)
        if ok is None:
            ok = _CUDA_KERNELS[device.index] = (
                torch.cuda.get_device_capability(device) >= (7, 0) and _kernel_module() is not None
            )
        return ok
    if kind == "cpu":
        if not _kernels_imported and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            return False  # (not interpreting: no need to import Triton to know it)
        kernels = _kernel_module()
        return kernels is not None and bool(kernels.INTERPRETED)
    return False


_kernels_imported = False
_kernel_mod: ModuleType | None = None


def _kernel_module() -> ModuleType | None:
    """:mod:`weightnorm._kernels`, imported at the first call; ``None`` without Triton."""
    global _kernel_mod, _kernels_imported
    if not _kernels_imported:
        from . import _kernels  # (imports with AVAILABLE false where Triton is missing)

        _kernel_mod = _kernels if _kernels.AVAILABLE else None
        _kernels_imported = True
    return _kernel_mod


# --------------------------------------------------------------------------------------------
# The implementations
# --------------------------------------------------------------------------------------------


def _weight_norm_core(
    v: Tensor,
    g: Tensor,
    dim: int | None,
    eps: float,
    groups: int,
    dims: tuple[int, ...],
    layout_fusable: bool | None = None,
) -> Tensor:
    """:func:`weight_norm` after validation: ``dim`` normalized, ``dims`` the reduced dims,
    ``layout_fusable`` whether the layout suits PyTorch's fused kernels (see :func:`_path`;
    ``None``: find out). Modules call this directly with values fixed when weight norm was
    applied."""
    path = _path(v, g, dim, groups, layout_fusable)
    if path == "cpu-fused":
        # the CPU hot path: PyTorch's fused kernels with their C++ backward (no Python in the
        # backward pass), used when every norm is above eps, which the kernel reports for free
        w, norms = torch._weight_norm_interface(v, g, cast(int, dim))
        if norms.min().item() > eps:
            if w.requires_grad:
                w.register_hook(_refuse_higher_order)  # type: ignore[no-untyped-call]
            return w
        path = "composite"  # a norm at or below eps: the eps-safe form
    if path == "kernel":
        return cast(Tensor, _weight_norm_op(v, g, dim, eps)[0])
    x = _grouped_view(v, groups) if groups > 1 else v
    if path == "traced":  # plain differentiable operations: what graphs and transforms take
        w = _scaled(x, g, _norm(x, dims), eps)
    else:
        w = cast(Tensor, _WeightNormFunction.apply(x, g, dims, eps))  # type: ignore[no-untyped-call]
    return w if groups == 1 else w.reshape(v.shape)


class HigherOrderGradientError(RuntimeError):
    """A second-order gradient through one of weight norm's fused kernels was asked for."""


def _higher_order_error(what: str) -> HigherOrderGradientError:
    return HigherOrderGradientError(
        "weightnorm: a graph of the backward pass (create_graph=True, e.g. a gradient "
        f"penalty) goes through weight norm's {what}. Run the forward pass inside "
        "`with weightnorm.exact_gradients():` for exact higher-order gradients."
    )


def _refuse_higher_order(grad: Tensor) -> None:
    if torch.is_grad_enabled():  # inside backward, grad mode is on only with create_graph=True
        raise _higher_order_error(
            "fused CPU kernel, whose double backward in PyTorch is wrong (it treats the norms "
            "as constants)"
        )


@contextlib.contextmanager
def exact_gradients() -> Iterator[None]:
    """Compute weight norm so that gradients of every order are exact (slower).

    By default the fused paths (PyTorch's kernels on the CPU in float32/float64, this
    library's Triton kernels on a GPU) give exact first derivatives but no exact double
    backward; a backward pass with ``create_graph=True`` through them raises
    :class:`HigherOrderGradientError`. Inside this context the paper's closed-form backward
    (eq. 3) is used instead, and its own backward is differentiated exactly. Wrap the forward
    passes whose gradients you differentiate again (gradient penalties, meta-learning).

    Example::

        >>> v = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        >>> g = torch.ones(3, 1, dtype=torch.float64, requires_grad=True)
        >>> with exact_gradients():
        ...     w = weight_norm(v, g)
        >>> (gv,) = torch.autograd.grad(w.pow(3).sum(), v, create_graph=True)
        >>> gv.sum().backward()
    """
    token = _SELECT.set("exact")
    try:
        yield
    finally:
        _SELECT.reset(token)


# ``weightnorm::weight_norm(v, g, dim, eps) -> (w, norms)`` and its backward op. ``dim`` is
# non-negative or None; ``g`` has one element per unit; ``norms`` (unclamped, keep-dim, float32
# for half v, float64 for float64 v) is a by-product for the backward, not differentiable.


def _check_op_args(v: Tensor, g: Tensor, dim: int | None) -> None:
    if dim is not None and not 0 <= dim < v.ndim:
        raise IndexError(f"dim must be None or in [0, {v.ndim - 1}], got {dim}")
    units = 1 if dim is None else v.shape[dim]
    if g.numel() != units:
        raise ValueError(
            f"g must have one element per unit ({units} for shape {tuple(v.shape)}, dim={dim}), "
            f"got shape {tuple(g.shape)}"
        )


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("weightnorm::weight_norm", mutates_args=())
def _weight_norm_op(v: Tensor, g: Tensor, dim: int | None, eps: float) -> tuple[Tensor, Tensor]:
    """``(w, norms)``: Triton kernels where :func:`_kernels_run_on` the device, else the
    composite form."""
    _check_op_args(v, g, dim)
    if _kernels_run_on(v.device):
        kernels = cast(ModuleType, _kernel_module())
        return cast(tuple[Tensor, Tensor], kernels.weight_norm_forward(v, g, dim, eps))
    norm = _norm(v, _reduce_dims(v.ndim, dim, 1))  # (float32 for half v, else v's dtype)
    return _scaled(v, g.reshape(norm.shape), norm, eps), norm


@_weight_norm_op.register_fake
def _weight_norm_fake(v: Tensor, g: Tensor, dim: int | None, eps: float) -> tuple[Tensor, Tensor]:
    _check_op_args(v, g, dim)
    norms = v.new_empty(g_shape(v.shape, dim), dtype=_accumulator(v.dtype))
    return torch.empty_like(v), norms


@torch.library.custom_op("weightnorm::weight_norm_backward", mutates_args=())
def _weight_norm_backward_op(
    grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, dim: int | None, eps: float
) -> tuple[Tensor, Tensor]:
    """``(grad_v, grad_g)`` of ``weightnorm::weight_norm`` (paper eq. 3)."""
    _check_op_args(v, g, dim)
    if _kernels_run_on(v.device):
        kernels = cast(ModuleType, _kernel_module())
        return cast(
            tuple[Tensor, Tensor], kernels.weight_norm_backward(grad_w, v, g, norms, dim, eps)
        )
    grad_v, grad_g = closed_form_grads(
        grad_w, v, g.reshape(norms.shape), norms, _reduce_dims(v.ndim, dim, 1), eps
    )
    return grad_v, grad_g.to(g.dtype).reshape(g.shape)


@_weight_norm_backward_op.register_fake
def _weight_norm_backward_fake(
    grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, dim: int | None, eps: float
) -> tuple[Tensor, Tensor]:
    _check_op_args(v, g, dim)
    return torch.empty_like(v), torch.empty_like(g)


def _op_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    v, g, dim, eps = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # (no zero-filled gradient for the unused norms)
    ctx.save_for_backward(v, g, output[1])
    ctx.dim, ctx.eps = dim, eps


def _op_backward(
    ctx: Any, grad_w: Tensor | None, _grad_norms: Tensor | None
) -> tuple[Tensor | None, Tensor | None, None, None]:
    if torch.is_grad_enabled():  # create_graph=True
        raise _higher_order_error("Triton kernel, which does not differentiate its own backward")
    if grad_w is None:
        return None, None, None, None
    v, g, norms = ctx.saved_tensors
    grad_v, grad_g = _weight_norm_backward_op(grad_w, v, g, norms, ctx.dim, ctx.eps)
    return grad_v, grad_g, None, None


_weight_norm_op.register_autograd(_op_backward, setup_context=_op_setup)


class _WeightNormFunction(torch.autograd.Function):
    """The ``"composite"`` path: ``w = g v / max(||v||, eps)`` in four whole-tensor operations
    (norm, clamp, divide, multiply), the paper's closed-form backward (eq. 3) in eight.

    When a graph of the backward is asked for (``create_graph=True``), the backward is computed
    by differentiating the composite form, so higher derivatives are exact. (PyTorch's own fused
    double backward is wrong: it treats the saved norms as constants.)
    """

    @staticmethod
    def forward(ctx: Any, v: Tensor, g: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
        norm = _norm(v, dims)
        normc = norm.clamp_min(eps)
        scale = g / normc
        w = v * scale
        ctx.dims, ctx.eps = dims, eps
        ctx.save_for_backward(v, g, norm, normc, scale)
        return w if w.dtype == v.dtype else w.to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad_w: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        v, g, norm, normc, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composite form
            return _composite_backward(ctx, v, g, grad_w)
        grad_v, grad_g = _closed_form(grad_w, v, norm, normc, scale, ctx.dims, ctx.eps)
        return grad_v, grad_g.sum_to_size(g.shape).to(g.dtype), None, None


def closed_form_grads(
    grad_w: Tensor,
    v: Tensor,
    g: Tensor,
    norm: Tensor,
    dims: tuple[int, ...] | list[int],
    eps: float,
) -> tuple[Tensor, Tensor]:
    r"""The paper's eq. 3: ``(grad_v, grad_g)`` from ``grad_w`` for ``w = g v / max(||v||, eps)``.

    .. math::
        \nabla_g L = \frac{\nabla_w L \cdot v}{\|v\|}, \qquad
        \nabla_v L = \frac{g}{\|v\|}\Big(\nabla_w L - \frac{\nabla_w L \cdot v}{\|v\|^2} v\Big)

    ``norm`` is the unclamped per-unit norm (keep-dim shape, float32 for half ``v``); where it
    is below ``eps`` the norm's own gradient is zero. ``grad_g`` has the keep-dim shape in the
    dtype of ``norm``; ``grad_v`` the shape and dtype of ``v``.

    Example::

        >>> v, g = torch.tensor([[3.0, 4.0]]), torch.tensor([[10.0]])
        >>> norm = v.norm(dim=1, keepdim=True)
        >>> grad_v, grad_g = closed_form_grads(torch.ones(1, 2), v, g, norm, [1], 1e-12)
        >>> grad_g
        tensor([[1.4000]])
    """
    normc = norm.clamp_min(eps)
    return _closed_form(grad_w, v, norm, normc, g / normc, dims, eps)


def _closed_form(
    grad_w: Tensor,
    v: Tensor,
    norm: Tensor,
    normc: Tensor,
    scale: Tensor,
    dims: tuple[int, ...] | list[int],
    eps: float,
) -> tuple[Tensor, Tensor]:
    """:func:`closed_form_grads` given ``normc = max(norm, eps)`` and ``scale = g / normc``."""
    product = grad_w * v
    if dims:  # grad_w . v per unit
        dot = torch.sum(product, dims, keepdim=True, dtype=norm.dtype)
    else:
        dot = product if product.dtype == norm.dtype else product.to(norm.dtype)
    grad_g = dot / normc
    # dot / normc^2; zero where norm < eps (the clamped norm is a constant there)
    coef = torch.div(grad_g, normc).masked_fill_(norm < eps, 0.0)
    grad_v = torch.addcmul(grad_w, v, coef, value=-1).mul_(scale)
    return (grad_v if grad_v.dtype == v.dtype else grad_v.to(v.dtype)), grad_g


def _scaled(v: Tensor, g: Tensor, norm: Tensor, eps: float) -> Tensor:
    """``v * g / max(norm, eps)`` in the dtype of ``v`` (the norm may be float32)."""
    w = v * (g / norm.clamp_min(eps))
    return w if w.dtype == v.dtype else w.to(v.dtype)


def _norm(v: Tensor, dims: tuple[int, ...] | list[int]) -> Tensor:
    """Per-unit norms over ``dims`` (keep-dim; float32 for half ``v``). No dims: each element is
    a unit, its norm the absolute value."""
    if not dims:  # (vector_norm and sum read an empty dim list as "every dim")
        return v.abs() if v.dtype not in _LOW_PRECISION else v.abs().float()
    dtype = torch.float32 if v.dtype in _LOW_PRECISION else None
    norm: Tensor = torch.linalg.vector_norm(v, 2, dim=dims, keepdim=True, dtype=dtype)
    return norm


def _composite_backward(
    ctx: Any, v: Tensor, g: Tensor, grad_w: Tensor
) -> tuple[Tensor | None, Tensor | None, None, None]:
    wanted = [t for t, need in zip((v, g), ctx.needs_input_grad[:2], strict=True) if need]
    with torch.enable_grad():
        w = _scaled(v, g, _norm(v, ctx.dims), ctx.eps)
        grads = iter(torch.autograd.grad(w, wanted, grad_w, create_graph=True))
    grad_v = next(grads) if ctx.needs_input_grad[0] else None
    grad_g = next(grads) if ctx.needs_input_grad[1] else None
    return grad_v, grad_g, None, None


def _jit_tracing() -> bool:
    return bool(torch._C._get_tracing_state())


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def mean_only_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float = 0.1,
) -> Tensor:
    r"""Mean-only batch normalization (paper section 4): subtract the per-channel mean, add a bias.

    .. math::
        y = x - \mu[x] + b

    with :math:`\mu` the mean over the batch and every position, per channel (dimension 1). No
    division by a standard deviation. In training mode the batch mean is used and, when
    ``running_mean`` is given, it is updated in place as in :class:`torch.nn.BatchNorm1d`:
    ``running = (1 - momentum) * running + momentum * mean``. In evaluation mode
    ``running_mean`` is subtracted instead. The backward pass centres the incoming gradient:
    ``grad_x = grad_y - mean(grad_y)``.

    Args:
        x (Tensor): input of shape ``(batch, channels, *positions)``.
        running_mean (Tensor or None): running mean of shape ``(channels,)``.
        bias (Tensor or None): bias of shape ``(channels,)``.
        training (bool): use (and track) batch statistics.
        momentum (float, optional): weight of the new batch mean. Default: ``0.1``.

    Returns:
        A tensor the shape of ``x``.

    Example::

        >>> x = torch.tensor([[1.0], [3.0]])
        >>> mean_only_batch_norm(x, None, torch.tensor([0.5]), training=True)
        tensor([[-0.5000],
                [ 1.5000]])
    """
    if x.ndim < 2:
        raise ValueError(
            f"expected an input of shape (batch, channels, *positions), got shape {tuple(x.shape)}"
        )
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if training or running_mean is None:
        dims = [0, *range(2, x.ndim)]
        mean = x.mean(dim=dims, keepdim=True)
        if training and running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(mean.detach().reshape(-1).to(running_mean.dtype), momentum)
    else:
        mean = running_mean.reshape(shape)
    y = x - mean
    if bias is not None:
        y = y + bias.reshape(shape)
    return y
