"""Triton kernels of the ``weightnorm::weight_norm`` custom ops (see :mod:`weightnorm.functional`).

Imported lazily, the first time a tensor on a device that runs them needs them; importing this
module imports Triton, and without Triton it imports with :data:`AVAILABLE` false (and nothing
to run). One launch computes the forward (per-unit norm and scaling: writes ``w``
and the norms), one launch the backward (per-unit ``dot(grad_w, v)``, then ``grad_g`` and
``grad_v``); nothing else runs but the allocation of their outputs.

Layout. A dense tensor (contiguous, or contiguous after a permutation of its dims, as a
channels-last weight is) is addressed as ``(A, U, B)`` in memory order, ``U`` the unit dim:
element ``r`` of unit ``u`` (``r = a * B + b``) lies at offset ``a * U * B + u * B + b``. The
whole tensor (``dim=None``) is one unit. Each program handles a tile of ``BLOCK_U`` units and
walks their ``N = A * B`` elements ``BLOCK_R`` at a time, twice (a reduction, then the
elementwise pass); norms and dot products are accumulated in float32 (float64 for float64 data).

Under ``TRITON_INTERPRET=1`` (set before this module is first imported) :func:`triton.jit`
gives interpreted kernels, which run on CPU tensors: that is how the tests check them on a
machine without a GPU. :data:`INTERPRETED` records which kind was built.
"""

import contextlib
import functools
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # (then functional never calls in here)
    triton = None

    class tl:  # type: ignore[no-redef]  # (what the kernels' annotations name)
        constexpr = object


__all__ = ["AVAILABLE", "INTERPRETED", "weight_norm_backward", "weight_norm_forward"]

#: Whether Triton is installed: without it this module defines nothing that runs.
AVAILABLE: bool = triton is not None

#: Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` at import):
#: then they run on CPU tensors (slowly: for tests), otherwise they are compiled for a GPU.
INTERPRETED: bool = AVAILABLE and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _jit(fn: Callable[..., Any]) -> Any:
    """``triton.jit`` (the plain function, never called, without Triton)."""
    return fn if triton is None else triton.jit(fn)


_MAX_TILE = 2048  # elements per program and loop step (registers: 16 per thread at 4 warps)


@_jit
def _tile(U, BIG: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_R: tl.constexpr):  # type: ignore[no-untyped-def]
    """This program's ``BLOCK_U`` units, which of them exist, and ``BLOCK_R`` element indices
    (64-bit when ``BIG``)."""
    units = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    r = tl.arange(0, BLOCK_R)
    if BIG:
        units = units.to(tl.int64)
        r = r.to(tl.int64)
    return units, units < U, r


@_jit
def _addresses(units, unit_ok, idx, N, B, UB, UNITS_CONTIGUOUS: tl.constexpr):  # type: ignore[no-untyped-def]
    """The mask and memory offsets of elements ``idx`` of ``units`` (a BLOCK_U x BLOCK_R
    tile)."""
    mask = unit_ok[:, None] & (idx < N)[None, :]
    if UNITS_CONTIGUOUS:  # A == 1: unit u is the N elements from u * N
        offsets = units[:, None] * N + idx[None, :]
    else:
        a = idx // B  # (B == 1 is specialized by Triton: no division then)
        b = idx - a * B
        offsets = a[None, :] * UB + units[:, None] * B + b[None, :]
    return mask, offsets


@_jit
def _div(x, y):  # type: ignore[no-untyped-def]
    """IEEE division (Triton's ``/`` on float32 is the approximate one)."""
    if x.dtype == tl.float64:  # noqa: SIM108  (a static branch: only one is compiled)
        quotient = x / y
    else:
        quotient = tl.math.div_rn(x, y)
    return quotient


@_jit
def _sqrt(x):  # type: ignore[no-untyped-def]
    """IEEE square root (``tl.sqrt`` on float32 is the approximate one)."""
    if x.dtype == tl.float64:  # noqa: SIM108  (a static branch: only one is compiled)
        root = tl.sqrt(x)
    else:
        root = tl.math.sqrt_rn(x)
    return root


@_jit
def _forward_kernel(  # type: ignore[no-untyped-def]
    v_ptr,
    g_ptr,
    w_ptr,
    norm_ptr,
    U,
    N,
    B,
    UB,
    g_stride,
    EPS: tl.constexpr,
    UNITS_CONTIGUOUS: tl.constexpr,
    BIG: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    acc_t = norm_ptr.dtype.element_ty
    units, unit_ok, r = _tile(U, BIG, BLOCK_U, BLOCK_R)
    squares = tl.zeros((BLOCK_U, BLOCK_R), dtype=acc_t)
    for start in range(0, N, BLOCK_R):
        mask, offs = _addresses(units, unit_ok, start + r, N, B, UB, UNITS_CONTIGUOUS)
        # (no `other=`: a constant of the element type, bfloat16 included, is not needed)
        x = tl.where(mask, tl.load(v_ptr + offs, mask=mask).to(acc_t), 0.0)
        squares += x * x
    norm = _sqrt(tl.sum(squares, axis=1))
    tl.store(norm_ptr + units, norm, mask=unit_ok)
    eps = tl.full((BLOCK_U,), EPS, acc_t)
    normc = tl.where(norm < eps, eps, norm)  # max(norm, eps), NaN kept
    g = tl.load(g_ptr + units * g_stride, mask=unit_ok).to(acc_t)
    scale = _div(g, normc)
    for start in range(0, N, BLOCK_R):
        mask, offs = _addresses(units, unit_ok, start + r, N, B, UB, UNITS_CONTIGUOUS)
        x = tl.load(v_ptr + offs, mask=mask).to(acc_t)
        tl.store(w_ptr + offs, (x * scale[:, None]).to(w_ptr.dtype.element_ty), mask=mask)


@_jit
def _backward_kernel(  # type: ignore[no-untyped-def]
    grad_w_ptr,
    v_ptr,
    g_ptr,
    norm_ptr,
    grad_v_ptr,
    grad_g_ptr,
    U,
    N,
    B,
    UB,
    g_stride,
    grad_g_stride,
    EPS: tl.constexpr,
    UNITS_CONTIGUOUS: tl.constexpr,
    BIG: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_R: tl.constexpr,
    FINITE: tl.constexpr,
):
    acc_t = norm_ptr.dtype.element_ty
    units, unit_ok, r = _tile(U, BIG, BLOCK_U, BLOCK_R)
    products = tl.zeros((BLOCK_U, BLOCK_R), dtype=acc_t)
    for start in range(0, N, BLOCK_R):
        mask, offs = _addresses(units, unit_ok, start + r, N, B, UB, UNITS_CONTIGUOUS)
        gw = tl.load(grad_w_ptr + offs, mask=mask).to(acc_t)
        x = tl.load(v_ptr + offs, mask=mask).to(acc_t)
        products += tl.where(mask, gw * x, 0.0)
    dot = tl.sum(products, axis=1)  # grad_w . v per unit
    norm = tl.load(norm_ptr + units, mask=unit_ok)
    eps = tl.full((BLOCK_U,), EPS, acc_t)
    normc = tl.where(norm < eps, eps, norm)
    grad_g = _div(dot, normc)
    tl.store(
        grad_g_ptr + units * grad_g_stride,
        grad_g.to(grad_g_ptr.dtype.element_ty),
        mask=unit_ok,
    )
    # below eps the norm is the constant eps: its own gradient is zero
    coef = tl.where(norm < eps, 0.0, _div(grad_g, normc))  # dot / normc^2
    g = tl.load(g_ptr + units * g_stride, mask=unit_ok).to(acc_t)
    scale = _div(g, normc)
    for start in range(0, N, BLOCK_R):
        mask, offs = _addresses(units, unit_ok, start + r, N, B, UB, UNITS_CONTIGUOUS)
        gw = tl.load(grad_w_ptr + offs, mask=mask).to(acc_t)
        x = tl.load(v_ptr + offs, mask=mask).to(acc_t)
        grad_v = scale[:, None] * (gw - coef[:, None] * x)
        if FINITE > 0:  # float16 v: clamped to its range (a zero unit's g/eps scale)
            grad_v = tl.where(grad_v > FINITE, FINITE, tl.where(grad_v < -FINITE, -FINITE, grad_v))
        tl.store(grad_v_ptr + offs, grad_v.to(grad_v_ptr.dtype.element_ty), mask=mask)


def _unit_layout(t: Tensor, dim: int | None) -> tuple[int, int, int, bool] | None:
    """``(U, N, B, units_contiguous)`` of a dense ``t`` seen as ``(A, U, B)`` in memory order
    (``N = A * B`` elements per unit); ``None`` if ``t`` is not dense (overlapping or gaps)."""
    shape, strides = t.shape, t.stride()
    if t.numel() == 0:  # (nothing to address: any strides will do)
        return (1 if dim is None else shape[dim]), 0, 0, True
    order = sorted((d for d in range(t.ndim) if shape[d] > 1), key=lambda d: -strides[d])
    expected = 1
    for d in reversed(order):  # dense: each stride is the number of elements inside it
        if strides[d] != expected:
            return None
        expected *= shape[d]
    numel = t.numel()
    if dim is None or shape[dim] <= 1:
        return (1 if dim is None else shape[dim]), numel, numel, True
    units = shape[dim]
    inner = math.prod(shape[d] for d in order[order.index(dim) + 1 :])
    return units, numel // units, inner, inner * units == numel


def _dense(t: Tensor, dim: int | None) -> tuple[Tensor, tuple[int, int, int, bool]]:
    """``t`` (a contiguous copy if it is not dense) and its :func:`_unit_layout`."""
    layout = _unit_layout(t, dim)
    if layout is not None:
        return t, layout
    t = t.contiguous()
    layout = _unit_layout(t, dim)
    if layout is None:  # (cannot happen: a contiguous tensor is dense)
        raise RuntimeError(f"weightnorm: no unit layout for shape {tuple(t.shape)}, dim={dim}")
    return t, layout


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape, strict=True) if n > 1)


@functools.lru_cache(maxsize=256)
def _blocks(units: int, n: int, inner: int, contiguous: bool) -> tuple[int, int]:
    """``(BLOCK_U, BLOCK_R)``: a tile along the direction in which memory is contiguous."""
    np2 = triton.next_power_of_2
    if contiguous or inner > 1:  # a unit's elements come in runs: tile along them
        block_r = min(np2(max(n, 1)), _MAX_TILE if contiguous else _MAX_TILE // 2)
        return max(1, min(np2(units), _MAX_TILE // block_r)), block_r
    block_u = min(np2(units), 64)  # units along the last dim: neighbouring units are adjacent
    return block_u, max(1, min(np2(max(n, 1)), _MAX_TILE // block_u))


def _unit_stride(t: Tensor) -> int | None:
    """The distance between the elements of consecutive units in ``t``, a tensor of one element
    per unit in row-major order (``g``, the norms); ``None`` if there is no single one."""
    sized = [d for d in range(t.ndim) if t.shape[d] > 1]
    if not sized:
        return 0
    if len(sized) == 1:
        return int(t.stride(sized[0]))
    return 1 if t.is_contiguous() else None


def _per_unit(t: Tensor) -> tuple[Tensor, int]:
    """``t`` (contiguous if it has to be) and its :func:`_unit_stride`."""
    stride = _unit_stride(t)
    if stride is None:
        t = t.contiguous()
        stride = 1
    return t, stride


def weight_norm_forward(v: Tensor, g: Tensor, dim: int | None, eps: float) -> tuple[Tensor, Tensor]:
    """``(w, norms)``: ``w = g v / max(||v||, eps)`` in ``v``'s dtype and layout, ``norms`` the
    unclamped per-unit norms (keep-dim; float64 for float64 ``v``, else float32).
    ``dim`` is non-negative or ``None``; ``g`` has one element per unit."""
    v, (units, n, inner, contiguous) = _dense(v, dim)
    g, g_stride = _per_unit(g)
    w = torch.empty_like(v)
    keepdim = tuple(s if d == dim else 1 for d, s in enumerate(v.shape))
    accumulator = torch.float64 if v.dtype == torch.float64 else torch.float32
    norms = torch.empty(keepdim, dtype=accumulator, device=v.device)
    if v.numel() == 0:
        return w, norms.zero_()
    block_u, block_r = _blocks(units, n, inner, contiguous)
    with _on(v):
        _forward_kernel[(triton.cdiv(units, block_u),)](
            v, g, w, norms, units, n, inner, units * inner, g_stride,
            EPS=float(eps), UNITS_CONTIGUOUS=contiguous, BIG=v.numel() >= 2**31,
            BLOCK_U=block_u, BLOCK_R=block_r,
        )  # fmt: skip
    return w, norms


def weight_norm_backward(
    grad_w: Tensor, v: Tensor, g: Tensor, norms: Tensor, dim: int | None, eps: float
) -> tuple[Tensor, Tensor]:
    """``(grad_v, grad_g)`` of :func:`weight_norm_forward` (paper eq. 3, the norm's gradient
    zero below ``eps``), ``grad_v`` in ``v``'s dtype and layout, ``grad_g`` in ``g``'s."""
    v, (units, n, inner, contiguous) = _dense(v, dim)
    if not _same_layout(grad_w, v):
        grad_w = torch.empty_like(v).copy_(grad_w)  # (e.g. the expanded gradient of w.sum())
    g, g_stride = _per_unit(g)
    norms = norms.contiguous()  # (they are, from weight_norm_forward)
    grad_v = torch.empty_like(v)
    grad_g, grad_g_stride = _per_unit(torch.empty_like(g))
    if v.numel() == 0:
        return grad_v, grad_g.zero_()
    block_u, block_r = _blocks(units, n, inner, contiguous)
    with _on(v):
        _backward_kernel[(triton.cdiv(units, block_u),)](
            grad_w, v, g, norms, grad_v, grad_g, units, n, inner, units * inner,
            g_stride, grad_g_stride,
            EPS=float(eps), UNITS_CONTIGUOUS=contiguous, BIG=v.numel() >= 2**31,
            BLOCK_U=block_u, BLOCK_R=block_r,
            FINITE=torch.finfo(v.dtype).max if v.dtype is torch.float16 else 0.0,
        )  # fmt: skip
    return grad_v, grad_g


def _on(t: Tensor) -> contextlib.AbstractContextManager[object]:
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
