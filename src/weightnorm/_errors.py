"""Exceptions raised for wrong use. Each message says what was expected and what was got."""

from __future__ import annotations

__all__ = ["WeightNormError"]


class WeightNormError(ValueError):
    """Weight norm was asked for something that does not fit the module or data it was given.

    A ``ValueError``, so code that already catches ``ValueError`` keeps working.

    Example::

        >>> import torch, weightnorm as wn
        >>> try:
        ...     wn.weight_norm(torch.nn.Linear(2, 2), "wieght")
        ... except wn.WeightNormError as err:
        ...     print("caught")
        caught
    """
