"""What every subcommand shares: argparse with one-line errors, value types, failure exits."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = [
    "Parser",
    "UsageError",
    "check_device",
    "check_writable_dir",
    "check_writable_file",
    "fail",
    "missing_modules",
    "positive",
    "require_extra",
]


class UsageError(Exception):
    """Bad input found before any work: the command prints one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``weightnorm <command>: error: ...``), exit code 2.

    argparse prints its usage block before the message; a user who mistyped one value needs the
    message and where to find help, not the whole synopsis.
    """

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def fail(message: str) -> int:
    """Print ``weightnorm: error: <message>`` on stderr; the exit code 2."""
    print(f"weightnorm: error: {message}", file=sys.stderr)
    return 2


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _can_create_in(folder: str) -> bool:
    """Whether a file can be created in ``folder`` (tried: permissions alone miss read-only
    mounts and file systems like /proc, and root passes every permission check)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_writable_file(path: str, what: str) -> None:
    """Raise :class:`UsageError` unless ``path`` can be written (its folder exists, it is not a
    folder, the folder is writable), before the work whose result goes there."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a folder; expected a file path")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{what} {path}: {folder} is a file, not a folder")
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {path}: the folder {folder} does not exist")
    if not _can_create_in(folder) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{what} {path}: not writable")


def check_writable_dir(path: str, what: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is, or can be created as, a writable folder."""
    import os

    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise UsageError(f"{what} {path} is a file; expected a folder")
    while not os.path.exists(probe):  # the nearest existing ancestor must be a writable folder
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{what} {path}: {probe} is a file; expected a folder")
    if not _can_create_in(probe):
        raise UsageError(f"{what} {path}: {probe} is not writable")


def check_device(text: str) -> str:
    """The device string if this torch build can use it; :class:`UsageError` otherwise."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {text}: this torch build sees no CUDA GPU")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s) here"
        )
    return text


def missing_modules(*names: str) -> list[str]:
    """The names among ``names`` that cannot be imported here (checked without importing)."""
    return [name for name in names if _find(name) is None]


def _find(name: str) -> object:
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a module blocked in sys.modules, a broken package
        return None


def require_extra(extra: str, modules: tuple[str, ...], command: str) -> None:
    """:class:`UsageError` naming the extra to install if any of ``modules`` is missing."""
    missing = missing_modules(*modules)
    if missing:
        raise UsageError(
            f"{command} needs the '{extra}' extra (missing: {', '.join(missing)}); install it "
            f"with: pip install 'weightnorm[{extra}]'"
        )
