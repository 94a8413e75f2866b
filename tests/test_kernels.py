"""Every kernel of weight norm held to the same properties, on every layout; the one dispatch
among them; and what each costs per training step in ATen ops and host syncs.

Kernels (``weightnorm.functional``): ``PLAIN`` (plain differentiable ops: traced graphs, tensor
subclasses, and every device or layout the others do not fit), ``TORCH_FUSED`` (PyTorch's fused
CPU kernels, contiguous float32/float64 with every norm above eps), ``TRITON`` (this library's
Triton kernels behind the custom ops ``weightnorm::weight_norm`` and its backward). Each test
asks a kernel directly and asserts it fits, so a test never silently checks another one.

``TRITON`` runs on a CUDA device when there is one. Without one, its kernels run on CPU tensors
in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1`` before anything imports Triton).
Without Triton installed those tests are skipped.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import weightnorm as wn
from test_functional import direction_and_magnitude  # the same hypothesis strategy
from weightnorm import functional as F
from weightnorm.functional import WeightNormSpec

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"
NO_TRITON = pytest.mark.skipif(
    not HAS_TRITON,
    reason="triton is not installed (the test extra installs it on Linux x86_64): the Triton "
    "kernels cannot run here",
)
Kernel = Any


def needs_triton() -> None:
    """Skip unless the Triton kernels run on KERNEL_DEVICE in this process."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if not F._triton_runs_on(torch.device(KERNEL_DEVICE)):
        pytest.skip(
            f"the Triton kernels cannot run on {KERNEL_DEVICE} tensors in this process "
            "(on the CPU they need TRITON_INTERPRET=1 set before Triton is first imported)"
        )


def device_of(kernel: Kernel) -> str:
    if kernel is F.TRITON:
        needs_triton()
        return KERNEL_DEVICE
    return "cpu"


def kernel_param(kernel: Kernel, *values: Any, id: str | None = None) -> Any:
    marks = [NO_TRITON] if kernel is F.TRITON else []
    return pytest.param(kernel, *values, marks=marks, id=id or kernel.name)


ALL = [kernel_param(k) for k in (F.PLAIN, F.TORCH_FUSED, F.TRITON)]

# (shape, dim, groups): Linear rows, last dim, a middle dim, the last of three, the whole
# tensor, one unit per element, a grouped ConvTranspose weight
CASES: list[tuple[tuple[int, ...], int | None, int]] = [
    ((4, 3), 0, 1),
    ((4, 3), 1, 1),
    ((5, 3, 2), 1, 1),
    ((2, 3, 4), 2, 1),
    ((3, 2, 4), None, 1),
    ((6,), 0, 1),
    ((6, 2, 3), 1, 2),
]


def supports(kernel: Kernel, shape: tuple[int, ...], dim: int | None, groups: int) -> bool:
    """Whether ``kernel`` fits contiguous float64 tensors of this layout."""
    spec = WeightNormSpec(shape, dim, groups)
    if kernel is F.TORCH_FUSED:
        return spec.fused_layout
    return kernel is F.PLAIN or groups == 1


def cases(
    kernels: tuple[Kernel, ...] = (F.PLAIN, F.TORCH_FUSED, F.TRITON),
    layouts: list[tuple[tuple[int, ...], int | None, int]] = CASES,
) -> list[Any]:
    return [
        kernel_param(k, s, d, n, id=f"{k.name}-{'x'.join(map(str, s))}-dim{d}-groups{n}")
        for k in kernels
        for s, d, n in layouts
        if supports(k, s, d, n)
    ]


def compute(kernel: Kernel, v: torch.Tensor, g: torch.Tensor, spec: WeightNormSpec) -> torch.Tensor:
    """``w`` by ``kernel``, with its autograd; the kernel must fit and compute."""
    assert kernel.fits(v, g, spec), f"{kernel.name} does not fit this case"
    out = kernel.forward(v, g, spec)
    assert out is not None, f"{kernel.name} declined (a norm at or below eps)"
    return out[0]


def by(kernel: Kernel, dim: int | None, groups: int = 1, eps: float = F.DEFAULT_EPS) -> Any:
    """``(v, g) -> w`` by ``kernel`` (for gradcheck)."""
    return lambda v, g: compute(kernel, v, g, WeightNormSpec(tuple(v.shape), dim, groups, eps))


# --- the independent reference: float64 numpy, unit by unit ---------------------------------


def units_first(x: np.ndarray, dim: int | None, groups: int) -> np.ndarray:
    """``x`` (the shape of the weight) as ``(units, elements)``, units in g's row-major order."""
    if groups > 1:  # units are (group k, column j) of (groups, in/groups, out/groups, ...)
        y = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        y = np.moveaxis(y, 1 + cast_int(dim), 1)
        units = groups * y.shape[1]
    elif dim is None:
        y, units = x, 1
    else:
        y, units = np.moveaxis(x, dim, 0), x.shape[dim]
    return y.reshape(units, x.size // units if units else 0)


def cast_int(dim: int | None) -> int:
    assert dim is not None
    return dim


def units_back(y: np.ndarray, shape: tuple[int, ...], dim: int | None, groups: int) -> np.ndarray:
    if groups > 1:
        d = cast_int(dim)
        view = (groups, shape[0] // groups, *shape[1:])
        moved = list(view)
        moved.insert(1, moved.pop(1 + d))
        return np.moveaxis(y.reshape(moved), 1, 1 + d).reshape(shape)
    if dim is None:
        return y.reshape(shape)
    moved = (shape[dim], *(s for i, s in enumerate(shape) if i != dim))
    return np.moveaxis(y.reshape(moved), 0, dim)


def reference(
    v: np.ndarray, g: np.ndarray, grad_w: np.ndarray, dim: int | None, groups: int, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w, grad_v, grad_g)`` of ``w = g v / max(||v||, eps)`` per unit: paper eq. 2 and 3
    (below eps the norm is the constant eps: its own gradient is zero)."""
    x, gw = units_first(v, dim, groups), units_first(grad_w, dim, groups)
    gg = g.reshape(-1)
    norm = np.sqrt((x**2).sum(axis=1))
    normc = np.maximum(norm, eps)
    w = gg[:, None] * x / normc[:, None]
    dot = (gw * x).sum(axis=1)
    grad_g = dot / normc
    coef = np.where(norm < eps, 0.0, dot / normc**2)
    grad_v = (gg / normc)[:, None] * (gw - coef[:, None] * x)
    shape = v.shape
    return units_back(w, shape, dim, groups), units_back(grad_v, shape, dim, groups), grad_g


def inputs(
    shape: tuple[int, ...],
    dim: int | None,
    groups: int = 1,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.rand(F.g_shape(shape, dim, groups), generator=gen, dtype=torch.float64) + 0.5
    g_dtype = torch.float32 if dtype in F.LOW_PRECISION else dtype
    return v.to(device=device, dtype=dtype), g.to(device=device, dtype=g_dtype)


# --------------------------------------------------------------------------------------------
# The dispatch
# --------------------------------------------------------------------------------------------


def chosen(v: torch.Tensor, g: torch.Tensor, dim: int | None, groups: int = 1) -> str:
    return F.kernel_for(v, g, WeightNormSpec(tuple(v.shape), dim, groups)).name


def test_dispatch_on_the_cpu() -> None:
    v = torch.randn(4, 3)
    assert chosen(v, torch.ones(4, 1), 0) == "torch-fused"
    assert chosen(v, torch.ones(1, 3), 1) == "torch-fused"
    assert chosen(v.double(), torch.ones(4, 1, dtype=torch.float64), 0) == "torch-fused"
    assert chosen(torch.randn(4, 3, 2), torch.ones(1, 3, 1), 1) == "plain"  # a middle dim
    assert chosen(v.half(), torch.ones(4, 1), 0) == "plain"  # half on the CPU
    assert chosen(v, torch.ones(4, 1, dtype=torch.float64), 0) == "plain"  # g's dtype
    assert chosen(v, torch.ones(4), 0) == "plain"  # g not keep-dim
    assert chosen(torch.empty(0, 3), torch.ones(0, 1), 0) == "plain"  # SIGFPE in torch
    assert chosen(torch.randn(6, 2, 3), torch.ones(2, 1, 2, 1), 1, groups=2) == "plain"
    # the layouts torch's kernel reads wrongly (issue 20): anything not contiguous
    assert chosen(torch.randn(3, 4).t(), torch.ones(4, 1), 0) == "plain"
    cl = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    assert chosen(cl, torch.ones(4, 1, 1, 1), 0) == "plain"
    assert chosen(v, torch.ones(1, 1).expand(4, 1), 0) == "plain"  # expanded g
    assert chosen(torch.randn(4, 6)[:, ::2], torch.ones(4, 1), 0) == "plain"


def test_dispatch_elsewhere() -> None:
    meta = torch.empty(4, 3, 2, device="meta")
    g_meta = torch.ones(1, 3, 1, device="meta")
    assert chosen(meta, g_meta, 1) == "triton"  # the path a GPU takes (any dim)
    assert chosen(meta, torch.ones((), device="meta"), None) == "triton"
    assert chosen(meta.bfloat16(), g_meta, 1) == "triton"  # (g float32 for half weights)
    assert chosen(meta, torch.ones(3, 1, device="meta"), 1) == "plain"  # g broadcasts
    six = torch.empty(6, 2, 3, device="meta")
    assert chosen(six, torch.ones(2, 1, 2, 1, device="meta"), 1, groups=2) == "plain"


def test_dispatch_under_transforms_compile_and_subclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    v, g = torch.randn(4, 3), torch.ones(4, 1)
    seen: list[str] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(chosen(x, g, 0))
        return x

    torch.func.vmap(record)(v.unsqueeze(0).expand(2, 4, 3))
    assert seen == ["plain"]
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:  # (non-strict export traces with fake tensors)
        assert chosen(mode.from_tensor(v), mode.from_tensor(g), 0) == "plain"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert chosen(v, g, 0) == "plain"


def test_a_unit_at_eps_leaves_the_fused_kernel() -> None:
    """torch's kernel divides by the unclamped norm: it declines, and the dispatch computes the
    eps-safe plain form instead (a zero row gives zero, not NaN)."""
    v = torch.randn(4, 3)
    v[2] = 0.0
    spec = WeightNormSpec((4, 3), 0)
    assert F.TORCH_FUSED.forward(v, torch.ones(4, 1), spec) is None
    w, _, kernel = F.weight_and_norms(v, torch.ones(4, 1), spec)
    assert kernel is F.PLAIN
    assert (w[2] == 0).all()
    assert torch.isfinite(w).all()


# --------------------------------------------------------------------------------------------
# The same properties on every kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "shape", "dim", "groups"), cases())
def test_values_and_gradients_against_independent_formula(
    kernel: Kernel, shape: tuple[int, ...], dim: int | None, groups: int
) -> None:
    v, g = inputs(shape, dim, groups, device=device_of(kernel))
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = compute(kernel, v, g, WeightNormSpec(shape, dim, groups))
    assert w.shape == v.shape
    assert w.dtype == v.dtype
    grad_w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w.to(w.device))
    ref = reference(v.detach().cpu().numpy(), g.detach().cpu().numpy(), grad_w.numpy(), dim,
                    groups, F.DEFAULT_EPS)  # fmt: skip
    for got, expected in zip((w, grad_v, grad_g.reshape(-1)), ref, strict=True):
        np.testing.assert_allclose(got.detach().cpu().numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("kernel", "shape", "dim", "groups"), cases())
def test_gradcheck_and_gradgradcheck_float64(
    kernel: Kernel, shape: tuple[int, ...], dim: int | None, groups: int
) -> None:
    """First and second derivatives exact on every kernel (torch's fused double backward is
    wrong: the fused kernel's node is corrected; the Triton op differentiates the plain form)."""
    v, g = inputs(shape, dim, groups, device=device_of(kernel))
    v.requires_grad_(True)
    g.requires_grad_(True)
    assert torch.autograd.gradcheck(by(kernel, dim, groups), (v, g))
    assert torch.autograd.gradgradcheck(by(kernel, dim, groups), (v, g))


@pytest.mark.parametrize(
    ("kernel", "shape", "dim", "groups"), cases(layouts=[c for c in CASES if c[2] == 1])
)
def test_paper_gradient_formulas_unit_by_unit(
    kernel: Kernel, shape: tuple[int, ...], dim: int | None, groups: int
) -> None:
    """Paper eq. 3, unit by unit in torch: grad_g = grad_w . v/||v||,
    grad_v = g/||v|| grad_w - g grad_g/||v||^2 v."""
    v, g = inputs(shape, dim, device=device_of(kernel), seed=3)
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = compute(kernel, v, g, WeightNormSpec(shape, dim))
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(4), dtype=w.dtype)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w.to(w.device))
    vd = v.detach().cpu()
    units = [vd] if dim is None else list(vd.movedim(dim, 0))
    gw_units = [grad_w] if dim is None else list(grad_w.movedim(dim, 0))
    got_v = [grad_v.cpu()] if dim is None else list(grad_v.cpu().movedim(dim, 0))
    g_flat = g.detach().cpu().reshape(-1)
    for i, (vi, gwi) in enumerate(zip(units, gw_units, strict=True)):
        norm = vi.norm()
        expected_g = (gwi * vi).sum() / norm
        expected_v = g_flat[i] / norm * gwi - g_flat[i] * expected_g / norm**2 * vi
        torch.testing.assert_close(grad_g.cpu().reshape(-1)[i], expected_g)
        torch.testing.assert_close(got_v[i], expected_v)


@pytest.mark.parametrize("kernel", ALL)
@settings(max_examples=25, deadline=None)
@given(data=direction_and_magnitude(), c=st.floats(1e-3, 1e3))
def test_w_invariant_to_scaling_v(
    kernel: Kernel, data: tuple[torch.Tensor, torch.Tensor, int], c: float
) -> None:
    device = device_of(kernel)
    v, g, dim = data
    v, g = v.to(device), g.to(device)
    run = by(kernel, dim)
    torch.testing.assert_close(run(c * v, g), run(v, g))


@pytest.mark.parametrize("kernel", ALL)
@settings(max_examples=25, deadline=None)
@given(data=direction_and_magnitude())
def test_norm_of_w_is_abs_g(kernel: Kernel, data: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    device = device_of(kernel)
    v, g, dim = data
    w = by(kernel, dim)(v.to(device), g.to(device)).cpu()
    torch.testing.assert_close(w.norm(dim=1 - dim), g.abs().reshape(-1))


@pytest.mark.parametrize("kernel", ALL)
@settings(max_examples=25, deadline=None)
@given(data=direction_and_magnitude(), seed=st.integers(0, 2**31 - 1))
def test_grad_v_orthogonal_to_v(
    kernel: Kernel, data: tuple[torch.Tensor, torch.Tensor, int], seed: int
) -> None:
    device = device_of(kernel)
    v, g, dim = data
    vd = v.to(device).requires_grad_(True)
    w = by(kernel, dim)(vd, g.to(device))
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype)
    (grad_v,) = torch.autograd.grad(w, vd, grad_w.to(device))
    dots = (grad_v.cpu() * v).sum(dim=1 - dim)
    # |grad_v| <= |g| |grad_w| / ||v||, so the dot product is bounded by |g| |grad_w| (times eps)
    bound = 1e-12 * (g.abs().reshape(-1) * grad_w.norm(dim=1 - dim) + 1.0)
    assert (dots.abs() <= bound).all()


EPS_SAFE = (F.PLAIN, F.TRITON)  # (the fused kernel declines units at eps: tested above)


@pytest.mark.parametrize(
    ("kernel", "shape", "dim", "dtype"),
    [
        kernel_param(k, s, d, t, id=f"{k.name}-{'x'.join(map(str, s))}-dim{d}-{str(t)[6:]}")
        for k in EPS_SAFE
        for s, d in [((3, 4), 0), ((3, 4), 1), ((3, 4), None), ((2, 3, 4), 1)]
        for t in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    ],
)
def test_zero_units_are_finite(
    kernel: Kernel, shape: tuple[int, ...], dim: int | None, dtype: torch.dtype
) -> None:
    """A zero unit gives w = 0 there and finite gradients (torch's own weight norm: NaN), in
    float16 too, where g/eps times the gradient is beyond its range (issue 27: it gave inf)."""
    v, g = inputs(shape, dim, dtype=dtype, device=device_of(kernel))
    if dim is None:
        v.zero_()
    else:
        v.select(dim, 1).zero_()
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = compute(kernel, v, g, WeightNormSpec(shape, dim))
    zero = w if dim is None else w.select(dim, 1)
    assert (zero == 0).all()
    assert torch.isfinite(w).all()
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(5)).to(w)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w)
    assert torch.isfinite(grad_v).all()
    assert torch.isfinite(grad_g).all()
    # below eps the norm is the constant eps: grad_v = g/eps grad_w, grad_g = grad_w . 0 = 0
    unit_g = grad_g if dim is None else grad_g.select(dim, 1)
    assert (unit_g == 0).all()


@pytest.mark.parametrize(
    ("kernel", "dim"),
    [kernel_param(k, d, id=f"{k.name}-dim{d}") for k in EPS_SAFE for d in (0, None)],
)
def test_units_below_eps_are_linear(kernel: Kernel, dim: int | None) -> None:
    """Below eps the norm is the constant eps: w = g v/eps, grad_v = g/eps grad_w (the norm's
    own gradient is zero there), grad_g = grad_w . v/eps. Above it, the usual formula."""
    eps = 1e-3
    v, g = inputs((3, 4), dim, device=device_of(kernel), seed=9)
    with torch.no_grad():
        (v if dim is None else v[1]).mul_(1e-5)  # norm about 2e-5, below eps
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = by(kernel, dim, eps=eps)(v, g)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(10), dtype=w.dtype)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w.to(w.device))
    ref = reference(v.detach().cpu().numpy(), g.detach().cpu().numpy(), grad_w.numpy(), dim, 1,
                    eps)  # fmt: skip
    for got, expected in zip((w, grad_v, grad_g.reshape(-1)), ref, strict=True):
        np.testing.assert_allclose(got.detach().cpu().numpy(), expected, rtol=1e-12, atol=1e-14)
    unit = slice(None) if dim is None else 1
    gr = g.detach().cpu().reshape(-1)[0 if dim is None else 1]
    torch.testing.assert_close(w.detach().cpu()[unit], gr * v.detach().cpu()[unit] / eps)


@pytest.mark.parametrize(
    ("kernel", "dtype"),
    [
        kernel_param(k, t, id=f"{k.name}-{str(t)[6:]}")
        for k in EPS_SAFE
        for t in (torch.float16, torch.bfloat16)
    ],
)
def test_half_precision_norms_in_float32(kernel: Kernel, dtype: torch.dtype) -> None:
    """Half v, float32 g (as the modules keep it): w in v's dtype, close to the float64 formula
    on the same values; grad_g float32, grad_v in v's dtype."""
    v, g = inputs((3, 700), 0, dtype=dtype, device=device_of(kernel), seed=6)  # 700 in a unit
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = compute(kernel, v, g, WeightNormSpec((3, 700), 0))
    assert w.dtype == dtype
    vd, gd = v.detach().double().requires_grad_(True), g.detach().double().requires_grad_(True)
    wd = vd * (gd / vd.norm(dim=1, keepdim=True))
    torch.testing.assert_close(w.double(), wd, rtol=1e-2, atol=1e-3)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(7)).to(w)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w)
    assert grad_v.dtype == dtype
    assert grad_g.dtype == torch.float32
    ref_v, ref_g = torch.autograd.grad(wd, (vd, gd), grad_w.double())
    torch.testing.assert_close(grad_g.double(), ref_g, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(grad_v.double(), ref_v, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("kernel", ALL)
def test_module_training_step_on_every_kernel(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weight-normalized Linear (the module path) gives the gradients of the float64 formula
    with each kernel as its device's (``F.KERNELS`` is the dispatch table)."""
    device = device_of(kernel)
    monkeypatch.setitem(F.KERNELS, device, kernel)
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(5, 4, dtype=torch.float64)).to(device)
    x = torch.randn(3, 5, dtype=torch.float64, device=device)
    spec = wn.weight_norm_specs(layer)["weight"]
    assert F.kernel_for(layer.weight_v, layer.weight_g, spec) is kernel
    layer(x).pow(2).sum().backward()
    v = layer.weight_v.detach().clone().requires_grad_(True)
    g = layer.weight_g.detach().clone().requires_grad_(True)
    w = v * (g / v.norm(dim=1, keepdim=True))
    nn.functional.linear(x, w, layer.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(layer.weight_v.grad, v.grad)
    torch.testing.assert_close(layer.weight_g.grad, g.grad)


def test_torch_fused_double_backward_is_wrong_and_ours_is_exact() -> None:
    """Regression (issue 20): torch's fused weight-norm double backward treats the norms as
    constants. Ours runs the same fused kernel for the first order and is exact at the second
    (no error, no context manager)."""
    torch.manual_seed(2)
    v = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)

    def second(w: torch.Tensor) -> torch.Tensor:
        (gv,) = torch.autograd.grad(w.pow(3).sum(), v, create_graph=True)
        (ggv,) = torch.autograd.grad(gv.pow(2).sum(), v)
        return ggv

    reference_ = second(v * (g / v.norm(dim=1, keepdim=True)))
    assert not torch.allclose(second(torch._weight_norm(v, g, 0)), reference_)  # torch's bug
    w = F.weight_norm(v, g, 0)
    assert w.grad_fn is not None
    assert w.grad_fn.name() == "WeightNormInterfaceBackward0"
    torch.testing.assert_close(second(w), reference_)
    (first,) = torch.autograd.grad(F.weight_norm(v, g, 0).pow(3).sum(), v)
    (graphed,) = torch.autograd.grad(F.weight_norm(v, g, 0).pow(3).sum(), v, create_graph=True)
    torch.testing.assert_close(graphed.detach(), first)


# --------------------------------------------------------------------------------------------
# Every layout (issue 20): strides, permutations, slices, expanded g, zero-size units
# --------------------------------------------------------------------------------------------


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, Any]:
    """A weight shape, its unit dim and groups, and how v, g and grad_w lie in memory: any
    permutation of the dims (channels-last is one), a slice with a step (not dense), a
    transposed view, an expanded (stride 0) g, sizes of 0 included."""
    ndim = draw(st.integers(1, 4))
    shape = list(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    groups = 1
    if ndim >= 2 and draw(st.booleans()):
        groups = draw(st.integers(2, 3))
        shape[0] = groups * draw(st.integers(1, 2))
    if groups > 1:
        dim: int | None = draw(st.integers(1, ndim - 1))
    else:
        dim = draw(st.one_of(st.none(), st.integers(0, ndim - 1)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return {
        "shape": tuple(shape),
        "dim": dim,
        "groups": groups,
        "dtype": dtype,
        "v_order": draw(st.permutations(range(ndim))),
        "v_step": draw(st.integers(1, 2)),
        "grad_order": draw(st.permutations(range(ndim))),
        "g_expanded": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def laid_out(x: torch.Tensor, order: list[int], step: int = 1) -> torch.Tensor:
    """``x``'s values in memory order ``order`` (a permutation of its dims), its last stored dim
    taken every ``step``-th element (not dense for step 2)."""
    shape = [x.shape[d] for d in order]
    shape[-1] *= step
    store = torch.zeros(shape, dtype=x.dtype)
    inverse = [order.index(d) for d in range(x.ndim)]
    sliced = store[..., ::step]
    sliced.copy_(x.permute(order))
    return sliced.permute(inverse)


@pytest.mark.parametrize("kernel", ALL)
@settings(max_examples=60, deadline=None)
@given(case=layouts())
def test_every_layout_against_independent_formula(kernel: Kernel, case: dict[str, Any]) -> None:
    """Issue 20: torch's fused CPU kernel read a strided v as if it were contiguous (a
    channels-last Conv2d was off by 2.9, an assign=True load of transposed tensors by 4.2).
    Every kernel, where it fits, and the dispatch give the float64 formula's values and
    gradients for any strides of v, g and grad_w."""
    device = device_of(kernel)
    shape, dim, groups, dtype = case["shape"], case["dim"], case["groups"], case["dtype"]
    spec = WeightNormSpec(shape, dim, groups)
    gen = torch.Generator().manual_seed(case["seed"])
    v64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    g64 = torch.rand(spec.g_shape, generator=gen, dtype=torch.float64) + 0.5
    if case["g_expanded"] and spec.units:
        g64 = torch.full((1,) * len(spec.g_shape), 1.25, dtype=torch.float64)
        g_t = g64.expand(spec.g_shape)
    else:
        g_t = g64
    gw64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = laid_out(v64.to(dtype), case["v_order"], case["v_step"]).to(device).requires_grad_(True)
    g = g_t.to(device=device, dtype=dtype).detach().requires_grad_(True)
    if g_t.stride() != g64.stride():  # expanded: keep the stride-0 layout through autograd
        g = g64.to(device=device, dtype=dtype).detach().clone().requires_grad_(True)
        g_in = g.expand(spec.g_shape)
    else:
        g_in = g
    grad_w = laid_out(gw64.to(dtype), case["grad_order"]).to(device)
    fits = kernel.fits(v, g_in, spec)
    if kernel is F.PLAIN:
        assert fits
    if not fits:  # (a kernel that does not fit is never asked)
        return
    out = kernel.forward(v, g_in, spec)
    if out is None:  # the fused kernel declines units at eps (zero-size units: norm 0)
        assert kernel is F.TORCH_FUSED
        return
    w = out[0]
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w, allow_unused=True)
    gg = g_t.expand(spec.g_shape).numpy()
    ref_w, ref_v, ref_g = reference(v64.to(dtype).double().numpy(), gg, gw64.to(dtype).double()
                                    .numpy(), dim, groups, F.DEFAULT_EPS)  # fmt: skip
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(w.detach().double().cpu().numpy(), ref_w, **tol)
    np.testing.assert_allclose(grad_v.double().cpu().numpy(), ref_v, **tol)
    got_g = grad_g.double().cpu().numpy()
    if g_in is not g:  # expanded: the gradient of the one stored value is the sum
        np.testing.assert_allclose(got_g.reshape(-1), [ref_g.sum()], **tol)
    else:
        np.testing.assert_allclose(got_g.reshape(-1), ref_g, **tol)
    # and the dispatch, whatever it chooses here
    np.testing.assert_allclose(spec.weight(v, g_in).detach().double().cpu().numpy(), ref_w, **tol)


def test_channels_last_conv_is_exact_everywhere() -> None:
    """The issue's reproduction, end to end: a Conv2d normalized by wn.weight_norm, moved to
    channels_last, gives torch's values and gradients (it was off by up to 2.9, and its
    backward raised 'saved_v must be contiguous'), and fold and replace bake the right weight."""
    torch.manual_seed(0)
    theirs = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 8, 3))
    ours = wn.weight_norm(nn.Conv2d(3, 8, 3))
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last)
    theirs, ours = (
        theirs.to(memory_format=torch.channels_last),
        ours.to(memory_format=torch.channels_last),
    )
    assert not ours.weight_v.is_contiguous()
    torch.testing.assert_close(ours(x), theirs(x))
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_v.grad, theirs.parametrizations.weight.original1.grad)
    torch.testing.assert_close(ours.weight_g.grad, theirs.parametrizations.weight.original0.grad)
    expected = theirs.weight.detach().clone()
    torch.testing.assert_close(wn.fold(ours).weight, expected)
    torch.testing.assert_close(wn.fold(wn.replace_torch_weight_norm(theirs)).weight, expected)


def test_assign_load_of_transposed_tensors_is_exact() -> None:
    """The issue's other reproduction: load_state_dict(assign=True) (how transformers loads
    from the meta device) with transposed tensors."""
    torch.manual_seed(1)
    source = wn.weight_norm(nn.Linear(6, 5))
    sd = {k: t.detach().t().contiguous().t() for k, t in source.state_dict().items()}
    sd["weight_v"] = source.weight_v.detach().t().contiguous().t()
    assert not sd["weight_v"].is_contiguous()
    with torch.device("meta"):
        target = wn.weight_norm(nn.Linear(6, 5))
    target.load_state_dict(sd, assign=True)
    x = torch.randn(3, 6)
    torch.testing.assert_close(target(x), source(x))


# --------------------------------------------------------------------------------------------
# The Triton kernels and the custom ops, as PyTorch sees them
# --------------------------------------------------------------------------------------------


def _layout_cases() -> Iterator[tuple[str, Callable[[], torch.Tensor], int | None]]:
    gen = torch.Generator().manual_seed(8)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    yield "rows-longer-than-a-tile", lambda: randn(3, 5000), 0
    yield "columns-longer-than-a-tile", lambda: randn(5000, 3), 1
    yield "middle-dim", lambda: randn(2, 300, 7), 1
    yield "whole-tensor", lambda: randn(70, 60), None
    yield "channels-last-dim0", lambda: randn(4, 3, 2, 5).to(memory_format=torch.channels_last), 0
    yield "channels-last-dim1", lambda: randn(4, 3, 2, 5).to(memory_format=torch.channels_last), 1
    yield "transposed", lambda: randn(6, 5).t(), 0
    yield "not-dense", lambda: randn(4, 10)[:, ::2], 0
    yield "size-one-unit-dim", lambda: randn(1, 6), 0


LAYOUTS = list(_layout_cases())


@NO_TRITON
@pytest.mark.parametrize(
    ("make", "dim", "dense"),
    [(m, d, n != "not-dense") for n, m, d in LAYOUTS],
    ids=[n for n, *_ in LAYOUTS],
)
def test_triton_tiles_and_strides(
    make: Callable[[], torch.Tensor], dim: int | None, dense: bool
) -> None:
    """Tiles, loops and strides: dense tensors in any dim order are addressed in place (w in
    the same layout); others are copied first. Checked against the plain form in float64,
    with an expanded (stride 0) gradient as well as a dense one."""
    needs_triton()
    v0 = make()
    spec = WeightNormSpec(tuple(v0.shape), dim)
    g0 = torch.rand(spec.g_shape, dtype=torch.float64) + 0.5
    results = []
    for kernel, device in ((F.TRITON, KERNEL_DEVICE), (F.PLAIN, "cpu")):
        v = v0.to(device).requires_grad_(True)
        g = g0.to(device).requires_grad_(True)
        w = compute(kernel, v, g, spec)
        grad_w = torch.linspace(-1, 1, w.numel(), dtype=w.dtype).reshape(w.shape).to(device)
        grads = torch.autograd.grad(w, (v, g), grad_w)
        expanded = torch.autograd.grad(compute(kernel, v, g, spec).sum(), (v, g))
        results.append((w, *grads, *expanded))
        if kernel is F.TRITON and dense:
            assert w.stride() == v.stride()
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got.detach().cpu(), expected, rtol=1e-12, atol=1e-13)


@NO_TRITON
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # 2.15
def test_custom_ops_pass_opcheck() -> None:
    """torch.library.opcheck: schema, autograd registration, fake (meta) implementations,
    AOT dispatch."""
    needs_triton()
    v, g = inputs((4, 3, 5), 1, device=KERNEL_DEVICE)
    torch.library.opcheck(
        torch.ops.weightnorm.weight_norm.default, (v.requires_grad_(), g.requires_grad_(), 1, 1e-12)
    )
    w, norms = torch.ops.weightnorm.weight_norm(v.detach(), g.detach(), 1, 1e-12)
    grad_w = torch.randn_like(w)
    torch.library.opcheck(
        torch.ops.weightnorm.weight_norm_backward.default,
        (grad_w, v.detach(), g.detach(), norms, 1, 1e-12),
    )
    torch.testing.assert_close(norms, torch.linalg.vector_norm(v, dim=(0, 2), keepdim=True))
    assert not norms.requires_grad  # a by-product for the backward


@pytest.mark.filterwarnings("ignore:At pre-dispatch tracing:UserWarning")  # (torch 2.4's export)
def test_custom_op_is_one_node_under_export_and_compile() -> None:
    """torch.export and torch.compile(fullgraph=True) see weightnorm::weight_norm as one op
    (through its fake implementation), forward and backward."""

    def direct(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = torch.ops.weightnorm.weight_norm(v, g, 0, 1e-12)[0]
        return w

    class Direct(nn.Module):
        def forward(self, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
            return direct(v, g)

    v, g = inputs((4, 3), 0)
    exported = torch.export.export(Direct(), (v, g))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.weightnorm.weight_norm.default) == 1
    assert all(getattr(t, "namespace", "") != "aten" for t in targets)
    if not F._triton_runs_on(v.device):
        return  # (running the compiled graph needs the kernels)
    va, ga = v.clone().requires_grad_(True), g.clone().requires_grad_(True)
    vb, gb = v.clone().requires_grad_(True), g.clone().requires_grad_(True)
    torch.compile(lambda a, b: direct(a, b).pow(3).sum(), fullgraph=True, backend="aot_eager")(
        va, ga
    ).backward()
    compute(F.PLAIN, vb, gb, WeightNormSpec((4, 3), 0)).pow(3).sum().backward()
    torch.testing.assert_close(va.grad, vb.grad)
    torch.testing.assert_close(ga.grad, gb.grad)


class _Launches:
    """Stands for a Triton kernel: records its launches (``kernel[grid](...)``), runs nothing."""

    def __init__(self) -> None:
        self.grids: list[Any] = []

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        self.grids.append(grid)
        return lambda *args, **kwargs: None


ALLOCATIONS = frozenset({"aten.empty", "aten.empty_like", "aten.new_empty", "aten.empty_strided"})


@NO_TRITON
def test_kernel_ops_launch_one_kernel_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the ops, the kernel implementations allocate their outputs and launch one Triton
    kernel each: no other ATen op (so none that launches or syncs). Launches are stubbed: this
    counts, it does not compute."""
    from weightnorm import _kernels

    forward, backward = _Launches(), _Launches()
    monkeypatch.setattr(_kernels, "_forward_kernel", forward)
    monkeypatch.setattr(_kernels, "_backward_kernel", backward)
    for shape, dim in (((8, 16), 0), ((4, 6, 3), 1), ((8, 16), None)):
        v, grad_w = torch.randn(shape), torch.randn(shape)
        g = torch.ones(F.g_shape(shape, dim))
        with OpCounter() as inside:
            _, norms = _kernels.weight_norm_forward(v, g, dim, 1e-12)
            _kernels.weight_norm_backward(grad_w, v, g, norms, dim, 1e-12)
        assert set(inside.ops) <= ALLOCATIONS
        assert inside.ops.total() == 4  # w, norms; grad_v, grad_g
    assert len(forward.grids) == len(backward.grids) == 3


@NO_TRITON
def test_ops_run_the_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ops call the Triton kernels, forward and backward (and nothing of the plain form)."""
    needs_triton()
    from weightnorm import _kernels

    calls: list[str] = []
    for name in ("weight_norm_forward", "weight_norm_backward"):
        real = getattr(_kernels, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(_kernels, name, spy)
    v, g = inputs((4, 3), 0, device=KERNEL_DEVICE)
    v.requires_grad_(True)
    compute(F.TRITON, v, g, WeightNormSpec((4, 3), 0)).sum().backward()
    assert calls == ["weight_norm_forward", "weight_norm_backward"]


_COMPILE_FOR_A_GPU = """
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from weightnorm import _kernels as K

assert not K.INTERPRETED
FWD = "v_ptr g_ptr w_ptr norm_ptr U N B UB g_stride".split()
BWD = "grad_w_ptr v_ptr g_ptr norm_ptr grad_v_ptr grad_g_ptr U N B UB g_stride grad_g_stride"
BWD = BWD.split()
CONSTS = "EPS UNITS_CONTIGUOUS BIG BLOCK_U BLOCK_R".split()
for arch, data, contiguous, big in itertools.product(
    (80, 90), ("fp32", "bf16", "fp64"), (True, False), (False, True)
):
    acc = "fp64" if data == "fp64" else "fp32"
    g = "fp32" if data == "bf16" else data
    kinds = {"v_ptr": data, "w_ptr": data, "grad_w_ptr": data, "grad_v_ptr": data,
             "g_ptr": g, "grad_g_ptr": g, "norm_ptr": acc}
    values = (1e-12, contiguous, big, 4, 256)
    for kernel, names in ((K._forward_kernel, FWD), (K._backward_kernel, BWD)):
        signature = {n: "*" + kinds[n] if n in kinds else ("i64" if big else "i32") for n in names}
        signature.update(dict.fromkeys(CONSTS, "constexpr"))
        constexprs = {(len(names) + i,): value for i, value in enumerate(values)}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        ptx = triton.compile(source, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
        assert ".entry" in ptx
"""


@pytest.mark.slow
@NO_TRITON
def test_kernels_compile_for_a_gpu() -> None:
    """The interpreter runs the kernels as Python; this compiles them, as a GPU run would, to
    PTX for sm_80 and sm_90 (Triton ships its compiler and ptxas; no GPU needed): float32,
    bfloat16 and float64 data, both addressing modes, 32- and 64-bit offsets."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_A_GPU], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# What a training step costs: ATen ops and host syncs per normalized weight
# --------------------------------------------------------------------------------------------

#: ops that read a tensor's value on the host: on a GPU, a device synchronization
SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.item",
        "aten.is_nonzero",
        "aten.equal",
        "aten.nonzero",
        "aten.masked_select",
        "aten._unique2",
        "aten.unique_consecutive",
        "aten.unique_dim",
    }
)


class OpCounter(TorchDispatchMode):
    """Counts the ATen (and custom) ops dispatched while active, by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in SYNC_OPS)


LAYERS: dict[str, Callable[[str], tuple[nn.Module, torch.Tensor]]] = {
    "linear": lambda d: (nn.Linear(16, 8, device=d), torch.randn(4, 16, device=d)),
    "conv1d": lambda d: (nn.Conv1d(4, 8, 3, device=d), torch.randn(2, 4, 10, device=d)),
    # the default dim of a ConvTranspose is 1 (per output unit): a middle dim for the kernel
    "convtranspose1d": lambda d: (
        nn.ConvTranspose1d(4, 6, 3, device=d),
        torch.randn(2, 4, 10, device=d),
    ),
}


def step_ops(
    layer: str, device: str, normalize: Callable[[nn.Module], nn.Module] | None
) -> OpCounter:
    """The ops of one forward and backward of a freshly built layer."""
    torch.manual_seed(0)
    module, x = LAYERS[layer](device)
    if normalize is not None:
        module = normalize(module)
    counter = OpCounter()
    with counter:
        module(x).sum().backward()
    return counter


def extra_ops(
    layer: str, device: str, normalize: Callable[[nn.Module], nn.Module]
) -> tuple[collections.Counter[str], int]:
    plain = step_ops(layer, device, None)
    normed = step_ops(layer, device, normalize)
    assert not plain.ops - normed.ops  # every op of the plain layer is still there
    return normed.ops - plain.ops, normed.syncs - plain.syncs


def torch_weight_norm(module: nn.Module) -> nn.Module:
    dim = 1 if isinstance(module, nn.ConvTranspose1d) else 0
    return nn.utils.parametrizations.weight_norm(module, dim=dim)


#: ops that make a new tensor object over the same memory: no kernel, no data moved
METADATA = frozenset({"aten.detach"})


def data_ops(ops: collections.Counter[str]) -> collections.Counter[str]:
    return collections.Counter({op: n for op, n in ops.items() if op not in METADATA})


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gpu_path_ops_per_step_on_meta(layer: str) -> None:
    """The path a CUDA GPU takes (the Triton ops), counted on the meta device: per weight and
    training step, the forward op and the backward op (one Triton kernel each on a GPU:
    test_kernel_ops_launch_one_kernel_each) and no host sync: no more ops that touch data than
    torch's own fused weight norm in the same torch (counted on the CPU: torch 2.4's fused
    backward has no meta kernel). Besides them autograd's own ``detach``es for the leaves
    (metadata only: no kernel, no data), as many as torch's: the computed weight's type adds
    none. How many autograd makes differs between torch releases (2.13: one; 2.4: two):
    compared with torch's in the same release, not pinned."""
    ours, syncs = extra_ops(layer, "meta", wn.weight_norm)
    assert data_ops(ours) == {"weightnorm.weight_norm": 1, "weightnorm.weight_norm_backward": 1}
    assert syncs == 0
    theirs, their_syncs = extra_ops(layer, "cpu", torch_weight_norm)
    assert their_syncs == 0
    assert data_ops(ours).total() <= data_ops(theirs).total()
    assert ours["aten.detach"] <= theirs["aten.detach"]


def test_cpu_path_ops_per_step() -> None:
    """The CPU hot path (float32): torch's fused kernels (as torch's weight norm runs them) plus
    the eps check of their norms, one host read (``.item()``) per weight and forward; as many
    ``detach``es as torch's. Kept on purpose: on the CPU a host read costs nothing and this path
    is the fastest measured."""
    ours, syncs = extra_ops("linear", "cpu", wn.weight_norm)
    theirs, _ = extra_ops("linear", "cpu", torch_weight_norm)
    assert data_ops(ours) == {
        "aten._weight_norm_interface": 1,
        "aten.min": 1,
        "aten._local_scalar_dense": 1,
        "aten._weight_norm_interface_backward": 1,
    }
    assert syncs == 1
    assert ours["aten.detach"] <= theirs["aten.detach"]


def test_plain_path_has_no_host_sync_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback of devices without kernels (and CUDA without Triton, grouped
    ConvTranspose): plain ops, no host sync."""
    monkeypatch.setitem(F.KERNELS, "meta", F.PLAIN)
    ours, syncs = extra_ops("linear", "meta", wn.weight_norm)
    assert "aten.linalg_vector_norm" in ours
    assert syncs == 0


# --------------------------------------------------------------------------------------------
# Triton is optional and imported only when needed
# --------------------------------------------------------------------------------------------


def test_triton_is_not_imported_by_the_library_or_a_cpu_step() -> None:
    code = (
        "import sys, torch, weightnorm as wn\n"
        "assert 'triton' not in sys.modules, 'import weightnorm imported triton'\n"
        "assert 'torch._dynamo' not in sys.modules, 'import weightnorm imported dynamo (slow)'\n"
        "layer = wn.weight_norm(torch.nn.Linear(4, 3))\n"
        "layer(torch.randn(2, 4)).sum().backward()\n"
        "assert 'weightnorm._kernels' not in sys.modules, 'a CPU step built the kernels'\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")  # (even then: CPU tensors keep the CPU path)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_works_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no Triton importable: no kernels anywhere, and the meta device (fake
    implementations) and the CPU path still work."""
    import torch._dynamo  # (imported now: it caches whether triton is installed)

    import weightnorm

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "weightnorm._kernels", raising=False)
    monkeypatch.delattr(weightnorm, "_kernels", raising=False)
    monkeypatch.setattr(F, "_triton_module", None)
    monkeypatch.setattr(F, "_TRITON_ON", {})
    assert not F._triton().AVAILABLE
    assert not F._triton_runs_on(torch.device("cpu"))
    ours, syncs = extra_ops("linear", "meta", wn.weight_norm)
    assert data_ops(ours).total() == 2
    assert syncs == 0
    layer = wn.weight_norm(nn.Linear(4, 3))
    layer(torch.randn(2, 4)).sum().backward()
    assert layer.weight_v.grad is not None
    assert math.isfinite(float(layer.weight_v.grad.sum()))
