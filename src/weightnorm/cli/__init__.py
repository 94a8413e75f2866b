"""The ``weightnorm`` command line: ``reproduce`` (the main job), ``convert`` and ``bench``.

``convert`` needs only the library (and so only torch), and the ``safetensors`` extra for
``.safetensors`` files; ``bench`` needs torch, and the ``zoo`` extra for ``--zoo``;
``reproduce`` needs the ``experiments`` extra. ``reproduce`` and ``convert`` say so, in one
line, when theirs is missing. Every command checks its input before any work and reports bad
input as one line, ``weightnorm ...: error: ...``, with exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import __version__
from . import bench, convert, reproduce
from ._common import Parser, UsageError, fail

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    """The argument parser (exposed for documentation and tests)."""
    parser = Parser(
        prog="weightnorm",
        description="Weight normalization (Salimans & Kingma, 2016) for PyTorch.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    reproduce.add_parser(sub)
    convert.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``weightnorm`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = reproduce.default_experiment(args)
    namespace = build_parser().parse_args(args)
    try:
        return int(namespace.func(namespace))
    except UsageError as err:
        return fail(str(err))
    finally:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
