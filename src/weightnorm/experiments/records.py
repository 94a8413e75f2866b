"""Typed records of finished runs, written as JSON and read back only if complete and valid.

A record is a frozen dataclass; :func:`to_json` writes it as plain JSON values and
:func:`from_json` rebuilds it, checking every field against its type hint: a record written by
an older version, cut short, or edited by hand raises :class:`RecordError` instead of being
trusted (:class:`~weightnorm.experiments.jobs.Jobs` then runs it again).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = ["CurveRecord", "RecordError", "from_json", "to_json"]

R = TypeVar("R")


class RecordError(ValueError):
    """A stored record that does not match its type (missing field, wrong type)."""


def to_json(record: Any) -> dict[str, Any]:
    """The record as JSON values (dataclasses become dicts, tuples lists)."""
    return dataclasses.asdict(record)


def _check(value: Any, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check(value, option, where)
            except RecordError:
                continue
        raise RecordError(f"{where}: expected {hint}, got {type(value).__name__}")
    if hint is type(None):
        if value is not None:
            raise RecordError(f"{where}: expected null, got {type(value).__name__}")
        return None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value, where)
    if hint is float:  # JSON writes NaN as NaN and integers without a point
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{where}: expected a number, got {type(value).__name__}")
        return float(value)
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecordError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        element = args[0] if args else Any
        items = [_check(v, element, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        return {str(k): _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: records cannot hold {hint}")  # a programming error, not bad data


def from_json(cls: type[R], data: Any, where: str = "record") -> R:
    """Rebuild a ``cls`` record from :func:`to_json`'s output; :class:`RecordError` if it does
    not match ``cls`` field for field (extra keys are refused too: they mean another version).

    Example::

        >>> rec = CurveRecord("wn", 0, {"loss": [1.0, 0.5]})
        >>> from_json(CurveRecord, to_json(rec)) == rec
        True
        >>> from_json(CurveRecord, {"method": "wn", "seed": 0})
        Traceback (most recent call last):
        ...
        weightnorm.experiments.records.RecordError: record: missing field(s) curves
    """
    if not isinstance(data, dict):
        raise RecordError(f"{where}: expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    missing = sorted(fields - set(data))
    if missing:
        raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
    extra = sorted(set(data) - fields)
    if extra:
        raise RecordError(f"{where}: unexpected field(s) {', '.join(extra)}")
    values = {name: _check(data[name], hints[name], f"{where}.{name}") for name in fields}
    record = cls(**values)
    check = getattr(record, "check", None)
    if check is not None:
        check()
    return record


@dataclass(frozen=True)
class CurveRecord:
    """One run of a further experiment: its method, seed and curves (equal-length lists)."""

    method: str
    seed: int
    curves: dict[str, list[float]]

    def check(self) -> None:
        """:class:`RecordError` unless every curve has the same length."""
        lengths = {len(v) for v in self.curves.values()}
        if len(lengths) > 1:
            raise RecordError(f"record {self.method}-s{self.seed}: curves of unequal lengths")

    def final(self, key: str) -> float:
        """The last value of curve ``key``."""
        return self.curves[key][-1]
