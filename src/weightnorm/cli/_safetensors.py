"""``.safetensors`` files for ``weightnorm convert``: reading, checking, writing.

A safetensors file holds one flat dict of dense tensors and a header of string metadata
(transformers writes ``{"format": "pt"}`` there). The ``safetensors`` package reads it, and
needs numpy to write it: both come with the ``safetensors`` extra, and are imported here only,
inside the functions, after :func:`require` has checked they are installed (a bare install
converts ``.pt`` files with torch alone).

What a safetensors file cannot hold (nested dicts, non-tensor values, sparse or quantized
tensors, dtypes safetensors does not know) is refused by :func:`refusal` before any work. What
safetensors refuses but can be written faithfully is made writable: tensors that share storage
(tied weights) each get a copy of their own, non-contiguous ones a contiguous copy, so every
key of the state dict is written and the file loads strictly into the model it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._common import require_extra

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["EXTRA", "SUFFIX", "is_safetensors", "load", "refusal", "require", "to_bytes"]

EXTRA = "safetensors"
SUFFIX = ".safetensors"


def is_safetensors(path: str) -> bool:
    """Whether ``path`` names a safetensors file (by its extension, in any case)."""
    return path.lower().endswith(SUFFIX)


def require(path: str, writing: bool) -> None:
    """:class:`~._common.UsageError` naming the extra unless ``path`` can be read (or
    written: safetensors needs numpy for that) here."""
    modules = ("safetensors", "numpy") if writing else ("safetensors",)
    require_extra(EXTRA, modules, f"{'writing' if writing else 'reading'} {path}")


def load(raw: bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the header metadata (``{}`` if none) of the safetensors file ``raw``;
    whatever safetensors raises on a file it cannot read."""
    import json

    import safetensors.torch

    tensors = safetensors.torch.load(raw)  # validates the whole file, header included
    size = int.from_bytes(raw[:8], "little")
    metadata = json.loads(raw[8 : 8 + size]).get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def is_damage(err: Exception) -> bool:
    """Whether ``err``, raised by :func:`load`, is safetensors' refusal of the file's bytes
    (rather than a tensor type it read but cannot give torch)."""
    from safetensors import SafetensorError

    return isinstance(err, SafetensorError)


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return ", ".join(keys[:3]) + more


def refusal(state_dict: Mapping[str, Any]) -> str | None:
    """Why the flat dict ``state_dict`` cannot be written as safetensors (one line, naming
    the keys), or ``None``."""
    import torch

    others = [f"{k} ({type(v).__name__})" for k, v in state_dict.items() if not torch.is_tensor(v)]
    if others:
        return f"a safetensors file holds only tensors; got {_shown(others)}"
    unusual = [
        f"{k} ({'quantized' if v.is_quantized else str(v.layout).removeprefix('torch.')})"
        for k, v in state_dict.items()
        if v.layout != torch.strided or v.is_quantized
    ]
    if unusual:
        return f"a safetensors file holds dense tensors only; got {_shown(unusual)}"
    by_dtype: dict[torch.dtype, list[str]] = {}
    for key, value in state_dict.items():
        by_dtype.setdefault(value.dtype, []).append(key)
    refused = [
        f"{_shown(keys)} ({str(dtype).removeprefix('torch.')})"
        for dtype, keys in by_dtype.items()
        if not _round_trips(dtype)
    ]
    if refused:
        return f"safetensors cannot hold the dtype of {'; '.join(refused)}"
    return None


def _round_trips(dtype: Any) -> bool:
    """Whether safetensors writes ``dtype`` and reads it back as ``dtype`` (some it writes,
    this torch's safetensors cannot read; some it does not write at all)."""
    import warnings

    import safetensors.torch
    import torch

    try:
        with warnings.catch_warnings():  # torch's on experimental dtypes (complex32)
            warnings.simplefilter("ignore")
            probe = {"t": torch.zeros(1, dtype=dtype)}
        back = safetensors.torch.load(safetensors.torch.save(probe))
    except Exception:  # whatever torch or safetensors raise for a dtype they do not know
        return False
    return bool(back["t"].dtype == dtype)


def to_bytes(
    state_dict: Mapping[str, Tensor], metadata: dict[str, str] | None
) -> tuple[bytes, list[str]]:
    """The safetensors file of ``state_dict`` with ``metadata`` in its header, and the keys
    whose tensors shared storage with an earlier one (each written as its own copy).

    safetensors refuses tensors that share memory (tied weights; views torch.load restores as
    views) and non-contiguous ones; dropping a tied key, as ``safetensors.torch.save_model``
    does, would make the file fail a strict load, so every key keeps its own copy.
    """
    import safetensors.torch

    tensors: dict[str, Tensor] = {}
    shared: list[str] = []
    storages: set[tuple[str, int]] = set()
    for key, value in state_dict.items():
        tensor = value.detach()
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0:  # an empty tensor: no memory to share
            tensors[key] = tensor
            continue
        if (str(tensor.device), storage.data_ptr()) in storages:
            tensor = tensor.clone()
            shared.append(key)
        storages.add((str(tensor.device), tensor.untyped_storage().data_ptr()))
        tensors[key] = tensor
    return safetensors.torch.save(tensors, metadata=metadata), shared
