"""Experiments: the paper's comparison of parameterizations, reusable on any model and data.

``run_comparison`` trains every method (normal, weight norm, with and without data-dependent
init, batch norm, mean-only batch norm) under the paper's optimizer schedule, picks each method's
learning rate on a validation split, repeats over seeds, and writes a report with plots. The
``weightnorm reproduce`` command runs it on named configurations (:mod:`.configs`).
"""

from __future__ import annotations

from .data import Dataset, Split, cifar10, digits, mnist1d
from .methods import METHODS, Method
from .runner import ComparisonConfig, ComparisonResult, run_comparison

__all__ = [
    "METHODS",
    "ComparisonConfig",
    "ComparisonResult",
    "Dataset",
    "Method",
    "Split",
    "cifar10",
    "digits",
    "mnist1d",
    "run_comparison",
]
