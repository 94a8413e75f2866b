"""Every implementation of weight norm that the path selector (``functional._path``) can take,
held to the same properties, and what each costs per training step in ATen ops and host syncs.

Paths: ``cpu-fused`` (PyTorch's fused CPU kernels), ``kernel`` (the ``weightnorm::weight_norm``
custom op and its Triton kernels), ``composite`` (an autograd Function with the closed-form
backward), ``traced`` (plain differentiable ops, for compile/export/functorch). Each test forces
a path with ``functional._force_path``, which raises where the path cannot run, so a test never
silently checks another one.

The ``kernel`` path runs on a CUDA device when there is one. Without one, its Triton kernels run
on CPU tensors in Triton's interpreter: this module sets ``TRITON_INTERPRET=1`` when it is
imported (at collection, before any test runs) unless it is already set. weightnorm builds the
kernels lazily, when a tensor first needs them, so they are built for the interpreter. Without
Triton installed those tests are skipped.
"""

from __future__ import annotations

import collections
import importlib.util
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
from test_functional import (  # the same hypothesis strategy and float64 formula
    direction_and_magnitude,
    reference_weight_norm,
)
from weightnorm import functional as F

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before weightnorm first builds the kernels
HAS_TRITON = importlib.util.find_spec("triton") is not None
KERNEL_DEVICE = "cuda" if HAS_CUDA else "cpu"
NO_TRITON = pytest.mark.skipif(
    not HAS_TRITON,
    reason="triton is not installed (the test extra installs it on Linux x86_64): the kernel "
    "path cannot run here",
)


def needs_kernels() -> None:
    """Skip unless the Triton kernels run on KERNEL_DEVICE in this process."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if not F._kernels_run_on(torch.device(KERNEL_DEVICE)):
        pytest.skip(
            f"the Triton kernels cannot run on {KERNEL_DEVICE} tensors in this process "
            "(on the CPU they need TRITON_INTERPRET=1 set before weightnorm first builds them)"
        )


def device_of(path: str) -> str:
    if path == "kernel":
        needs_kernels()
        return KERNEL_DEVICE
    return "cpu"


def path_param(path: str, *values: Any, id: str | None = None) -> Any:
    return pytest.param(path, *values, marks=[NO_TRITON] if path == "kernel" else [], id=id or path)


ALL_PATHS = [path_param(p) for p in F.PATHS]

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


def supports(path: str, shape: tuple[int, ...], dim: int | None, groups: int) -> bool:
    if path == "cpu-fused":
        return F._fused_layout(len(shape), dim, groups)
    if path == "kernel":
        return groups == 1
    return True


def path_cases(
    cases: list[tuple[tuple[int, ...], int | None, int]] = CASES,
    paths: tuple[str, ...] = F.PATHS,
) -> list[Any]:
    return [
        path_param(p, s, d, k, id=f"{p}-{'x'.join(map(str, s))}-dim{d}-groups{k}")
        for p in paths
        for s, d, k in cases
        if supports(p, s, d, k)
    ]


def forced(
    path: str, v: torch.Tensor, g: torch.Tensor, dim: int | None, groups: int = 1
) -> torch.Tensor:
    with F._force_path(path):  # type: ignore[arg-type]
        return F.weight_norm(v, g, dim, groups=groups)


def reference(v: np.ndarray, g: np.ndarray, dim: int | None, groups: int = 1) -> np.ndarray:
    """w = g v / ||v|| unit by unit in float64 numpy, independent of torch's reductions
    (test_functional's formula; here also for grouped layouts)."""
    if groups == 1:
        return reference_weight_norm(v, g, dim)
    # units are (group k, column j) of (groups, in/groups, out/groups, ...)
    x = v.reshape(groups, v.shape[0] // groups, *v.shape[1:])
    out = np.empty_like(x)
    gg = g.reshape(groups, -1)
    for k in range(groups):
        for j in range(x.shape[2]):
            unit = x[k, :, j]
            out[k, :, j] = gg[k, j] * unit / np.sqrt((unit**2).sum())
    return out.reshape(v.shape)


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
    g_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return v.to(device=device, dtype=dtype), g.to(device=device, dtype=g_dtype)


# --------------------------------------------------------------------------------------------
# The selector
# --------------------------------------------------------------------------------------------


def test_selector_default_choices() -> None:
    cpu = torch.randn(4, 3)
    assert F._path(cpu, torch.ones(4, 1), 0) == "cpu-fused"
    assert F._path(cpu, torch.ones(1, 3), 1) == "cpu-fused"
    assert F._path(torch.randn(4, 3, 2), torch.ones(1, 3, 1), 1) == "composite"  # middle dim
    assert F._path(cpu.half(), torch.ones(4, 1), 0) == "composite"  # half on the CPU
    assert F._path(cpu, torch.ones(4, 1, dtype=torch.float64), 0) == "composite"  # g dtype
    assert F._path(torch.empty(0, 3), torch.ones(0, 1), 0) == "composite"  # SIGFPE in torch
    assert F._path(torch.randn(6, 2, 3), torch.ones(2, 1, 2, 1), 1, groups=2) == "composite"
    with F.exact_gradients():
        assert F._path(cpu, torch.ones(4, 1), 0) == "composite"

    meta = torch.empty(4, 3, 2, device="meta")
    g_meta = torch.ones(1, 3, 1, device="meta")
    assert F._path(meta, g_meta, 1) == "kernel"  # the path a GPU takes (any dim)
    assert F._path(meta, torch.ones(1, 1, 1, device="meta"), None) == "kernel"
    assert F._path(meta.bfloat16(), g_meta, 1) == "kernel"  # (g float32 for half weights)
    assert F._path(meta, torch.ones(3, 1, device="meta"), 1) == "composite"  # g broadcasts
    six = torch.empty(6, 2, 3, device="meta")
    assert F._path(six, torch.ones(2, 1, 2, 1, device="meta"), 1, groups=2) == "composite"
    with F.exact_gradients():
        assert F._path(meta, g_meta, 1) == "composite"


def test_selector_never_picks_the_kernel_for_cpu_tensors() -> None:
    """Triton's interpreter is for tests: unforced, CPU tensors keep the CPU paths."""
    v = torch.randn(4, 3, 2)
    assert F._path(v, torch.ones(1, 3, 1), 1) == "composite"
    assert F._path(v.float(), torch.ones(4, 1, 1), 0) == "cpu-fused"


def test_selector_traced_under_transforms_and_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    v, g = torch.randn(4, 3), torch.ones(4, 1)
    seen: list[str] = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(F._path(x, g, 0))
        return x

    torch.func.vmap(record)(v.unsqueeze(0).expand(2, 4, 3))
    assert seen == ["traced"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert F._path(v, g, 0) == "traced"
    with F._force_path("kernel"):  # (a traced graph gets plain ops whatever is forced)
        assert F._path(v, g, 0) == "traced"


def test_force_path_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="path must be one of"), F._force_path("gpu"):  # type: ignore[arg-type]
        pass
    with F._force_path("cpu-fused"), pytest.raises(ValueError, match="'cpu-fused' needs"):
        F.weight_norm(torch.randn(4, 3).half(), torch.ones(4, 1), 0)
    with F._force_path("kernel"), pytest.raises(ValueError, match="'kernel' needs"):
        F.weight_norm(torch.randn(6, 2, 3), torch.ones(2, 1, 2, 1), 1, groups=2)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_forced_path_is_the_one_taken(path: str) -> None:
    device = device_of(path)
    v = torch.randn(4, 3, device=device, requires_grad=True)
    g = torch.ones(4, 1, device=device, requires_grad=True)
    w = forced(path, v, g, 0)
    name = w.grad_fn.name()  # type: ignore[union-attr]
    expected = {
        "cpu-fused": "WeightNormInterfaceBackward0",
        "kernel": "GeneratedBackwardFor_weightnorm_weight_norm_defaultBackward",
        "composite": "_WeightNormFunctionBackward",
    }
    if path == "traced":
        assert name not in expected.values()
        # plain differentiable ops: g * v / max(||v||, eps), each with its own backward node
        nodes, todo = set(), [w.grad_fn]
        while todo:
            node = todo.pop()
            if node is not None and node.name() not in nodes:
                nodes.add(node.name())
                todo.extend(n for n, _ in node.next_functions)
        assert {"LinalgVectorNormBackward0", "ClampMinBackward0", "MulBackward0"} <= nodes
        assert not nodes & set(expected.values())
    else:
        assert name == expected[path]


# --------------------------------------------------------------------------------------------
# The same properties on every path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "shape", "dim", "groups"), path_cases())
def test_values_against_independent_formula(
    path: str, shape: tuple[int, ...], dim: int | None, groups: int
) -> None:
    v, g = inputs(shape, dim, groups, device=device_of(path))
    w = forced(path, v, g, dim, groups)
    assert w.shape == v.shape
    assert w.dtype == v.dtype
    expected = reference(v.cpu().numpy(), g.cpu().numpy(), dim, groups)
    np.testing.assert_allclose(w.detach().cpu().numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("path", "shape", "dim", "groups"), path_cases())
def test_gradcheck_float64(path: str, shape: tuple[int, ...], dim: int | None, groups: int) -> None:
    v, g = inputs(shape, dim, groups, device=device_of(path))
    v.requires_grad_(True)
    g.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: forced(path, a, b, dim, groups), (v, g))


@pytest.mark.parametrize(
    ("path", "shape", "dim", "groups"), path_cases(paths=("composite", "traced"))
)
def test_gradgradcheck_float64(
    path: str, shape: tuple[int, ...], dim: int | None, groups: int
) -> None:
    v, g = inputs(shape, dim, groups)
    v.requires_grad_(True)
    g.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda a, b: forced(path, a, b, dim, groups), (v, g))


@pytest.mark.parametrize("path", [path_param("cpu-fused"), path_param("kernel")])
def test_fused_paths_refuse_create_graph(path: str) -> None:
    """Neither fused path differentiates its own backward: a graph of it is refused, and
    exact_gradients() (the composite path) gives exact second derivatives instead."""
    device = device_of(path)
    v, g = inputs((4, 3), 0, device=device)
    v.requires_grad_(True)
    g.requires_grad_(True)
    with pytest.raises(F.HigherOrderGradientError, match="exact_gradients"):
        torch.autograd.grad(forced(path, v, g, 0).pow(3).sum(), v, create_graph=True)
    (first,) = torch.autograd.grad(forced(path, v, g, 0).pow(3).sum(), v)  # first order: fine
    with F.exact_gradients():
        w = F.weight_norm(v, g, 0)
    (exact,) = torch.autograd.grad(w.pow(3).sum(), v, create_graph=True)
    torch.testing.assert_close(exact.detach(), first)


@pytest.mark.parametrize(
    ("path", "shape", "dim", "groups"),
    path_cases([c for c in CASES if c[2] == 1]),
)
def test_paper_gradient_formulas(
    path: str, shape: tuple[int, ...], dim: int | None, groups: int
) -> None:
    """Paper eq. 3, unit by unit: grad_g = grad_w . v/||v||,
    grad_v = g/||v|| grad_w - g grad_g/||v||^2 v."""
    v, g = inputs(shape, dim, device=device_of(path), seed=3)
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = forced(path, v, g, dim)
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


@pytest.mark.parametrize("path", ALL_PATHS)
@settings(max_examples=30, deadline=None)
@given(data=direction_and_magnitude(), c=st.floats(1e-3, 1e3))
def test_w_invariant_to_scaling_v(
    path: str, data: tuple[torch.Tensor, torch.Tensor, int], c: float
) -> None:
    device = device_of(path)
    v, g, dim = (t.to(device) if isinstance(t, torch.Tensor) else t for t in data)
    torch.testing.assert_close(forced(path, c * v, g, dim), forced(path, v, g, dim))


@pytest.mark.parametrize("path", ALL_PATHS)
@settings(max_examples=30, deadline=None)
@given(data=direction_and_magnitude())
def test_norm_of_w_is_abs_g(path: str, data: tuple[torch.Tensor, torch.Tensor, int]) -> None:
    device = device_of(path)
    v, g, dim = data
    w = forced(path, v.to(device), g.to(device), dim).cpu()
    torch.testing.assert_close(w.norm(dim=1 - dim), g.abs().reshape(-1))


@pytest.mark.parametrize("path", ALL_PATHS)
@settings(max_examples=30, deadline=None)
@given(data=direction_and_magnitude(), seed=st.integers(0, 2**31 - 1))
def test_grad_v_orthogonal_to_v(
    path: str, data: tuple[torch.Tensor, torch.Tensor, int], seed: int
) -> None:
    device = device_of(path)
    v, g, dim = data
    vd = v.to(device).requires_grad_(True)
    w = forced(path, vd, g.to(device), dim)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype)
    (grad_v,) = torch.autograd.grad(w, vd, grad_w.to(device))
    dots = (grad_v.cpu() * v).sum(dim=1 - dim)
    # |grad_v| <= |g| |grad_w| / ||v||, so the dot product is bounded by |g| |grad_w| (times eps)
    bound = 1e-12 * (g.abs().reshape(-1) * grad_w.norm(dim=1 - dim) + 1.0)
    assert (dots.abs() <= bound).all()


ZERO_CASES = [((3, 4), 0), ((3, 4), 1), ((3, 4), None), ((2, 3, 4), 1)]


@pytest.mark.parametrize(
    ("path", "shape", "dim", "dtype"),
    [
        path_param(p, s, d, dt, id=f"{p}-{'x'.join(map(str, s))}-dim{d}-{str(dt)[6:]}")
        for p in F.PATHS
        for s, d in ZERO_CASES
        for dt in (torch.float32, torch.float64, torch.bfloat16)
        if supports(p, s, d, 1) and not (p == "cpu-fused" and dt == torch.bfloat16)
    ],
)
def test_zero_units_are_finite(
    path: str, shape: tuple[int, ...], dim: int | None, dtype: torch.dtype
) -> None:
    """A zero unit gives w = 0 there and finite gradients (torch's own weight norm: NaN). The
    cpu-fused path sees the norm at or below eps and takes the composite form."""
    v, g = inputs(shape, dim, dtype=dtype, device=device_of(path))
    if dim is None:
        v.zero_()
    else:
        v.select(dim, 1).zero_()
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = forced(path, v, g, dim)
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
    ("path", "dim"),
    [
        path_param(p, d, id=f"{p}-dim{d}")
        for p in F.PATHS
        for d in (0, None)
        if supports(p, (3, 4), d, 1)
    ],
)
def test_units_below_eps_are_linear(path: str, dim: int | None) -> None:
    """Below eps the norm is the constant eps: w = g v/eps, grad_v = g/eps grad_w (the norm's
    own gradient is zero there), grad_g = grad_w . v/eps. Above it, the usual formula."""
    eps = 1e-3
    v, g = inputs((3, 4), dim, device=device_of(path), seed=9)
    with torch.no_grad():
        (v if dim is None else v[1]).mul_(1e-5)  # norm about 2e-5, below eps
    v.requires_grad_(True)
    g.requires_grad_(True)
    with F._force_path(path):  # type: ignore[arg-type]
        w = F.weight_norm(v, g, dim, eps)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(10), dtype=w.dtype)
    grad_v, grad_g = torch.autograd.grad(w, (v, g), grad_w.to(w.device))
    vd, gd = v.detach().cpu(), g.detach().cpu()
    rows = [slice(None)] if dim is None else [1]
    for r in rows:
        gr = gd.reshape(-1)[0 if dim is None else r]
        torch.testing.assert_close(w.detach().cpu()[r], gr * vd[r] / eps)
        torch.testing.assert_close(grad_v.cpu()[r], gr / eps * grad_w[r])
        torch.testing.assert_close(
            grad_g.cpu().reshape(-1)[0 if dim is None else r], (grad_w[r] * vd[r]).sum() / eps
        )
    if dim == 0:  # the other rows are above eps: eq. 3 with their own norms
        ref_v = vd.clone().requires_grad_(True)
        ref = ref_v * (gd / ref_v.norm(dim=1, keepdim=True).clamp_min(eps))
        (expected,) = torch.autograd.grad(ref, ref_v, grad_w)
        torch.testing.assert_close(grad_v.cpu()[[0, 2]], expected[[0, 2]])


@pytest.mark.parametrize(
    ("path", "dtype"),
    [
        path_param(p, dt, id=f"{p}-{str(dt)[6:]}")
        for p in ("kernel", "composite", "traced")
        for dt in (torch.float16, torch.bfloat16)
    ],
)
def test_half_precision_norms_in_float32(path: str, dtype: torch.dtype) -> None:
    """Half v, float32 g (as the modules keep it): w in v's dtype, close to the float64 formula
    on the same values; grad_g float32, grad_v in v's dtype."""
    device = device_of(path)
    v, g = inputs((3, 700), 0, dtype=dtype, device=device, seed=6)  # 700 halves in one unit
    v.requires_grad_(True)
    g.requires_grad_(True)
    w = forced(path, v, g, 0)
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


@pytest.mark.parametrize("path", ALL_PATHS)
def test_module_training_step_on_every_path(path: str) -> None:
    """A weight-normalized Linear (the module path: _reparam calls _weight_norm_core with its
    precomputed layout) gives the gradients of the float64 formula on every path."""
    device = device_of(path)
    torch.manual_seed(0)
    layer = wn.weight_norm(nn.Linear(5, 4, dtype=torch.float64)).to(device)
    x = torch.randn(3, 5, dtype=torch.float64, device=device)
    with F._force_path(path):  # type: ignore[arg-type]
        layer(x).pow(2).sum().backward()
    v = layer.weight_v.detach().clone().requires_grad_(True)
    g = layer.weight_g.detach().clone().requires_grad_(True)
    w = v * (g / v.norm(dim=1, keepdim=True))
    nn.functional.linear(x, w, layer.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(layer.weight_v.grad, v.grad)
    torch.testing.assert_close(layer.weight_g.grad, g.grad)


# --------------------------------------------------------------------------------------------
# The kernels: layouts, and the custom ops as PyTorch sees them
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
def test_kernel_layouts_match_the_composite_form(
    make: Callable[[], torch.Tensor], dim: int | None, dense: bool
) -> None:
    """Tiles, loops and strides: dense tensors in any dim order are addressed in place (w in
    the same layout); others are copied first. Checked against the composite path in float64,
    with an expanded (stride 0) gradient as well as a dense one."""
    needs_kernels()
    v0 = make()
    g0 = torch.rand(F.g_shape(v0.shape, dim), dtype=torch.float64) + 0.5
    results = []
    for path, device in (("kernel", KERNEL_DEVICE), ("composite", "cpu")):
        v = v0.to(device).requires_grad_(True)
        g = g0.to(device).requires_grad_(True)
        w = forced(path, v, g, dim)
        grad_w = torch.linspace(-1, 1, w.numel(), dtype=w.dtype).reshape(w.shape).to(device)
        grads = torch.autograd.grad(w, (v, g), grad_w)
        expanded = torch.autograd.grad(forced(path, v, g, dim).sum(), (v, g))
        results.append((w, *grads, *expanded))
        if path == "kernel" and dense:
            assert w.stride() == v.stride()
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got.detach().cpu(), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("where", [pytest.param("kernel", marks=NO_TRITON), "op-composite"])
@pytest.mark.parametrize("g_shape", [(1, 3, 1), (3,), (3, 1), (1, 1, 3)])
def test_custom_op_takes_any_g_with_one_element_per_unit(
    where: str, g_shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The op's contract: g holds one element per unit (row-major), whatever its shape; grad_g
    comes back in that shape. (The selector sends only keep-dim g to the kernel path.)"""
    if where == "kernel":
        needs_kernels()
        device = KERNEL_DEVICE
    else:
        device = "cpu"
        monkeypatch.setattr(F, "_kernels_run_on", lambda device: False)
    v, g = inputs((2, 3, 4), 1, device=device, seed=11)
    v.requires_grad_(True)
    g_any = g.detach().reshape(g_shape).requires_grad_(True)
    g.requires_grad_(True)
    w = torch.ops.weightnorm.weight_norm(v, g_any, 1, 1e-12)[0]
    expected = forced("composite", v, g, 1)
    torch.testing.assert_close(w, expected)
    grad_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(12), dtype=w.dtype)
    grad_v, grad_g = torch.autograd.grad(w, (v, g_any), grad_w.to(device))
    ref_v, ref_g = torch.autograd.grad(expected, (v, g), grad_w.to(device))
    assert grad_g.shape == g_any.shape
    torch.testing.assert_close(grad_v, ref_v)
    torch.testing.assert_close(grad_g.reshape(-1), ref_g.reshape(-1))


@pytest.mark.parametrize("where", [pytest.param("kernel", marks=NO_TRITON), "op-composite"])
def test_custom_ops_pass_opcheck(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.library.opcheck: schema, autograd registration, fake (meta) implementations,
    AOT dispatch; with the Triton kernels, and with the composite form the op falls back to on
    a device without kernels."""
    if where == "kernel":
        needs_kernels()
        device = KERNEL_DEVICE
    else:  # as on a device without kernels
        device = "cpu"
        monkeypatch.setattr(F, "_kernels_run_on", lambda device: False)
    v, g = inputs((4, 3, 5), 1, device=device)
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

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return direct(a, b).pow(3).sum()

    va, ga = v.clone().requires_grad_(True), g.clone().requires_grad_(True)
    vb, gb = v.clone().requires_grad_(True), g.clone().requires_grad_(True)
    torch.compile(loss, fullgraph=True, backend="aot_eager")(va, ga).backward()
    loss(vb, gb).backward()
    torch.testing.assert_close(va.grad, vb.grad)
    torch.testing.assert_close(ga.grad, gb.grad)


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
    layer: str,
    device: str,
    normalize: Callable[[nn.Module], nn.Module] | None,
    path: str | None = None,
) -> OpCounter:
    """The ops of one forward and backward of a freshly built layer."""
    torch.manual_seed(0)
    module, x = LAYERS[layer](device)
    if normalize is not None:
        module = normalize(module)
    counter = OpCounter()
    if path is None:
        with counter:
            module(x).sum().backward()
    else:
        with F._force_path(path), counter:  # type: ignore[arg-type]
            module(x).sum().backward()
    return counter


def extra_ops(
    layer: str, device: str, normalize: Callable[[nn.Module], nn.Module], path: str | None = None
) -> tuple[collections.Counter[str], int]:
    plain = step_ops(layer, device, None)
    normed = step_ops(layer, device, normalize, path)
    assert not plain.ops - normed.ops  # every op of the plain layer is still there
    return normed.ops - plain.ops, normed.syncs - plain.syncs


def torch_weight_norm(module: nn.Module) -> nn.Module:
    dim = 1 if isinstance(module, nn.ConvTranspose1d) else 0
    return nn.utils.parametrizations.weight_norm(module, dim=dim)


@pytest.mark.parametrize("layer", list(LAYERS))
def test_gpu_path_ops_per_step_on_meta(layer: str) -> None:
    """The path every non-CPU device with kernels takes (CUDA with Triton), counted on the meta
    device: per weight and training step, the forward op, the backward op and one detach (for
    the extra leaf g), 3 in all, what torch's own fused weight norm costs, and no host sync.
    Each op runs one Triton kernel on a GPU (test_kernel_ops_launch_one_kernel_each)."""
    ours, syncs = extra_ops(layer, "meta", wn.weight_norm)
    assert ours == collections.Counter(
        {"weightnorm.weight_norm": 1, "weightnorm.weight_norm_backward": 1, "aten.detach": 1}
    )
    assert syncs == 0
    theirs, their_syncs = extra_ops(layer, "meta", torch_weight_norm)
    assert their_syncs == 0
    if layer != "convtranspose1d":  # (torch fuses the first and last dims only)
        assert theirs == collections.Counter(
            {
                "aten._weight_norm_interface": 1,
                "aten._weight_norm_interface_backward": 1,
                "aten.detach": 1,
            }
        )
    assert sum(ours.values()) <= sum(theirs.values())


def test_cpu_path_ops_per_step() -> None:
    """The CPU hot path (float32): torch's fused kernels plus the eps check of their norms,
    one host read (``.item()``) per weight and forward: 5 ops, 1 sync. Kept on purpose: on the
    CPU a host read costs nothing and this path is the fastest measured."""
    ours, syncs = extra_ops("linear", "cpu", wn.weight_norm)
    assert ours == collections.Counter(
        {
            "aten._weight_norm_interface": 1,
            "aten.min": 1,
            "aten._local_scalar_dense": 1,
            "aten._weight_norm_interface_backward": 1,
            "aten.detach": 1,
        }
    )
    assert syncs == 1


def test_composite_path_ops_per_step_on_meta() -> None:
    """The fallback of devices without kernels (and CUDA without Triton, grouped ConvTranspose,
    exact_gradients): 4 ops forward, 8 backward, 1 detach; no host sync."""
    ours, syncs = extra_ops("linear", "meta", wn.weight_norm, path="composite")
    assert ours == collections.Counter(
        {
            "aten.linalg_vector_norm": 1,
            "aten.clamp_min": 1,
            "aten.div": 3,
            "aten.mul": 2,
            "aten.sum": 1,
            "aten.lt": 1,
            "aten.masked_fill_": 1,
            "aten.addcmul": 1,
            "aten.mul_": 1,
            "aten.detach": 1,
        }
    )
    assert sum(ours.values()) == 13
    assert syncs == 0


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
def test_ops_run_the_kernels_where_they_can(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a device with kernels, the ops call them (and nothing of the composite form)."""
    needs_kernels()
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
    forced("kernel", v, g, 0).sum().backward()
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
    """With no Triton importable: no kernels anywhere, CPU tensors cannot be forced onto the
    kernel path, and the meta device (fake implementations) and the CPU paths still work."""
    import torch._dynamo  # (imported now: it caches whether triton is installed)

    import weightnorm

    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.delitem(sys.modules, "weightnorm._kernels", raising=False)
    monkeypatch.delattr(weightnorm, "_kernels", raising=False)
    monkeypatch.setattr(F, "_kernels_imported", False)
    monkeypatch.setattr(F, "_kernel_mod", None)
    monkeypatch.setattr(F, "_CUDA_KERNELS", {})
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert F._kernel_module() is None
    assert not F._kernels_run_on(torch.device("cpu"))
    with F._force_path("kernel"), pytest.raises(ValueError, match="'kernel' needs"):
        F.weight_norm(torch.randn(4, 3), torch.ones(4, 1), 0)
    ours, syncs = extra_ops("linear", "meta", wn.weight_norm)
    assert sum(ours.values()) == 3
    assert syncs == 0
    layer = wn.weight_norm(nn.Linear(4, 3))
    layer(torch.randn(2, 4)).sum().backward()
    assert layer.weight_v.grad is not None
