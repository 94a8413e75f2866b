"""Shared fixtures: layer factories with matching inputs, used across the test files."""

from __future__ import annotations

import os

import torch

# The Triton kernels of the device path run on CPU tensors in Triton's interpreter when there is
# no GPU (test_device_paths). Triton reads this when it is first imported, which torch may do
# while any test module is collected: set it here, before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from torch import nn


@dataclass(frozen=True)
class Case:
    """A layer type, how to build it, an input for it, and its per-output-unit norm."""

    id: str
    build: Callable[..., nn.Module]
    input: Callable[..., torch.Tensor]
    # unit_norms(w) -> one norm per output unit, computed independently of the library
    unit_norms: Callable[[torch.Tensor], torch.Tensor]


def rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1)


def columns(w: torch.Tensor) -> torch.Tensor:
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)


def grouped_transposed(groups: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def norms(w: torch.Tensor) -> torch.Tensor:
        cin, cout_g = w.shape[0], w.shape[1]
        out = []
        for k in range(groups):  # output channel k*cout_g + j reads rows of group k, column j
            block = w[k * cin // groups : (k + 1) * cin // groups]
            out.extend(block[:, j].norm() for j in range(cout_g))
        return torch.stack(out)

    return norms


def _dtype(dtype: torch.dtype | None) -> dict[str, torch.dtype]:
    return {} if dtype is None else {"dtype": dtype}


CASES = [
    Case("linear", lambda dt=None: nn.Linear(5, 4, **_dtype(dt)), lambda: torch.randn(3, 5), rows),
    Case(
        "conv1d",
        lambda dt=None: nn.Conv1d(3, 4, 3, padding=1, **_dtype(dt)),
        lambda: torch.randn(2, 3, 7),
        rows,
    ),
    Case(
        "conv2d",
        lambda dt=None: nn.Conv2d(2, 4, 3, **_dtype(dt)),
        lambda: torch.randn(2, 2, 5, 5),
        rows,
    ),
    Case(
        "conv3d",
        lambda dt=None: nn.Conv3d(2, 3, 2, **_dtype(dt)),
        lambda: torch.randn(1, 2, 3, 3, 3),
        rows,
    ),
    Case(
        "conv1d_grouped",
        lambda dt=None: nn.Conv1d(4, 6, 3, groups=2, **_dtype(dt)),
        lambda: torch.randn(2, 4, 7),
        rows,
    ),
    Case(
        "convtranspose1d",
        lambda dt=None: nn.ConvTranspose1d(3, 5, 4, stride=2, **_dtype(dt)),
        lambda: torch.randn(2, 3, 6),
        columns,
    ),
    Case(
        "convtranspose2d",
        lambda dt=None: nn.ConvTranspose2d(2, 3, 2, stride=2, **_dtype(dt)),
        lambda: torch.randn(1, 2, 3, 3),
        columns,
    ),
    Case(
        "convtranspose3d",
        lambda dt=None: nn.ConvTranspose3d(2, 3, 2, **_dtype(dt)),
        lambda: torch.randn(1, 2, 2, 2, 2),
        columns,
    ),
    Case(
        "convtranspose1d_grouped",
        lambda dt=None: nn.ConvTranspose1d(4, 6, 3, groups=2, **_dtype(dt)),
        lambda: torch.randn(2, 4, 5),
        grouped_transposed(2),
    ),
]

CASE_IDS = [c.id for c in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request: pytest.FixtureRequest) -> Case:
    torch.manual_seed(0)
    return request.param  # type: ignore[no-any-return]
