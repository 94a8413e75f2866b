"""Data sets that need no download: MNIST-1D (generated), scikit-learn digits, CIFAR-10 from disk.

Every loader returns a :class:`Dataset` of float32 inputs ``(N, channels, *positions)`` and int64
labels, with a validation split carved from the training data (never from the test data) and
inputs standardized with training statistics only.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Dataset", "Split", "cifar10", "digits", "mnist1d", "zca_whiten"]


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (N, channels, *positions) and labels ``y`` (N,)."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits of one classification problem."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, ``(channels, *positions)``."""
        return tuple(self.train.x.shape[1:])

    def fingerprint(self) -> str:
        """A short hash of every tensor: results computed on other data are never reused."""
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for t in (split.x, split.y):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _split_train_val(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    import numpy as np

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, round(len(y) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def _standardized(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
) -> Dataset:
    import numpy as np

    mean = train[0].mean(axis=0, keepdims=True)
    std = train[0].std(axis=0, keepdims=True) + 1e-6

    def make(part: tuple[np.ndarray, np.ndarray]) -> Split:
        x = torch.from_numpy(((part[0] - mean) / std).astype(np.float32))
        return Split(x, torch.from_numpy(part[1].astype(np.int64)))

    return Dataset(name, make(train), make(val), make(test), num_classes)


def mnist1d(num_samples: int = 10_000, val_fraction: float = 0.125, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated locally by ``mnist1d.data.make_dataset``.

    ``num_samples`` are split 80/20 into train/test by the generator, then ``val_fraction`` of
    the training part becomes the validation split. Inputs have shape ``(1, 40)``. Nothing is
    downloaded (the package's ``get_dataset`` would; it is never called).
    """
    if num_samples < 50:
        raise ValueError(f"num_samples must be >= 50, got {num_samples}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    raw = make_dataset(args)
    x, y = raw["x"][:, None, :], raw["y"]
    train, val = _split_train_val(x, y, val_fraction, seed)
    return _standardized(
        "mnist1d", train, val, (raw["x_test"][:, None, :], raw["y_test"]), num_classes=10
    )


def digits(test_fraction: float = 0.2, val_fraction: float = 0.125, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), inputs ``(1, 8, 8)``."""
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images[:, None, :, :].astype(np.float64) / 16.0
    y = bunch.target
    (rest_x, rest_y), (test_x, test_y) = _split_train_val(x, y, test_fraction, seed + 1)
    train, val = _split_train_val(rest_x, rest_y, val_fraction, seed)
    return _standardized("digits", train, val, (test_x, test_y), num_classes=10)


# --- CIFAR-10 ----------------------------------------------------------------------------------

_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"


class CifarFormatError(ValueError):
    """The CIFAR-10 directory or one of its batch files is not in the expected format."""


class _BatchUnpickler(pickle.Unpickler):
    """Loads a CIFAR-10 batch without executing arbitrary pickled code: numpy arrays only."""

    _allowed: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise CifarFormatError(
            f"a CIFAR-10 batch may hold numpy arrays only, found {module}.{name}"
        )


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    try:
        with path.open("rb") as handle:
            batch = _BatchUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except CifarFormatError:
        raise
    except Exception as err:
        raise CifarFormatError(f"{path} is not a CIFAR-10 python batch: {err}") from None
    if not isinstance(batch, dict):
        raise CifarFormatError(f"{path}: expected a dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise CifarFormatError(f"{path}: expected keys b'data' and b'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise CifarFormatError(
            f"{path}: expected b'data' of shape (N, 3072) uint8, got {data.shape} {data.dtype}"
        )
    if labels.shape != (data.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise CifarFormatError(f"{path}: expected {data.shape[0]} labels in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def zca_whiten(train: np.ndarray, *others: np.ndarray, eps: float = 1e-2) -> list[np.ndarray]:
    """ZCA-whiten ``train`` and apply the same transform to ``others`` (flattened per sample).

    ``W = U (S + eps)^-1/2 U^T`` for the training covariance ``U S U^T``. With fewer samples than
    features the covariance is handled through a thin SVD of the data (exactly: directions
    outside the data's span have variance 0 and are scaled by ``eps^-1/2``).
    """
    import numpy as np

    flat = train.reshape(len(train), -1).astype(np.float64)
    mean = flat.mean(axis=0)
    centred = flat - mean
    n, d = centred.shape
    if n >= d:
        values, vectors = np.linalg.eigh(centred.T @ centred / max(n - 1, 1))
        values = np.clip(values, 0.0, None)

        def apply(x: np.ndarray) -> np.ndarray:
            out: np.ndarray = ((x @ vectors) / np.sqrt(values + eps)) @ vectors.T
            return out

    else:
        _, sing, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (n, d)
        values = sing**2 / max(n - 1, 1)
        extra = 1.0 / np.sqrt(values + eps) - 1.0 / np.sqrt(eps)

        def apply(x: np.ndarray) -> np.ndarray:
            out: np.ndarray = x / np.sqrt(eps) + ((x @ vt.T) * extra) @ vt
            return out

    return [apply(a.reshape(len(a), -1) - mean).reshape(a.shape) for a in (train, *others)]


def cifar10(data_dir: str | Path, val_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """CIFAR-10 from the standard python batches in ``data_dir`` (nothing is downloaded).

    ``data_dir`` holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (directly or in
    ``cifar-10-batches-py/``). Inputs are scaled to [0, 1] and ZCA-whitened with training
    statistics, as in the paper. The batch files are unpickled with numpy arrays allowed only.

    Raises:
        CifarFormatError: the directory or a file is missing or malformed.
    """
    import numpy as np

    root = Path(data_dir)
    if not root.is_dir():
        raise CifarFormatError(f"CIFAR-10 directory {root} does not exist")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    missing = [n for n in [*_CIFAR_TRAIN, _CIFAR_TEST] if not (root / n).is_file()]
    if missing:
        raise CifarFormatError(
            f"{root} is missing {', '.join(missing)}; expected the CIFAR-10 python batches "
            "(data_batch_1..5, test_batch)"
        )
    parts = [_read_batch(root / n) for n in _CIFAR_TRAIN]
    x = np.concatenate([p[0] for p in parts]).astype(np.float64) / 255.0
    y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(root / _CIFAR_TEST)
    (tx, ty), (vx, vy) = _split_train_val(x, y, val_fraction, seed)
    tx, vx, sx = zca_whiten(tx, vx, test_x.astype(np.float64) / 255.0)

    def make(a: np.ndarray, b: np.ndarray) -> Split:
        return Split(torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.int64)))

    return Dataset("cifar10", make(tx, ty), make(vx, vy), make(sx, test_y), num_classes=10)
