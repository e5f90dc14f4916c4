"""Declared value sets and numeric ranges of config fields, and the one walker that checks them.

`choice(default, *values)` and `at_least(default, minimum)` / `between(default, low, high)` record what a field
may hold in its dataclass metadata; `check_fields(node)` walks a config (nested dataclasses, `Dict[str, <dataclass>]`
and `List[<dataclass>]` included) and raises a `ConfigError` naming the key and what is valid. Hydra already
rejects unknown keys and wrong types while composing; this covers what a type cannot say.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from simpletuner_pl.errors import ConfigError


def choice(default: Any, *choices: Any) -> Any:
    """A field whose value must be one of `choices`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


def at_least(default: Any, minimum: float, strict: bool = False, hint: str = "") -> Any:
    """A numeric field >= `minimum` (> with `strict`); None passes (it means "off" or "default")."""
    return dataclasses.field(default=default, metadata={"range": (minimum, None, strict, False), "hint": hint})


def between(default: Any, low: float, high: float, low_strict: bool = False, high_strict: bool = False,
            hint: str = "") -> Any:
    """A numeric field in [low, high] (open ends with the `*_strict` flags); None passes."""
    return dataclasses.field(default=default, metadata={"range": (low, high, low_strict, high_strict), "hint": hint})


def _describe_range(low: Optional[float], high: Optional[float], low_strict: bool, high_strict: bool) -> str:
    if high is None:
        return f"{'>' if low_strict else '>='} {low:g}"
    return f"in {'(' if low_strict else '['}{low:g}, {high:g}{')' if high_strict else ']'}"


def _in_range(value: float, low, high, low_strict: bool, high_strict: bool) -> bool:
    if not math.isfinite(value):
        return False
    above = value > low if low_strict else value >= low
    below = high is None or (value < high if high_strict else value <= high)
    return above and below


def check_field(key: str, value: Any, metadata) -> None:
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}={value!r} is not a valid choice; valid choices: {', '.join(map(str, choices))}")
    bounds = metadata.get("range")
    if bounds is None or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _in_range(float(value), *bounds):
        hint = f" ({metadata['hint']})" if metadata.get("hint") else ""
        raise ConfigError(f"{key}={value!r} is out of range: it must be {_describe_range(*bounds)}{hint}")


def check_fields(node: Any, path: str = "") -> None:
    """Check every declared choice and range under `node` (a config dataclass instance), depth first."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{path}.{f.name}" if path else f.name
        check_field(key, value, f.metadata)
        if dataclasses.is_dataclass(value):
            check_fields(value, key)
        elif isinstance(value, dict):
            for name, item in value.items():
                if dataclasses.is_dataclass(item):
                    check_fields(item, f"{key}.{name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_fields(item, f"{key}[{i}]")
