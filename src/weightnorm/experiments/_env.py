"""What a measurement or report was made on: versions and machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

import weightnorm

__all__ = ["environment"]


def environment() -> dict[str, Any]:
    """Versions of weightnorm, torch and Python, the machine, CPUs and torch's threads.

    Example::

        >>> sorted(environment())
        ['cpus', 'machine', 'processor', 'python', 'threads', 'torch', 'weightnorm']
    """
    return {
        "weightnorm": weightnorm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
