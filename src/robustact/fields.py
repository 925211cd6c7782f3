"""Typed options from plain mappings (YAML, JSON, keyword arguments): every value parsed and checked once.

`parse_options(cls, mapping, where)` turns a mapping into the dataclass `cls`: unknown keys are rejected (with
the known ones listed), every value is converted to its field's annotated type, and a problem becomes one
`ConfigError` line that names the key by its full dotted path (`training.attack.eps: ...`). Field metadata
adds the checks a type cannot express: `choices`, `min`/`max` (inclusive), `above` (exclusive), or `parse`
(a function `(value, where) -> value` for a field of its own kind). Numbers may be written as fractions,
`"8/255"`. The run configuration (`robustact.config`) and each defense's options use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

from robustact.errors import ConfigError

T = TypeVar("T")

_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_number(value: Any) -> Any:
    """`"8/255"` -> 0.0313...; a numeric string -> float; other values unchanged."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            den = float(m.group(2))
            if den == 0:
                raise ConfigError(f"division by zero in {value!r}")
            return float(m.group(1)) / den
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_float(value: Any, where: str) -> float:
    value = parse_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number (e.g. 0.1 or 8/255), got {_describe(value)}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value}")
    return float(value)


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    if not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
    return value


def _as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
    return value


def _as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
    return value


def _optional_inner(tp: Any) -> Any | None:
    """X for `X | None` / `Optional[X]`; None for any other type."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def parse_value(value: Any, tp: Any, where: str) -> Any:
    """`value` converted to the type `tp` (int, float, bool, str, X | None, list[X], dict, a dataclass, Any)."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else parse_value(value, inner, where)
    if tp is Any:
        return value
    if value is None:
        raise ConfigError(f"{where}: a value is required here, got null")
    if tp is float:
        return _as_float(value, where)
    if tp is int:
        return _as_int(value, where)
    if tp is bool:
        return _as_bool(value, where)
    if tp is str:
        return _as_str(value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return [parse_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping (key: value), got {_describe(value)}")
        return {str(k): v for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse_options(tp, value, where)
    raise TypeError(f"{where}: unsupported option type {tp!r}")  # pragma: no cover - a schema bug


def _check(value: Any, meta: Mapping, where: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, choices))}, got {_describe(value)}")
    lo, hi, above = meta.get("min"), meta.get("max"), meta.get("above")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{where}: must be <= {hi}, got {value}")
    if above is not None and not value > above:
        raise ConfigError(f"{where}: must be > {above}, got {value}")


def parse_options(cls: type[T], data: Any, where: str = "") -> T:
    """An instance of the dataclass `cls` from a mapping; see the module docstring."""
    label = where or cls.__name__
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        data = dataclasses.asdict(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping (key: value), got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; known here: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        meta = fields[name].metadata
        value = meta["parse"](value, key) if "parse" in meta else parse_value(value, hints[name], key)
        _check(value, meta, key)
        values[name] = value
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)
    return obj


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **checks: Any) -> Any:
    """A dataclass field with checks in its metadata: `option(0.1, above=0)`, `option("eval", choices=(...))`."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=checks)
    return dataclasses.field(default=default, metadata=checks)


def to_plain(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts and lists, e.g. for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
