"""CUDA: the same contract on a GPU (skipped where there is none; never required).

Set ``WEIGHTNORM_TEST_DEVICE`` to pick a device other than ``cuda``.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import weightnorm as wn

DEVICE = os.environ.get("WEIGHTNORM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    not (DEVICE.startswith("cuda") and torch.cuda.is_available()), reason="no CUDA device"
)


@pytest.mark.parametrize(
    "build",
    [
        lambda: nn.Linear(16, 8),
        lambda: nn.Conv1d(4, 8, 3, padding=1),
        lambda: nn.ConvTranspose1d(4, 6, 4, stride=2, groups=2),
    ],
    ids=["linear", "conv1d", "convtranspose1d-grouped"],
)
def test_gpu_matches_cpu(build: object) -> None:
    torch.manual_seed(0)
    cpu = wn.weight_norm(build())  # type: ignore[operator]
    gpu = copy.deepcopy(cpu).to(DEVICE)
    x = torch.randn(3, 16) if isinstance(cpu, nn.Linear) else torch.randn(3, 4, 10)
    out_cpu, out_gpu = cpu(x), gpu(x.to(DEVICE))
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-5, rtol=1e-4)
    out_cpu.sum().backward()
    out_gpu.sum().backward()
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_zero_row_is_finite_on_gpu() -> None:
    layer = nn.Linear(4, 3).to(DEVICE)
    with torch.no_grad():
        layer.weight[0] = 0.0
    wn.weight_norm(layer)
    out = layer(torch.randn(2, 4, device=DEVICE))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(layer.weight_v.grad).all()


def test_bf16_autocast_keeps_g_in_float32() -> None:
    layer = wn.WNConv1d(4, 8, 3, device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 4, 16, device=DEVICE))
    assert out.dtype == torch.bfloat16
    assert layer.weight_g.dtype == torch.float32
    out.float().sum().backward()
    assert layer.weight_g.grad is not None
    assert layer.weight_g.grad.dtype == torch.float32


def test_data_init_and_fold_on_gpu() -> None:
    torch.manual_seed(0)
    model = wn.apply_weight_norm(
        nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 3))
    ).to(DEVICE)
    x = torch.randn(32, 2, 20, device=DEVICE)
    wn.data_dependent_init(model, x)
    out = model[0](x)
    torch.testing.assert_close(
        out.std((0, 2), unbiased=False), torch.ones(8, device=DEVICE), atol=1e-3, rtol=1e-3
    )
    expected = model(x)
    wn.fold(model)
    torch.testing.assert_close(model(x), expected)
