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
from collections.abc import Iterator
from typing import Any, Literal, cast

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_EPS",
    "HigherOrderGradientError",
    "closed_form_grads",
    "dim_of_g",
    "exact_gradients",
    "g_shape",
    "mean_only_batch_norm",
    "norm_except_dim",
    "normalize_dim",
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
    dims = _reduce_dims(v.ndim, dim, groups)
    if not dims:  # a 1-D weight normalized per element: the norm is the absolute value
        return x.abs() if v.dtype not in _LOW_PRECISION else x.abs().float()
    return _norm(x, dims)


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
    dims = tuple(_reduce_dims(v.ndim, dim, groups))
    layout_fusable = (
        groups == 1
        and dim is not None
        and (dim == 0 or dim == v.ndim - 1)
        and tuple(g.shape) == g_shape(v.shape, dim)
    )
    return _weight_norm_core(v, g, dim, eps, groups, dims, layout_fusable)


def _weight_norm_core(
    v: Tensor,
    g: Tensor,
    dim: int | None,
    eps: float,
    groups: int,
    dims: tuple[int, ...],
    layout_fusable: bool,
) -> Tensor:
    """:func:`weight_norm` after validation: ``dim`` normalized, ``dims`` the reduced dims,
    ``layout_fusable`` whether the layout suits the fused kernels (groups 1, dim first or last,
    keep-dim g). Modules call this directly with values fixed when weight norm was applied."""
    if not dims or torch.compiler.is_compiling() or _jit_tracing() or _functorch_active():
        # traced graphs and torch.func transforms get plain differentiable operations
        return _weight_norm_composite(v, g, dim, eps, groups)
    dtype = v.dtype
    fused = (
        layout_fusable
        and (dtype is torch.float32 or dtype is torch.float64)
        and g.dtype is dtype
        and v.device.type == "cpu"
        and v.numel() > 0  # torch's fused kernel dies of SIGFPE on an empty tensor
    )
    if groups > 1:
        w = _WeightNormFunction.apply(_grouped_view(v, groups), g, dims, None, eps)  # type: ignore[no-untyped-call]
        return cast(Tensor, w.reshape(v.shape))
    if fused and not _EXACT.get():
        # the hot path: PyTorch's fused kernels with their C++ backward (no Python in the
        # backward pass), used when every norm is above eps, which the kernel reports for free
        w, norms = torch._weight_norm_interface(v, g, dim)  # type: ignore[arg-type]
        if norms.min().item() > eps:
            if w.requires_grad:
                w.register_hook(_refuse_higher_order)  # type: ignore[no-untyped-call]
            return w
    return cast(Tensor, _WeightNormFunction.apply(v, g, dims, dim if fused else None, eps))  # type: ignore[no-untyped-call]


_EXACT: contextvars.ContextVar[bool] = contextvars.ContextVar("weightnorm_exact", default=False)


class HigherOrderGradientError(RuntimeError):
    """A second-order gradient through the fused weight-norm kernel was asked for."""


def _refuse_higher_order(grad: Tensor) -> None:
    if torch.is_grad_enabled():  # inside backward, grad mode is on only with create_graph=True
        raise HigherOrderGradientError(
            "weightnorm: a graph of the backward pass (create_graph=True, e.g. a gradient "
            "penalty) goes through weight norm's fused kernel, whose double backward in PyTorch "
            "is wrong (it treats the norms as constants). Run the forward pass inside "
            "`with weightnorm.exact_gradients():` for exact higher-order gradients."
        )


@contextlib.contextmanager
def exact_gradients() -> Iterator[None]:
    """Compute weight norm so that gradients of every order are exact (slower on the CPU).

    By default the CPU float32/float64 path uses PyTorch's fused kernels, whose first
    derivatives are exact but whose double backward is not; a backward pass with
    ``create_graph=True`` through them raises :class:`HigherOrderGradientError`. Inside this
    context the paper's closed-form backward (eq. 3) is used instead, and its own backward is
    differentiated exactly. Wrap the forward passes whose gradients you differentiate again
    (gradient penalties, meta-learning).

    Example::

        >>> v = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
        >>> g = torch.ones(3, 1, dtype=torch.float64, requires_grad=True)
        >>> with exact_gradients():
        ...     w = weight_norm(v, g)
        >>> (gv,) = torch.autograd.grad(w.pow(3).sum(), v, create_graph=True)
        >>> gv.sum().backward()
    """
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


class _WeightNormFunction(torch.autograd.Function):
    """``w = g v / max(||v||, eps)`` with the paper's closed-form backward (eq. 3).

    On the CPU, in float32/float64, along the first or last dim, the forward and backward run
    PyTorch's fused kernels (one pass each) whenever every norm is above ``eps``; they are
    checked in the forward, where the fused kernel reports the norms for free. Otherwise a few
    whole-tensor operations compute the same closed form with the norm clamped at ``eps``.

    When a graph of the backward is asked for (``create_graph=True``), the backward is computed
    by differentiating the composite form, so higher derivatives are exact. (PyTorch's own fused
    double backward is wrong: it treats the saved norms as constants.)
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        v: Tensor,
        g: Tensor,
        dims: tuple[int, ...],
        fused_dim: int | None,
        eps: float,
    ) -> Tensor:
        ctx.dims, ctx.eps, ctx.fused_dim = dims, eps, None
        if fused_dim is not None:
            w, norms = torch.ops.aten._weight_norm_interface(v, g, fused_dim)
            if norms.min().item() > eps:
                ctx.fused_dim = fused_dim
                ctx.save_for_backward(v, g, norms)
                return cast(Tensor, w)
        norm = _norm(v, dims)
        ctx.save_for_backward(v, g, norm)
        return _scaled(v, g, norm, eps)

    @staticmethod
    def backward(ctx: Any, grad_w: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:  # type: ignore[override]
        v, g, norm = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the composite form
            return _composite_backward(ctx, v, g, grad_w)
        if ctx.fused_dim is not None:
            grad_v, grad_g = torch.ops.aten._weight_norm_interface_backward(
                grad_w.contiguous(), v, g, norm, ctx.fused_dim
            )
            return grad_v, grad_g, None, None, None
        grad_v, grad_g = closed_form_grads(grad_w, v, g, norm, ctx.dims, ctx.eps)
        return grad_v, grad_g.sum_to_size(g.shape).to(g.dtype), None, None, None


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
    dot = torch.sum(grad_w * v, dims, keepdim=True, dtype=norm.dtype)  # grad_w . v per unit
    coef = torch.where(norm >= eps, dot / (normc * normc), 0.0)
    grad_v = torch.addcmul(grad_w, v, coef, value=-1).mul_(g / normc)
    return grad_v.to(v.dtype), dot / normc


def _scaled(v: Tensor, g: Tensor, norm: Tensor, eps: float) -> Tensor:
    """``v * g / max(norm, eps)`` in the dtype of ``v`` (the norm may be float32)."""
    w = v * (g / norm.clamp_min(eps))
    return w if w.dtype == v.dtype else w.to(v.dtype)


def _norm(v: Tensor, dims: tuple[int, ...] | list[int]) -> Tensor:
    dtype = torch.float32 if v.dtype in _LOW_PRECISION else None
    norm: Tensor = torch.linalg.vector_norm(v, 2, dim=dims, keepdim=True, dtype=dtype)
    return norm


def _composite_backward(
    ctx: Any, v: Tensor, g: Tensor, grad_w: Tensor
) -> tuple[Tensor | None, Tensor | None, None, None, None]:
    wanted = [t for t, need in zip((v, g), ctx.needs_input_grad[:2], strict=True) if need]
    with torch.enable_grad():
        w = _scaled(v, g, _norm(v, ctx.dims), ctx.eps)
        grads = iter(torch.autograd.grad(w, wanted, grad_w, create_graph=True))
    grad_v = next(grads) if ctx.needs_input_grad[0] else None
    grad_g = next(grads) if ctx.needs_input_grad[1] else None
    return grad_v, grad_g, None, None, None


def _jit_tracing() -> bool:
    return bool(torch._C._get_tracing_state())


def _functorch_active() -> bool:
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _weight_norm_composite(
    v: Tensor, g: Tensor, dim: int | None, eps: float, groups: int
) -> Tensor:
    x = _grouped_view(v, groups) if groups > 1 else v
    return _scaled(x, g, norm_except_dim(v, dim, groups=groups), eps).reshape(v.shape)


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
