"""Named configurations of ``weightnorm reproduce``: data, network and budget for each."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from .data import Dataset, cifar10, digits, mnist1d
from .models import paper_cnn
from .runner import ComparisonConfig

__all__ = ["CONFIGS", "NamedConfig"]


@dataclass(frozen=True)
class NamedConfig:
    """A named comparison: how to load its data, build its network, and its default budgets."""

    name: str
    description: str
    comparison: ComparisonConfig
    quick: ComparisonConfig
    network: dict[str, Any]  # keyword arguments of paper_cnn (besides in/out sizes)
    quick_network: dict[str, Any]
    load: Callable[..., Dataset]
    data_args: dict[str, Any]
    quick_data_args: dict[str, Any]

    @staticmethod
    def factory(data: Dataset, network: dict[str, Any]) -> Callable[..., nn.Module]:
        """A picklable ``factory(norm=...)`` building the network ``network`` describes."""
        return functools.partial(paper_cnn, data.input_shape[0], data.num_classes, **network)

    def tree(self, quick: bool) -> dict[str, Any]:
        """Every setting of this configuration as one tree, the target of ``--set KEY=VALUE``:
        the :class:`ComparisonConfig` fields, ``network.*`` (:func:`paper_cnn`'s keywords) and
        ``data.*`` (the loader's keywords)."""
        base = self.quick if quick else self.comparison
        return {
            **{f.name: getattr(base, f.name) for f in fields(base)},
            "network": dict(self.quick_network if quick else self.network),
            "data": dict(self.quick_data_args if quick else self.data_args),
        }

    @staticmethod
    def split(tree: dict[str, Any]) -> tuple[ComparisonConfig, dict[str, Any], dict[str, Any]]:
        """A :meth:`tree` back as ``(comparison settings, network keywords, data keywords)``."""
        names = {f.name for f in fields(ComparisonConfig)}
        config = ComparisonConfig(**{k: v for k, v in tree.items() if k in names})
        return config, dict(tree["network"]), dict(tree["data"])


CONFIGS: dict[str, NamedConfig] = {
    "mnist1d": NamedConfig(
        name="mnist1d",
        description="the paper's CIFAR-10 comparison, adapted to 1-D, on MNIST-1D (10,000 "
        "generated samples: 7,000 train, 1,000 validation, 2,000 test)",
        comparison=ComparisonConfig(
            name="mnist1d", epochs=10, batch_size=100, seeds=10, search_seeds=3, candidates=2,
            init_batch_size=500,
        ),
        quick=ComparisonConfig(
            name="mnist1d-quick", epochs=4, batch_size=100, seeds=2, candidates=1,
            init_batch_size=100, lr_grid={"adam": (3e-3,), "sgd": (3e-2,)},
        ),
        network={"dims": 1, "widths": (32, 64), "dropout": 0.3, "noise": 0.15},
        quick_network={"dims": 1, "widths": (8, 16), "dropout": 0.3, "noise": 0.15},
        load=mnist1d,
        data_args={"num_samples": 10_000},
        quick_data_args={"num_samples": 2_000},
    ),
    "digits": NamedConfig(
        name="digits",
        description="scikit-learn's 8x8 digits (1,797 images) with the 2-D network, no pooling",
        comparison=ComparisonConfig(
            name="digits", epochs=20, batch_size=50, seeds=10, search_seeds=3,
            init_batch_size=300,
        ),
        quick=ComparisonConfig(
            name="digits-quick", epochs=3, batch_size=50, seeds=2, candidates=1,
            init_batch_size=100,
            lr_grid={"adam": (3e-3,), "sgd": (3e-2,)},
        ),
        network={"dims": 2, "widths": (16, 32), "dropout": 0.3, "noise": 0.15, "pool": False},
        quick_network={"dims": 2, "widths": (4, 8), "dropout": 0.3, "noise": 0.15, "pool": False},
        load=digits,
        data_args={},
        quick_data_args={},
    ),
    "cifar10": NamedConfig(
        name="cifar10",
        description="the paper's exact CIFAR-10 setup: ZCA-whitened inputs, noise 0.15, "
        "96/192 channels, dropout 0.5, batch 100, 200 epochs (needs --data-dir; a GPU)",
        comparison=ComparisonConfig(
            name="cifar10", epochs=200, batch_size=100, seeds=6, search_seeds=3,
            init_batch_size=500,
            optimizers=("adam",),
        ),
        quick=ComparisonConfig(
            name="cifar10-quick", epochs=2, batch_size=100, seeds=1, candidates=1,
            init_batch_size=100,
            lr_grid={"adam": (3e-3,), "sgd": (3e-2,)}, optimizers=("adam",),
        ),
        network={"dims": 2, "widths": (96, 192), "dropout": 0.5, "noise": 0.15},
        quick_network={"dims": 2, "widths": (8, 16), "dropout": 0.5, "noise": 0.15},
        load=cifar10,
        data_args={},
        quick_data_args={},
    ),
}  # fmt: skip
