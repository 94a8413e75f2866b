"""Weight-normalized layers: ``torch.nn`` layers with ``wn.weight_norm`` applied at construction.

Each class takes exactly the constructor arguments of its ``torch.nn`` counterpart (``device`` and
``dtype`` included), plus the keyword-only ``dim``, ``eps`` and ``gain`` of
:func:`weightnorm.weight_norm` (``gain=1.0``: EDM2's magnitude-preserving layer, a fixed gain and
no learned ``g``).
They are the same mechanism as ``wn.weight_norm(nn.Conv1d(...))``, not a second implementation:
the parameters are ``weight_g`` and ``weight_v``, ``layer.weight`` is always current, and
``wn.remove_weight_norm(layer)`` turns the layer into the plain ``torch.nn`` class.

Reference: Salimans & Kingma, "Weight Normalization", NeurIPS 2016.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ._reparam import PerOutput, _property, _reset_parameters, _WeightNormMixin, weight_norm
from .functional import DEFAULT_EPS

__all__ = [
    "WNConv1d",
    "WNConv2d",
    "WNConv3d",
    "WNConvTranspose1d",
    "WNConvTranspose2d",
    "WNConvTranspose3d",
    "WNLinear",
]


class _WNLayer(_WeightNormMixin):
    weight = _property("weight")
    _wn_props: ClassVar[frozenset[str]] = frozenset({"weight"})
    reset_parameters = _reset_parameters

    def __init__(
        self,
        *args: Any,
        dim: int | PerOutput | None = "output",
        eps: float = DEFAULT_EPS,
        gain: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        weight_norm(self, "weight", dim=dim, eps=eps, gain=gain)  # type: ignore[type-var]


class WNLinear(_WNLayer, nn.Linear):
    """:class:`torch.nn.Linear` with a weight-normalized weight (one g per output feature).

    Example::

        >>> import torch, weightnorm as wn
        >>> layer = wn.WNLinear(4, 3)
        >>> layer(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    _wn_plain = nn.Linear


class WNConv1d(_WNLayer, nn.Conv1d):
    """:class:`torch.nn.Conv1d` with a weight-normalized weight (one g per output channel).

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.WNConv1d(2, 4, 3, padding=1)(torch.randn(1, 2, 16)).shape
        torch.Size([1, 4, 16])
    """

    _wn_plain = nn.Conv1d


class WNConv2d(_WNLayer, nn.Conv2d):
    """:class:`torch.nn.Conv2d` with a weight-normalized weight (one g per output channel).

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.WNConv2d(3, 8, 3)(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 8, 6, 6])
    """

    _wn_plain = nn.Conv2d


class WNConv3d(_WNLayer, nn.Conv3d):
    """:class:`torch.nn.Conv3d` with a weight-normalized weight (one g per output channel).

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.WNConv3d(1, 2, 3)(torch.randn(1, 1, 4, 4, 4)).shape
        torch.Size([1, 2, 2, 2, 2])
    """

    _wn_plain = nn.Conv3d


class WNConvTranspose1d(_WNLayer, nn.ConvTranspose1d):
    """:class:`torch.nn.ConvTranspose1d` with one g per *output* channel (its weight's dim 1;
    PyTorch's default normalizes per input channel).

    Example::

        >>> import torch, weightnorm as wn
        >>> layer = wn.WNConvTranspose1d(4, 6, 4, stride=2)
        >>> layer.weight_g.shape
        torch.Size([1, 6, 1])
    """

    _wn_plain = nn.ConvTranspose1d


class WNConvTranspose2d(_WNLayer, nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` with one g per output channel.

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.WNConvTranspose2d(4, 6, 2, stride=2)(torch.randn(1, 4, 3, 3)).shape
        torch.Size([1, 6, 6, 6])
    """

    _wn_plain = nn.ConvTranspose2d


class WNConvTranspose3d(_WNLayer, nn.ConvTranspose3d):
    """:class:`torch.nn.ConvTranspose3d` with one g per output channel.

    Example::

        >>> import torch, weightnorm as wn
        >>> wn.WNConvTranspose3d(2, 4, 2, groups=2).weight_g.shape
        torch.Size([2, 1, 2, 1, 1, 1])
    """

    _wn_plain = nn.ConvTranspose3d
