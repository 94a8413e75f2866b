"""``--set KEY=VALUE``: one way to override any setting of an experiment's configuration.

A configuration is a tree of frozen dataclasses and dicts; ``KEY`` is a dotted path into it
(``epochs``, ``lr_grid.adam``, ``network.widths``) and ``VALUE`` is parsed as the type the
setting already has: a number, a bool (``true``/``false``), a string, ``none``, or a
comma-separated tuple (``lr_grid.adam=1e-3,3e-3``). Unknown keys and values of the wrong type are
refused with a message naming what was expected; the experiment's own validation then checks
the values together, before any training.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from typing import Any

__all__ = ["apply_overrides", "flatten", "parse_assignment"]


def parse_assignment(text: str) -> tuple[str, str]:
    """``"a.b=1"`` -> ``("a.b", "1")``; a ``ValueError`` if there is no ``=`` or no key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set: expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _children(node: Any) -> dict[str, Any] | None:
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, dict):
        return dict(node)
    return None


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every settable leaf of a configuration tree by its dotted key.

    Example::

        >>> flatten({"epochs": 3, "lr_grid": {"adam": (0.001,)}})
        {'epochs': 3, 'lr_grid.adam': (0.001,)}
    """
    children = _children(node)
    if children is None:
        return {prefix: node}
    out: dict[str, Any] = {}
    for name, value in children.items():
        out.update(flatten(value, f"{prefix}{name}."))
    return {k.removesuffix("."): v for k, v in out.items()}


def _optional(node: Any, name: str) -> bool:
    """Whether dataclass ``node``'s field ``name`` is declared ``X | None``."""
    if not dataclasses.is_dataclass(node):
        return False
    hint = typing.get_type_hints(type(node)).get(name)
    return type(None) in typing.get_args(hint)


def _parse_scalar(text: str, like: Any, key: str, optional: bool = False) -> Any:
    lowered = text.lower()
    if optional and lowered == "none":
        return None
    if isinstance(like, bool):
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {key}: expected true or false, got {text!r}")
    if like is None:  # an optional setting left unset: a number, or none
        if lowered == "none":
            return None
        return _parse_scalar(text, 0.0, key)
    if lowered == "none":
        raise ValueError(f"--set {key}: this setting cannot be none")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"--set {key}: expected a finite number, got {text!r}")
        return value
    if isinstance(like, str):
        return text
    raise ValueError(f"--set {key}: settings of type {type(like).__name__} cannot be set")


def _parse(text: str, like: Any, key: str, optional: bool = False) -> Any:
    if isinstance(like, tuple | list):
        items = [t.strip() for t in text.split(",") if t.strip()] if text else []
        # the element type is the current elements' (a float grid stays floats)
        element = like[0] if like else ""
        return tuple(_parse_scalar(t, element, key) for t in items)
    return _parse_scalar(text, like, key, optional)


def _set(node: Any, path: list[str], text: str, key: str) -> Any:
    children = _children(node)
    if children is None:
        return _parse(text, node, key)
    head = path[0]
    if head not in children:
        raise ValueError(
            f"--set {key}: unknown setting {head!r}; expected one of {', '.join(children)}"
        )
    if len(path) == 1 and _children(children[head]) is not None:
        keys = ", ".join(f"{key}.{k}" for k in flatten(children[head]))
        raise ValueError(f"--set {key}: a group of settings; set its entries: {keys}")
    if len(path) > 1 and _children(children[head]) is None:
        raise ValueError(f"--set {key}: {head!r} is a single setting, not a group")
    new = _set(children[head], path[1:], text, key) if len(path) > 1 else None
    value = new if len(path) > 1 else _parse(text, children[head], key, _optional(node, head))
    if isinstance(node, dict):
        return {**node, head: value}
    return dataclasses.replace(node, **{head: value})


def apply_overrides(config: Any, assignments: Iterable[str]) -> Any:
    """``config`` (dataclasses and dicts, never modified) with each ``KEY=VALUE`` applied.

    Example::

        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class S:
        ...     epochs: int = 4
        ...     grid: tuple[float, ...] = (0.1,)
        >>> apply_overrides(S(), ["epochs=2", "grid=0.01,0.03"])
        S(epochs=2, grid=(0.01, 0.03))
    """
    for assignment in assignments:
        key, text = parse_assignment(assignment)
        config = _set(config, key.split("."), text, key)
    return config
