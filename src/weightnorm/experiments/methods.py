"""The parameterizations compared by the paper, each a named recipe applied to a model factory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

import weightnorm as wn

from .models import Norm

__all__ = ["METHODS", "Method", "build_method"]


@dataclass(frozen=True)
class Method:
    """A parameterization: the normalization layer, weight norm or not, data-dependent init."""

    name: str
    norm: Norm
    weight_norm: bool
    data_init: bool
    label: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("normal-init", "none", False, True, "normal param. + data init (paper baseline)"),
        Method("normal", "none", False, False, "normal param., PyTorch default init"),
        Method("wn", "none", True, False, "weight norm, no data init"),
        Method("wn-init", "none", True, True, "weight norm + data init"),
        Method("bn", "bn", False, False, "batch norm"),
        Method("mobn", "mobn", False, True, "mean-only BN (normal param. + data init)"),
        Method("wn-mobn", "mobn", True, True, "weight norm + mean-only BN + data init"),
    ]
}


def build_method(
    method: Method, factory: Callable[..., nn.Module], init_batch: Tensor
) -> nn.Module:
    """Build the model for ``method``: ``factory(norm=...)``, then weight norm and data init."""
    model = factory(norm=method.norm)
    if method.weight_norm:
        wn.apply_weight_norm(model)
        if method.data_init:
            wn.data_dependent_init(model, init_batch)
    elif method.data_init:
        wn.data_dependent_init_plain(model, init_batch)
    return model
