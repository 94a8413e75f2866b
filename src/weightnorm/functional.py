"""Pure tensor math of weight normalization.

Nothing here knows about modules: these functions take tensors and return tensors, so they can be
used inside any model, under ``torch.func`` transforms, ``torch.compile`` and ``torch.export``.

Reference: T. Salimans and D. P. Kingma, "Weight Normalization: A Simple Reparameterization to
Accelerate Training of Deep Neural Networks", NeurIPS 2016 (arXiv:1602.07868), sections 2 and 4.

Conventions
-----------
``dim`` names the dimension that indexes the normalized *units* (one scalar ``g`` per index), as in
:func:`torch.nn.utils.parametrizations.weight_norm`: ``dim=0`` normalizes each row of a Linear
weight. ``dim=None`` normalizes the whole tensor as one vector (then ``g`` is 0-d, as torch's).
Unlike PyTorch, a negative ``dim`` counts from the end (``-1`` is the last dimension).

``groups > 1`` describes a grouped transposed convolution, whose weight has the layout
``(in_channels, out_channels // groups, *kernel)``: output channel ``j`` of group ``k`` is fed
only by the input rows of group ``k``. The weight is viewed as
``(groups, in_channels // groups, out_channels // groups, *kernel)`` and normalized per
``(group, column)``, so ``g`` has shape ``(groups, 1, out_channels // groups, 1, ...)``; flattened,
it is ordered like the output channels. :class:`WeightNormSpec` holds all of this for one weight.

How ``w`` is computed
---------------------
While a graph is being traced (``torch.compile``, ``torch.export``, ``torch.jit.trace``,
``torch.func`` transforms) or for a tensor subclass, by plain differentiable operations. Otherwise
by the kernel of the tensor's device where it computes exactly: PyTorch's fused kernels for a
contiguous float32/float64 CPU tensor whose units lie along its first or last dim and whose every
norm is above ``eps``; this library's Triton kernels on CUDA (the custom ops
``weightnorm::weight_norm`` and ``weightnorm::weight_norm_backward``, one kernel each, no host
synchronization); elsewhere by the same plain operations. Every path gives exact gradients of
every order: when a graph of the backward pass is asked for (``create_graph=True``), it is built
from the plain form.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import partial
from types import ModuleType
from typing import Any, Literal, cast

import torch
from torch import Tensor

from . import _torch_compat as compat
from ._errors import WeightNormError

__all__ = [
    "DEFAULT_EPS",
    "FORCED_NORMS",
    "ForcedNorm",
    "WeightNormSpec",
    "angle_between",
    "check_forced_norm",
    "closed_form_grads",
    "dim_of_g",
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

#: Dtypes whose norms are accumulated, and whose ``g`` is kept, in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def check_eps(eps: float) -> float:
    """``eps`` as a float; WeightNormError (a ValueError) unless it is ``>= 0``."""
    if not eps >= 0:
        raise WeightNormError(f"eps must be >= 0, got {eps!r}")
    return float(eps)


def check_gain(gain: object) -> float | None:
    """``gain`` as a float (or ``None``); TypeError/WeightNormError unless positive and finite."""
    if gain is None:
        return None
    expected = "None (a learned g) or a positive finite number (a fixed gain)"
    if isinstance(gain, bool) or not isinstance(gain, (int, float)):
        raise TypeError(f"gain must be {expected}, got {type(gain).__name__} {gain!r}")
    if not (math.isfinite(gain) and gain > 0):
        raise WeightNormError(f"gain must be {expected}, got {gain!r}")
    return float(gain)


@dataclass(frozen=True)
class WeightNormSpec:
    """How one weight is normalized: ``w = g v / max(||v||, eps)`` per unit.

    ``shape`` is the weight's; ``dim`` the unit dim (normalized on construction: non-negative,
    or ``None`` for the whole tensor); ``groups > 1`` a grouped transposed convolution (see the
    module docstring); ``gain`` a fixed gain (``g`` held at that value, not trained) or ``None``.
    What follows from them is computed once: :attr:`view_shape` (how ``v`` is viewed so that
    units lie along kept dims), :attr:`reduce_dims` (the dims of that view each norm sums
    over) and :attr:`g_shape` (torch's keep-dim shape of ``g``, 0-d for the whole tensor).

    Raises:
        IndexError, TypeError: a ``dim`` out of range or of the wrong type.
        WeightNormError (a ValueError): ``groups`` that do not divide the first dim, a negative
            ``eps``, a ``gain`` that is not positive and finite.

    Example::

        >>> spec = WeightNormSpec((8, 3, 5), dim=-1)
        >>> spec.dim, spec.g_shape, spec.reduce_dims, spec.unit_size
        (2, (1, 1, 5), (0, 1), 24)
        >>> WeightNormSpec((6, 4, 3), dim=1, groups=2).g_shape
        (2, 1, 4, 1)
    """

    shape: tuple[int, ...]
    dim: int | None = 0
    groups: int = 1
    eps: float = DEFAULT_EPS
    gain: float | None = None
    view_shape: tuple[int, ...] = field(init=False, repr=False, compare=False)
    reduce_dims: tuple[int, ...] = field(init=False, repr=False, compare=False)
    g_shape: tuple[int, ...] = field(init=False, repr=False, compare=False)
    #: whether PyTorch's fused kernels handle the layout: units along the first or the last dim
    #: of a tensor of rank >= 2, no groups
    fused_layout: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        groups, dim = self.groups, self.dim
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise WeightNormError(f"groups must be an int >= 1, got {groups!r}")
        if groups == 1:
            dim = normalize_dim(dim, len(shape))
            view, kept = shape, set() if dim is None else {dim}
        else:
            dim = 1 if dim is None else normalize_dim(dim, len(shape))
            if len(shape) < 2 or shape[0] % groups != 0 or dim == 0:
                raise WeightNormError(
                    f"groups={groups} needs a weight of rank >= 2 whose first dimension is "
                    f"divisible by groups, normalized along a later dim; got shape {shape}, "
                    f"dim={dim}"
                )
            view = (groups, shape[0] // groups, *shape[1:])
            kept = {0, cast(int, dim) + 1}
        g = () if not kept else tuple(s if d in kept else 1 for d, s in enumerate(view))
        for name, value in (
            ("shape", shape), ("dim", dim), ("eps", check_eps(self.eps)),
            ("gain", check_gain(self.gain)), ("view_shape", view), ("g_shape", g),
            ("reduce_dims", tuple(d for d in range(len(view)) if d not in kept)),
            ("fused_layout", groups == 1 and len(shape) > 1 and dim in (0, len(shape) - 1)),
        ):  # fmt: skip
            object.__setattr__(self, name, value)

    @property
    def units(self) -> int:
        """The number of units (one ``g`` each)."""
        return math.prod(self.g_shape)

    @property
    def unit_size(self) -> int:
        """The number of elements of each unit (the fan-in of an output unit)."""
        return math.prod(self.shape) // self.units if self.units else 0

    def view(self, t: Tensor) -> Tensor:
        """``t`` (the shape of the weight) viewed so that :attr:`reduce_dims` are its units'."""
        return t if self.groups == 1 else t.reshape(self.view_shape)

    def norms(self, v: Tensor) -> Tensor:
        """``||v||`` of every unit, in the keep-dim shape of the view (float32 for half ``v``)."""
        return _norm(self.view(v), self.reduce_dims)

    def split(self, w: Tensor) -> Tensor:
        """``g = ||w||`` per unit in :attr:`g_shape` (what makes ``weight(w, g) == w``)."""
        return self.norms(w).reshape(self.g_shape)

    def weight(self, v: Tensor, g: Tensor) -> Tensor:
        """``w = g v / max(||v||, eps)``: :func:`weight_norm` for tensors of this spec."""
        return weight_and_norms(v, g, self)[0]


def g_shape(
    weight_shape: torch.Size | tuple[int, ...], dim: int | None, groups: int = 1
) -> tuple[int, ...]:
    """Shape of ``g`` for a weight of ``weight_shape`` normalized over units along ``dim``.

    Example::

        >>> g_shape((8, 3, 5), dim=0), g_shape((8, 3, 5), dim=None)
        ((8, 1, 1), ())
        >>> g_shape((6, 4, 3), dim=1, groups=2)
        (2, 1, 4, 1)
    """
    return WeightNormSpec(tuple(weight_shape), dim, groups).g_shape


def dim_of_g(
    g_shape_: torch.Size | tuple[int, ...], weight_shape: torch.Size | tuple[int, ...]
) -> int | Literal[False] | None:
    """The unit dim for which ``g_shape_`` is the keep-dim shape of ``g``; ``False`` if none.

    Another single-element g means the whole tensor (``None``); a keep-dim one of a single unit
    (torch's ``(1, 1, 1)`` of a one-channel conv, ``dim=0``) keeps its dim.

    Example::

        >>> dim_of_g((1, 6, 1), (4, 6, 3)), dim_of_g((), (4, 6)), dim_of_g((2, 2), (4, 6))
        (1, None, False)
        >>> dim_of_g((1, 1, 1), (1, 6, 3)), dim_of_g((1, 1), (4, 6))
        (0, None)
    """
    for d in range(len(weight_shape)):
        if tuple(g_shape_) == g_shape(weight_shape, d):
            return d
    return None if math.prod(g_shape_) == 1 else False


def norm_except_dim(v: Tensor, dim: int | None = 0, *, groups: int = 1) -> Tensor:
    """Compute the Euclidean norm of every unit of ``v``, in the shape of ``g``.

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
    return WeightNormSpec(tuple(v.shape), dim, groups).split(v)


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
    return WeightNormSpec(tuple(shape), dim, groups).unit_size


def weight_norm(
    v: Tensor, g: Tensor, dim: int | None = 0, eps: float = DEFAULT_EPS, *, groups: int = 1
) -> Tensor:
    r"""Compute the weight-normalized tensor ``w = g * v / ||v||``.

    .. math::
        \mathbf{w} = \frac{g}{\max(\|\mathbf{v}\|, \epsilon)}\,\mathbf{v}

    one scalar :math:`g` per unit, so :math:`\|\mathbf{w}\| = |g|` whatever :math:`\mathbf{v}` is
    (paper eq. 2). Gradients of every order are exact and the first follow paper eq. 3; a zero
    ``v`` gives ``w = 0`` and finite gradients. Any layout of ``v`` and ``g`` (channels-last,
    transposed, sliced, expanded) gives the same values. Norms are computed in float32 for
    float16/bfloat16 ``v``; the result has the dtype of ``v``. See the module docstring for the
    kernels that compute it.

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

    Raises:
        IndexError, TypeError, ValueError: see :class:`WeightNormSpec`.

    Example::

        >>> v = torch.tensor([[3.0, 4.0]])
        >>> weight_norm(v, torch.tensor([[10.0]]), dim=0)
        tensor([[6., 8.]])
    """
    return WeightNormSpec(tuple(v.shape), dim, groups, eps).weight(v, g)


# --------------------------------------------------------------------------------------------
# The kernels, and the one dispatch among them
# --------------------------------------------------------------------------------------------


def _norm(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-unit norms of ``x`` over ``dims``, keep-dim (float32 for half ``x``). No dims: each
    element is a unit, its norm the absolute value."""
    dtype = torch.float32 if x.dtype in LOW_PRECISION else None
    if not dims:  # (vector_norm reads an empty dim list as "every dim")
        return x.abs() if dtype is None else x.abs().to(dtype)
    return cast(Tensor, torch.linalg.vector_norm(x, 2, dim=dims, keepdim=True, dtype=dtype))


class _Plain:
    """``w = v * (g / max(||v||, eps))`` in plain differentiable operations: any device, dtype,
    layout and transform; exact to every order by autograd. Its first-order backward, for the
    optimizer-level mode, is the paper's closed form (eq. 3)."""

    name = "plain"

    def fits(self, v: Tensor, g: Tensor, spec: WeightNormSpec) -> bool:
        return True

    def forward(self, v: Tensor, g: Tensor, spec: WeightNormSpec) -> tuple[Tensor, Tensor]:
        x = spec.view(v)
        norm = _norm(x, spec.reduce_dims)
        if x.dtype is torch.float16 and x.requires_grad:  # (finite gradients through a zero unit)
            x = cast(Tensor, _FiniteGradient.apply(x))  # type: ignore[no-untyped-call]
        scale = g / norm.clamp_min(spec.eps)
        if not compat.jit_tracing() and scale.shape != norm.shape:  # (its shapes are tensors)
            raise WeightNormError(
                f"g of shape {tuple(g.shape)} does not broadcast to one value per unit: expected "
                f"shape {spec.g_shape} for a weight of shape {spec.shape} with dim={spec.dim}"
                + (f", groups={spec.groups}" if spec.groups > 1 else "")
            )
        w = x * scale
        w = w if w.dtype == v.dtype else w.to(v.dtype)
        w = w if spec.groups == 1 else w.reshape(v.shape)
        return w, norm

    def backward(
        self, grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, spec: WeightNormSpec
    ) -> tuple[Tensor, Tensor]:
        x, gw = spec.view(v), spec.view(grad_w)
        gv, gg = closed_form_grads(gw, x, g.reshape(norms.shape), norms, spec.reduce_dims, spec.eps)
        return gv.reshape(v.shape), gg.reshape(g.shape).to(g.dtype)


class _TorchFused:
    """PyTorch's fused CPU kernels (``torch._weight_norm_interface`` and its C++ backward, one
    pass each): for contiguous float32/float64 tensors in :attr:`WeightNormSpec.fused_layout`
    with a keep-dim ``g`` of the same dtype. They divide by the unclamped norm, so
    :meth:`forward` gives ``None`` unless every norm is above ``eps`` (one host read, free on
    the CPU). PyTorch's double backward of them is wrong (it treats the norms as constants):
    a hook on the autograd node replaces its output by that of the plain form when a graph of
    the backward is asked for."""

    name = "torch-fused"

    def fits(self, v: Tensor, g: Tensor, spec: WeightNormSpec) -> bool:
        return (
            spec.fused_layout
            and v.dtype in (torch.float32, torch.float64)
            and g.dtype is v.dtype
            and v.is_contiguous()
            and g.is_contiguous()
            and g.shape == spec.g_shape
            and v.numel() > 0  # (the kernel dies of SIGFPE on an empty tensor)
        )

    def forward(self, v: Tensor, g: Tensor, spec: WeightNormSpec) -> tuple[Tensor, Tensor] | None:
        w, norms = compat.fused_weight_norm(v, g, cast(int, spec.dim))
        if not norms.min().item() > spec.eps:
            return None
        if w.grad_fn is not None:
            w.grad_fn.register_hook(partial(_exact_double_backward, v, g, spec))
        return w, norms

    def backward(
        self, grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, spec: WeightNormSpec
    ) -> tuple[Tensor, Tensor]:
        return compat.fused_weight_norm_backward(grad_w, v, g, norms, cast(int, spec.dim))


class _Triton:
    """This library's Triton kernels, behind the custom ops ``weightnorm::weight_norm`` and
    ``weightnorm::weight_norm_backward``: eps-safe, one launch each, no host sync; for plain
    float tensors with a keep-dim ``g`` and no groups, on a CUDA GPU of compute capability 7.0
    or more with Triton installed. On the ``meta`` device their fake implementations run (how
    the GPU path is counted without a GPU)."""

    name = "triton"

    def fits(self, v: Tensor, g: Tensor, spec: WeightNormSpec) -> bool:
        return (
            spec.groups == 1
            and v.dtype in _TRITON_DTYPES
            and g.dtype in _TRITON_DTYPES
            and g.shape == spec.g_shape
            and g.device == v.device
            and _triton_runs_on(v.device)
        )

    def forward(self, v: Tensor, g: Tensor, spec: WeightNormSpec) -> tuple[Tensor, Tensor]:
        return cast(tuple[Tensor, Tensor], _weight_norm_op(v, g, spec.dim, spec.eps))

    def backward(
        self, grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, spec: WeightNormSpec
    ) -> tuple[Tensor, Tensor]:
        return cast(
            tuple[Tensor, Tensor],
            _weight_norm_backward_op(grad_w, v, g, norms, spec.dim, spec.eps),
        )


def _exact_double_backward(
    v: Tensor, g: Tensor, spec: WeightNormSpec, grad_inputs: Any, grad_outputs: Any
) -> tuple[Tensor | None, ...] | None:
    """The post hook on the fused kernel's autograd node, whose double backward PyTorch gets
    wrong: when a graph of the backward is built, its output is replaced by the plain form's."""
    # grad mode is on in the backward pass only when it builds a graph (create_graph=True)
    if not torch.is_grad_enabled() or grad_outputs[0] is None:
        return None
    needed = (grad_inputs[0] is not None, grad_inputs[1] is not None)
    return _exact_grads(v, g, spec, grad_outputs[0], needed)


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PLAIN, TORCH_FUSED, TRITON = _Plain(), _TorchFused(), _Triton()
Kernel = _Plain | _TorchFused | _Triton
#: The kernel of each device type; a device without one, or a tensor it does not fit, gets PLAIN.
KERNELS: dict[str, Kernel] = {"cpu": TORCH_FUSED, "cuda": TRITON, "meta": TRITON}


def kernel_for(v: Tensor, g: Tensor, spec: WeightNormSpec, captured: bool | None = None) -> Kernel:
    """The kernel that computes ``spec.weight(v, g)`` here: PLAIN while a graph is being
    captured (``captured``: :func:`weightnorm._torch_compat.capturing`, asked when ``None``) or
    for a tensor subclass, else the device's kernel where it fits, else PLAIN."""
    if captured or (captured is None and compat.capturing()) or type(v) not in compat.PLAIN:
        return PLAIN
    kernel = KERNELS.get(v.device.type, PLAIN)
    return kernel if kernel.fits(v, g, spec) else PLAIN


def weight_and_norms(
    v: Tensor,
    g: Tensor,
    spec: WeightNormSpec,
    captured: bool | None = None,
) -> tuple[Tensor, Tensor, Kernel]:
    """``(w, norms, kernel)``: the weight by the one dispatch (:func:`kernel_for`), the
    unclamped norms of ``v`` (keep-dim), and the kernel that computed them, whose ``backward``
    takes those norms."""
    kernel = kernel_for(v, g, spec, captured)
    out = kernel.forward(v, g, spec)
    if out is None:  # (a norm at or below eps: the fused kernel would divide by it)
        kernel, out = PLAIN, PLAIN.forward(v, g, spec)
    return out[0], out[1], kernel


def _exact_grads(
    v: Tensor, g: Tensor, spec: WeightNormSpec, grad_w: Tensor, needed: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """``(grad_v, grad_g)`` (those ``needed``) as differentiable functions of ``v``, ``g`` and
    ``grad_w``: the derivative of the plain form, built into the graph (so every higher order
    is exact)."""
    with torch.enable_grad():
        w = PLAIN.forward(v, g, spec)[0]
        wanted = [t for t, need in zip((v, g), needed, strict=True) if need]
        grads = iter(torch.autograd.grad(w, wanted, grad_w, create_graph=True))
    return tuple(next(grads) if need else None for need in needed)  # type: ignore[return-value]


# ``weightnorm::weight_norm(v, g, dim, eps) -> (w, norms)`` and its backward op. ``dim`` is
# non-negative or None; ``g`` has the keep-dim shape; ``norms`` (unclamped, keep-dim, float32
# for half v, float64 for float64 v) is a by-product for the backward, not differentiable.
# The schema is explicit: older torch cannot read this module's string annotations.


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op(
    "weightnorm::weight_norm",
    mutates_args=(),
    schema="(Tensor v, Tensor g, int? dim, float eps) -> (Tensor, Tensor)",
)
def _weight_norm_op(v: Tensor, g: Tensor, dim: int | None, eps: float) -> tuple[Tensor, Tensor]:
    return cast(tuple[Tensor, Tensor], _triton().weight_norm_forward(v, g, dim, eps))


@_weight_norm_op.register_fake
def _(v: Tensor, g: Tensor, dim: int | None, eps: float) -> tuple[Tensor, Tensor]:
    keepdim = tuple(s if d == dim else 1 for d, s in enumerate(v.shape))
    return torch.empty_like(v), v.new_empty(keepdim, dtype=_accumulator(v.dtype))


@torch.library.custom_op(
    "weightnorm::weight_norm_backward",
    mutates_args=(),
    schema="(Tensor grad_w, Tensor v, Tensor g, Tensor norms, int? dim, float eps) -> "
    "(Tensor, Tensor)",
)
def _weight_norm_backward_op(
    grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, dim: int | None, eps: float
) -> tuple[Tensor, Tensor]:
    return cast(
        tuple[Tensor, Tensor], _triton().weight_norm_backward(grad_w, v, g, norms, dim, eps)
    )


@_weight_norm_backward_op.register_fake
def _(
    grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, dim: int | None, eps: float
) -> tuple[Tensor, Tensor]:
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
    if grad_w is None:
        return None, None, None, None
    v, g, norms = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the exact graph of the plain form
        spec = WeightNormSpec(tuple(v.shape), ctx.dim, 1, ctx.eps)
        return (*_exact_grads(v, g, spec, grad_w, tuple(ctx.needs_input_grad[:2])), None, None)
    grad_v, grad_g = _weight_norm_backward_op(grad_w, v, g, norms, ctx.dim, ctx.eps)
    return grad_v, grad_g, None, None


_weight_norm_op.register_autograd(_op_backward, setup_context=_op_setup)

_triton_module: ModuleType | None = None
_TRITON_ON: dict[tuple[str, int | None], bool] = {}  # (device type, index) -> kernels run there


def _triton() -> ModuleType:
    """:mod:`weightnorm._kernels`, imported at the first need (it imports Triton)."""
    global _triton_module
    if _triton_module is None:
        from . import _kernels

        _triton_module = _kernels
    return _triton_module


def _triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels (or, on ``meta``, the ops' fake implementations) run for
    tensors on ``device``: ``meta`` always; CUDA with Triton importable and compute capability
    7.0 or more (PyTorch's own bar for Triton); the CPU only under Triton's interpreter
    (``TRITON_INTERPRET=1``, for tests)."""
    key = (device.type, device.index)
    ok = _TRITON_ON.get(key)
    if ok is None:
        if device.type == "meta":
            ok = True
        elif device.type == "cuda":
            ok = torch.cuda.get_device_capability(device) >= (7, 0) and _triton().AVAILABLE
        else:
            interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
            ok = device.type == "cpu" and interpreting and _triton().AVAILABLE
        _TRITON_ON[key] = ok
    return ok


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
    product = grad_w * v
    if dims:  # grad_w . v per unit
        dot = torch.sum(product, tuple(dims), keepdim=True, dtype=norm.dtype)
    else:
        dot = product.to(norm.dtype)
    grad_g = dot / normc
    # dot / normc^2; zero where norm < eps (the clamped norm is a constant there)
    coef = torch.div(grad_g, normc).masked_fill_(norm < eps, 0.0)
    grad_v = torch.addcmul(grad_w, v, coef, value=-1).mul_(g / normc)
    return _finite_in(v.dtype, grad_v), grad_g


def _finite_in(dtype: torch.dtype, t: Tensor) -> Tensor:
    """``t`` in ``dtype``, clamped to its finite range: a gradient through a zero unit of a
    float16 ``v`` is ``g/eps`` times larger than ``grad_w``, beyond float16's 65504."""
    if dtype is torch.float16 and t.dtype is not dtype:
        big = torch.finfo(dtype).max
        t = t.clamp(-big, big)
    return t.to(dtype)


class _FiniteGradient(torch.autograd.Function):
    """``x.float()`` whose backward gives a gradient clamped to the finite range of ``x``'s
    dtype (see :func:`_finite_in`); differentiable again, for higher orders, and usable under
    ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x.float()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.dtype = inputs[0].dtype

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _finite_in(ctx.dtype, grad)

    @staticmethod
    def jvp(ctx: Any, tangent: Tensor) -> Tensor:
        return tangent.float()


# --------------------------------------------------------------------------------------------
# Beyond the paper: forced weight normalization, and the angle of a step
# --------------------------------------------------------------------------------------------

#: The fixed norm of forced weight normalization (:func:`renormalize_`): a positive finite
#: number, or ``"sqrt_fan_in"``, the square root of the number of elements of each unit (EDM2's
#: choice, see :func:`forced_norm`).
ForcedNorm = float | Literal["sqrt_fan_in"]
FORCED_NORMS: tuple[str, ...] = ("sqrt_fan_in",)


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
    expected = f"a positive finite number or one of {FORCED_NORMS}"
    if isinstance(norm, str):
        if norm not in FORCED_NORMS:
            raise ValueError(f"norm must be {expected}, got {norm!r}")
    elif isinstance(norm, bool) or not isinstance(norm, (int, float)):
        raise TypeError(f"norm must be {expected}, got {type(norm).__name__} {norm!r}")
    elif not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"norm must be {expected}, got {norm!r}")


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
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    spec = WeightNormSpec(tuple(v.shape), dim, groups, eps)
    _renormalize(v, forced_norm(norm, v.shape, spec.dim, groups=groups), spec, rtol)
    return v


def _renormalize(v: Tensor, target: float, spec: WeightNormSpec, rtol: float = 0.0) -> None:
    """:func:`renormalize_` after validation, ``target`` a number."""
    with torch.no_grad():
        x = spec.view(v)
        current = _norm(x, spec.reduce_dims)  # (float32 for half v)
        # (a floor above 0 even for eps=0: a zero unit times c/0 would be NaN, not zero)
        floor = max(spec.eps, torch.finfo(current.dtype).tiny)
        scale = torch.div(target, current.clamp_min(floor))
        if rtol > 0:  # units already at the target keep their bits
            scale = torch.where((current - target).abs() <= rtol * target, 1.0, scale)
        if spec.groups == 1:
            v.mul_(scale)
        else:  # (the grouped view may be a copy)
            v.copy_((x * scale).reshape(v.shape))


def force(targets: list[tuple[Tensor, WeightNormSpec, float]], settled: bool = False) -> None:
    """Forced weight normalization of every ``(v, spec, norm)``: each unit of ``v`` to ``norm``
    (with ``settled``, as when forcing starts, units already there within rounding keep their
    bits: :func:`settled_rtol`). The one implementation behind
    :func:`weightnorm.force_weight_norm` and ``WeightNormOptimizer(forced=...)``."""
    for v, spec, norm in targets:
        _renormalize(v, norm, spec, settled_rtol(v.dtype) if settled else 0.0)


def settled_rtol(dtype: torch.dtype) -> float:
    """How close to its fixed norm a unit of ``dtype`` counts as already there when forcing
    starts: well above the rounding one renormalization leaves (measured here up to ~9 float32
    ulps for units of 1e5 elements), so that starting to force weights loaded from a forced run
    leaves them bit for bit, and a resumed run continues exactly. (After each step every unit
    is rescaled, without a tolerance.)"""
    if dtype == torch.float64:
        return 1e-12
    return 1e-2 if dtype in LOW_PRECISION else 1e-5


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
    return angle(a, b, WeightNormSpec(tuple(a.shape), dim, groups, eps))


def angle(a: Tensor, b: Tensor, spec: WeightNormSpec) -> Tensor:
    """:func:`angle_between` for tensors of ``spec``'s shape."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = torch.float32 if dtype in LOW_PRECISION else dtype
    dims = spec.reduce_dims
    with torch.no_grad():
        xa, xb = spec.view(a).to(dtype), spec.view(b).to(dtype)
        floor = max(spec.eps, torch.finfo(dtype).tiny)  # (a zero unit: 0/0 would be NaN)
        ua = xa / _norm(xa, dims).clamp_min(floor)
        ub = xb / _norm(xb, dims).clamp_min(floor)
        return (2 * torch.atan2(_norm(ua - ub, dims), _norm(ua + ub, dims))).reshape(spec.g_shape)


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
        mean = x.mean(dim=[0, *range(2, x.ndim)], keepdim=True)
        if training and running_mean is not None:
            with torch.no_grad():
                running_mean.lerp_(mean.detach().reshape(-1).to(running_mean.dtype), momentum)
    else:
        mean = running_mean.reshape(shape)
    y = x - mean
    return y if bias is None else y + bias.reshape(shape)
