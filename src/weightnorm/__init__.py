"""weightnorm: weight normalization (Salimans & Kingma, 2016) for PyTorch, done right.

``w = g * v / ||v||`` with exact gradients, for any parameter of any module, with the paper's
data-dependent initialization and mean-only batch normalization.

Example::

    >>> import torch, weightnorm as wn
    >>> net = wn.apply_weight_norm(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()))
    >>> net[0].weight_g.shape
    torch.Size([8, 1])
"""

from __future__ import annotations

import importlib.metadata as _metadata

from . import dynamics, functional, optim
from ._errors import WeightNormError
from ._model import DEFAULT_LAYERS, apply_weight_norm, fold, replace_torch_weight_norm
from ._reparam import (
    ComputedWeight,
    WeightNormSpec,
    cached,
    default_dim,
    is_weight_normed,
    remove_weight_norm,
    weight_norm,
    weight_norm_specs,
)
from .batchnorm import (
    MeanOnlyBatchNorm1d,
    MeanOnlyBatchNorm2d,
    MeanOnlyBatchNorm3d,
    SyncMeanOnlyBatchNorm,
)
from .dynamics import (
    AngularStep,
    AngularStepTracker,
    ForcedWeightNorm,
    WeightNormStats,
    force_weight_norm,
    weight_norm_stats,
)
from .formats import convert_state_dict
from .init import data_dependent_init, data_dependent_init_plain
from .layers import (
    WNConv1d,
    WNConv2d,
    WNConv3d,
    WNConvTranspose1d,
    WNConvTranspose2d,
    WNConvTranspose3d,
    WNLinear,
)

try:
    #: The installed version: ``version`` in pyproject.toml, read from the package's metadata.
    __version__: str = _metadata.version("weightnorm")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

_REMOVED = {
    "exact_gradients": "every path now gives exact gradients of every order: drop the `with` block",
    "HigherOrderGradientError": "it is never raised any more: every path gives exact gradients "
    "of every order",
}


def __getattr__(name: str) -> object:
    """A clear error for the names that are gone (see CHANGELOG.md)."""
    if name in _REMOVED:
        raise AttributeError(f"weightnorm.{name} was removed in 0.2.0: {_REMOVED[name]}")
    raise AttributeError(f"module 'weightnorm' has no attribute {name!r}")


__all__ = [
    "AngularStep",
    "AngularStepTracker",
    "ComputedWeight",
    "DEFAULT_LAYERS",
    "ForcedWeightNorm",
    "MeanOnlyBatchNorm1d",
    "MeanOnlyBatchNorm2d",
    "MeanOnlyBatchNorm3d",
    "SyncMeanOnlyBatchNorm",
    "WNConv1d",
    "WNConv2d",
    "WNConv3d",
    "WNConvTranspose1d",
    "WNConvTranspose2d",
    "WNConvTranspose3d",
    "WNLinear",
    "WeightNormError",
    "WeightNormSpec",
    "WeightNormStats",
    "__version__",
    "apply_weight_norm",
    "cached",
    "convert_state_dict",
    "data_dependent_init",
    "data_dependent_init_plain",
    "default_dim",
    "dynamics",
    "fold",
    "force_weight_norm",
    "functional",
    "is_weight_normed",
    "optim",
    "remove_weight_norm",
    "replace_torch_weight_norm",
    "weight_norm",
    "weight_norm_specs",
    "weight_norm_stats",
]
