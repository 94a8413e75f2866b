"""The paper's CIFAR-10 network (a modified ConvPool-CNN-C), in 1-D and 2-D, any width.

Paper (section 5): Gaussian input noise; 3 x [3x3 conv 96, leaky ReLU 0.1]; 2x2 max-pool;
dropout 0.5; 3 x [3x3 conv 192]; 2x2 max-pool; dropout 0.5; 3x3 conv 192 (no padding);
2 x [1x1 conv 192]; global average pooling; dense 10. Here every conv is followed by the chosen
normalization layer (none, batch norm, or mean-only batch norm); convolutions followed by a
normalization layer have no bias of their own.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

import weightnorm as wn

__all__ = ["GaussianNoise", "Norm", "paper_cnn"]

Norm = Literal["none", "bn", "mobn"]


class GaussianNoise(nn.Module):
    """Adds ``N(0, std^2)`` noise to the input in training mode (paper: std 0.15)."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.std > 0:
            return x + self.std * torch.randn_like(x)
        return x

    def extra_repr(self) -> str:
        return f"std={self.std}"


def _norm_layer(norm: Norm, channels: int, dims: int) -> nn.Module:
    if norm == "none":
        return nn.Identity()
    if norm == "bn":
        return nn.BatchNorm1d(channels) if dims == 1 else nn.BatchNorm2d(channels)
    if norm == "mobn":
        return wn.MeanOnlyBatchNorm1d(channels) if dims == 1 else wn.MeanOnlyBatchNorm2d(channels)
    raise ValueError(f"norm must be 'none', 'bn' or 'mobn', got {norm!r}")


def paper_cnn(
    in_channels: int,
    num_classes: int,
    *,
    dims: int = 1,
    widths: tuple[int, int] = (96, 192),
    dropout: float = 0.5,
    noise: float = 0.15,
    norm: Norm = "none",
    pool: bool = True,
) -> nn.Sequential:
    """Build the paper's CIFAR-10 network for ``dims``-dimensional inputs.

    Args:
        in_channels: input channels.
        num_classes: outputs of the final dense layer.
        dims: 1 for sequences ``(N, C, L)``, 2 for images ``(N, C, H, W)``.
        widths: channels of the first and second stage (paper: 96, 192).
        dropout: dropout after each pooling (paper: 0.5).
        noise: std of the Gaussian input noise (paper: 0.15).
        norm: normalization after every conv: ``"none"``, ``"bn"`` or ``"mobn"``.
        pool: max-pool between stages (off for tiny inputs such as 8x8 digits).

    Example::

        >>> net = paper_cnn(1, 10, widths=(8, 16))
        >>> net(torch.randn(2, 1, 40)).shape
        torch.Size([2, 10])
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    max_pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    global_pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
    bias = norm == "none"
    c1, c2 = widths
    layers: list[nn.Module] = [GaussianNoise(noise)]

    def block(cin: int, cout: int, kernel: int, padding: int) -> None:
        layers.extend(
            [conv(cin, cout, kernel, padding=padding, bias=bias), _norm_layer(norm, cout, dims)]
        )
        layers.append(nn.LeakyReLU(0.1))

    for i in range(3):
        block(in_channels if i == 0 else c1, c1, 3, 1)
    if pool:
        layers.append(max_pool(2))
    layers.append(nn.Dropout(dropout))
    for i in range(3):
        block(c1 if i == 0 else c2, c2, 3, 1)
    if pool:
        layers.append(max_pool(2))
    layers.append(nn.Dropout(dropout))
    block(c2, c2, 3, 0)
    block(c2, c2, 1, 0)
    block(c2, c2, 1, 0)
    layers.extend([global_pool, nn.Flatten(), nn.Linear(c2, num_classes)])
    return nn.Sequential(*layers)
