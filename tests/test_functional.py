"""weightnorm.functional: values against independent formulas, exact gradients, invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from weightnorm import functional as F


def reference_weight_norm(v: np.ndarray, g: np.ndarray, dim: int | None) -> np.ndarray:
    """w = g v / ||v|| unit by unit, in float64 numpy: independent of torch's reductions."""
    if dim is None:
        return g.reshape(()) * v / np.sqrt((v**2).sum())
    moved = np.moveaxis(v, dim, 0)
    out = np.empty_like(moved)
    for i in range(moved.shape[0]):
        out[i] = g.reshape(-1)[i] * moved[i] / np.sqrt((moved[i] ** 2).sum())
    return np.moveaxis(out, 0, dim)


@pytest.mark.parametrize("shape", [(4, 3), (5, 3, 2), (2, 3, 4, 5)])
@pytest.mark.parametrize("dim", [0, 1, -1, None])
def test_values_against_independent_formula(shape: tuple[int, ...], dim: int | None) -> None:
    torch.manual_seed(0)
    v = torch.randn(shape, dtype=torch.float64)
    d = F.normalize_dim(dim, len(shape))
    g = torch.rand(F.g_shape(shape, d), dtype=torch.float64) + 0.5
    w = F.weight_norm(v, g, dim)
    expected = reference_weight_norm(v.numpy(), g.numpy(), d)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_negative_dim_counts_from_the_end() -> None:
    # torch's weight norm reads dim=-1 as "whole tensor"; here it is the last dimension
    v = torch.randn(3, 4, dtype=torch.float64)
    g = torch.rand(1, 4, dtype=torch.float64)
    torch.testing.assert_close(F.weight_norm(v, g, -1), F.weight_norm(v, g, 1))
    assert F.norm_except_dim(v, -1).shape == (1, 4)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_parity_with_torch_weight_norm(dim: int) -> None:
    torch.manual_seed(1)
    v = torch.randn(4, 3, 5, requires_grad=True)
    g = torch.rand(F.g_shape(v.shape, dim), requires_grad=True)
    ours = F.weight_norm(v, g, dim)
    theirs = torch._weight_norm(v, g, dim)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (v, g), grad)
    theirs_grads = torch.autograd.grad(theirs, (v, g), grad)
    for a, b in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("shape", "dim", "groups"),
    [((4, 3), 0, 1), ((4, 3), 1, 1), ((3, 2, 4), None, 1), ((6, 2, 3), 1, 2), ((6, 3, 2, 2), 1, 3)],
)
def test_gradcheck_float64(shape: tuple[int, ...], dim: int | None, groups: int) -> None:
    torch.manual_seed(2)
    v = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(F.g_shape(shape, dim, groups), dtype=torch.float64, requires_grad=True)
    run = lambda a, b: F.weight_norm(a, b, dim, groups=groups)  # noqa: E731
    assert torch.autograd.gradcheck(run, (v, g))
    assert torch.autograd.gradgradcheck(run, (v, g))  # every order exact, by default (issue 20)


@pytest.mark.parametrize("dim", [0, 1, None])
def test_paper_gradient_formulas(dim: int | None) -> None:
    """Paper eq. 3: grad_g = grad_w . v/||v||, grad_v = g/||v|| grad_w - g grad_g/||v||^2 v."""
    torch.manual_seed(3)
    v = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(F.g_shape(v.shape, dim), dtype=torch.float64, requires_grad=True)
    w = F.weight_norm(v, g, dim)
    grad_w = torch.randn_like(w)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w)

    vd = v.detach()
    units = [vd] if dim is None else list(vd.movedim(dim, 0))
    gw_units = [grad_w] if dim is None else list(grad_w.movedim(dim, 0))
    g_flat = g.detach().reshape(-1)
    for i, (vi, gwi) in enumerate(zip(units, gw_units, strict=True)):
        norm = vi.norm()
        expected_g = (gwi * vi).sum() / norm
        expected_v = g_flat[i] / norm * gwi - g_flat[i] * expected_g / norm**2 * vi
        got_v = grad_v if dim is None else grad_v.movedim(dim, 0)[i]
        torch.testing.assert_close(grad_g.reshape(-1)[i], expected_g)
        torch.testing.assert_close(got_v, expected_v)


finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)


@st.composite
def direction_and_magnitude(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    rows_ = draw(st.integers(1, 5))
    cols = draw(st.integers(1, 5))
    dim = draw(st.sampled_from([0, 1]))
    values = draw(st.lists(finite, min_size=rows_ * cols, max_size=rows_ * cols))
    v = torch.tensor(values, dtype=torch.float64).reshape(rows_, cols)
    # keep every unit away from the zero vector, where the direction is undefined
    v = v + torch.where(v >= 0, 0.5, -0.5)
    n_units = v.shape[dim]
    g_values = draw(st.lists(finite, min_size=n_units, max_size=n_units))
    g = torch.tensor(g_values, dtype=torch.float64).reshape(F.g_shape(v.shape, dim))
    return v, g, dim


@settings(max_examples=60, deadline=None)
@given(direction_and_magnitude(), st.floats(1e-3, 1e3))
def test_w_invariant_to_scaling_v(data: tuple[torch.Tensor, torch.Tensor, int], c: float) -> None:
    v, g, dim = data
    torch.testing.assert_close(F.weight_norm(c * v, g, dim), F.weight_norm(v, g, dim))


@settings(max_examples=60, deadline=None)
@given(direction_and_magnitude())
def test_norm_of_w_is_abs_g(data: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    v, g, dim = data
    w = F.weight_norm(v, g, dim)
    other = 1 - dim
    torch.testing.assert_close(w.norm(dim=other), g.abs().reshape(-1))


@settings(max_examples=60, deadline=None)
@given(direction_and_magnitude(), st.integers(0, 2**31 - 1))
def test_grad_v_orthogonal_to_v(data: tuple[torch.Tensor, torch.Tensor, int], seed: int) -> None:
    v, g, dim = data
    v = v.clone().requires_grad_(True)
    w = F.weight_norm(v, g, dim)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype)
    (grad_v,) = torch.autograd.grad(w, v, grad_w)
    other = 1 - dim
    dots = (grad_v * v).sum(dim=other)
    # |grad_v| <= |g| |grad_w| / ||v||, so the dot product is bounded by |g| |grad_w| (times eps)
    bound = 1e-12 * (g.abs().reshape(-1) * grad_w.norm(dim=other) + 1.0)
    assert (dots.abs() <= bound).all()


@pytest.mark.parametrize("dim", [0, None])
def test_zero_vector_gives_finite_output_and_gradients(dim: int | None) -> None:
    v = torch.randn(3, 4)
    v[1] = 0.0
    if dim is None:
        v.zero_()
    v.requires_grad_(True)
    g = torch.ones(F.g_shape(v.shape, dim), requires_grad=True)
    w = F.weight_norm(v, g, dim)
    assert torch.isfinite(w).all()
    assert (w[1] == 0).all()
    w.sum().backward()
    assert v.grad is not None
    assert g.grad is not None
    assert torch.isfinite(v.grad).all()
    assert torch.isfinite(g.grad).all()
    # torch's own weight norm gives NaN here: the defect this guards against
    assert torch.isnan(torch._weight_norm(v.detach(), g.detach(), 0 if dim == 0 else -1)).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_norms_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    # 4096 elements of 1.0 in a row: a half-precision sum of squares would be inexact
    v = (torch.rand(2, 4096) + 0.5).to(dtype)
    norm = F.norm_except_dim(v, 0)
    assert norm.dtype == torch.float32
    expected = v.double().norm(dim=1, keepdim=True)
    torch.testing.assert_close(norm.double(), expected, rtol=1e-6, atol=0)
    g = torch.full((2, 1), 3.0)
    w = F.weight_norm(v, g, 0)
    assert w.dtype == dtype
    torch.testing.assert_close(w.float().norm(dim=1), torch.full((2,), 3.0), rtol=1e-2, atol=0)


def test_g_shape_and_grouped_layout() -> None:
    assert F.g_shape((8, 3, 5), 0) == (8, 1, 1)
    assert F.g_shape((8, 3, 5), None) == ()  # torch's: a 0-d g for the whole tensor
    assert F.g_shape((6, 4, 3), 1, groups=2) == (2, 1, 4, 1)
    v = torch.randn(6, 4, 3, dtype=torch.float64)
    norms = F.norm_except_dim(v, 1, groups=2)
    for k in range(2):
        for j in range(4):
            torch.testing.assert_close(norms[k, 0, j, 0], v[3 * k : 3 * k + 3, j].norm())


def test_bad_arguments_raise_clear_errors() -> None:
    v = torch.randn(3, 4)
    with pytest.raises(IndexError, match=r"expected an int in \[-2, 1\].*got 2"):
        F.weight_norm(v, torch.ones(3, 1), dim=2)
    with pytest.raises(TypeError, match="dim must be an int or None"):
        F.normalize_dim(1.0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be >= 0"):
        F.weight_norm(v, torch.ones(3, 1), eps=-1.0)
    with pytest.raises(ValueError, match="divisible by groups"):
        F.weight_norm(torch.randn(5, 2, 3), torch.ones(2, 1, 2, 1), dim=1, groups=2)


def test_empty_tensor_does_not_crash() -> None:
    """Regression: torch's fused kernel dies of SIGFPE on an empty tensor (an FSDP2 shard of a
    layer with fewer rows than ranks); the result must be an empty weight and empty gradients."""
    v = torch.empty(0, 4, 7, requires_grad=True)
    g = torch.empty(0, 1, 1, requires_grad=True)
    w = F.weight_norm(v, g, 0)
    w.sum().backward()
    assert w.shape == v.shape
    assert v.grad is not None
    assert g.grad is not None
    assert v.grad.shape == v.shape
    assert g.grad.shape == g.shape


@pytest.mark.parametrize(
    ("shape", "dim", "groups", "dtype", "fused"),
    [
        ((4, 3), 0, 1, torch.float32, True),
        ((4, 3), 1, 1, torch.float64, True),
        ((4, 3, 2), 1, 1, torch.float32, False),
        ((4, 3, 2), 2, 1, torch.float32, True),
        ((4, 3), None, 1, torch.float32, False),
        ((6,), 0, 1, torch.float32, False),
        ((6, 2, 3), 1, 2, torch.float32, False),
        ((4, 3), 0, 1, torch.bfloat16, False),
        ((0, 3), 0, 1, torch.float32, False),
    ],
)
def test_one_kernel_choice_for_functional_modules_and_optimizer(
    shape: tuple[int, ...], dim: int | None, groups: int, dtype: torch.dtype, fused: bool
) -> None:
    """functional.kernel_for decides whether PyTorch's fused kernels run; the modules (through
    WeightNormSpec.weight) and the optimizer-level mode go through it: one dispatch."""
    from torch import nn

    from weightnorm.optim import _Entry

    spec = F.WeightNormSpec(shape, dim, groups)
    v = torch.randn(shape, dtype=dtype)
    g_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    g = torch.ones(spec.g_shape, dtype=g_dtype)
    assert (F.kernel_for(v, g, spec) is F.TORCH_FUSED) == fused
    entry = _Entry("w", nn.Parameter(v.clone()), spec)
    entry.write_weight()
    assert (entry.kernel is F.TORCH_FUSED) == fused
