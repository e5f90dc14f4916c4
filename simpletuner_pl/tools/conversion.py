"""What a SimpleTuner import produces: values for our keys, config-group choices, and every option left behind with
its reason.

A value is typed and range-checked against the dataclass field it lands in (the same `choice`/`at_least`/`between`
metadata `simpletuner_pl.config.validate` reads), so one out of our accepted range is reported, never emitted.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from simpletuner_pl.config.fields import check_field
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.errors import ConfigError

NOT_SUPPORTED = "not supported"  # SimpleTuner has the feature, simpletuner_pl does not
NO_EQUIVALENT = "no equivalent"  # the option has no meaning here (trackers, worker counts, safety overrides)
VALUE_NOT_SUPPORTED = "value not supported"  # the option maps, this value does not (or is out of range)
DEFAULT = "ignored because default"  # what simpletuner_pl does anyway
UNKNOWN = "unknown option"  # not an option this importer knows
REASONS = (UNKNOWN, NOT_SUPPORTED, VALUE_NOT_SUPPORTED, NO_EQUIVALENT, DEFAULT)


@dataclass
class Left:
    """One SimpleTuner option (or dataset field) not carried over."""

    source: str  # "config.json: lora_type" or "multidatabackend.json[subject]: crop_style"
    value: Any
    reason: str
    detail: str = ""

    def line(self) -> str:
        shown = _show(self.value)
        return f"{self.source}={shown}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Conversion:
    values: Dict[str, Tuple[Any, str]] = field(default_factory=dict)  # our dotted key → (value, source)
    given: Dict[str, Any] = field(default_factory=dict)  # our dotted key → the value as SimpleTuner's file gave it
    groups: Dict[str, str] = field(default_factory=dict)  # config group → option (`override /<group>: <option>`)
    left: List[Left] = field(default_factory=list)
    unchanged: List[Left] = field(default_factory=list)  # carried over but equal to our default (set by the writer)
    notes: List[str] = field(default_factory=list)

    def set(self, key: str, value: Any, source: str) -> bool:
        """Carry `value` over to our `key`; False (and reported) when its type or range is not ours."""
        try:
            typed = coerce(key, value)
        except ConfigError as error:
            self.leave(source, value, VALUE_NOT_SUPPORTED, str(error))
            return False
        except KeyError:  # a key of a config group this installation does not have
            self.leave(source, value, NOT_SUPPORTED, f"this version has no {key}")
            return False
        self.values[key] = (typed, source)
        self.given[key] = value
        return True

    def group(self, group: str, option: str) -> None:
        self.groups[group] = option

    def leave(self, source: str, value: Any, reason: str, detail: str = "") -> None:
        self.left.append(Left(source, value, reason, detail))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def left_by_reason(self) -> Dict[str, List[Left]]:
        """Config options first, then dataset fields, each in the order they were met."""
        ordered = sorted(self.left + self.unchanged, key=lambda e: "[" in e.source.split(": ", 1)[0])
        return {reason: [e for e in ordered if e.reason == reason] for reason in REASONS
                if any(e.reason == reason for e in ordered)}


@dataclass(frozen=True)
class Slot:
    """Where a dotted key lands: its dataclass field (None in open nodes such as `trainer.*`), value type, whether
    it takes null, and its position (each part's index among its dataclass's fields; dict keys such as dataset ids
    as themselves), which orders the written experiment like the schema."""

    field: Optional[dataclasses.Field]
    type: Any
    optional: bool
    position: Tuple[Any, ...]


def slot(key: str) -> Slot:
    node: Any = RunConfig
    parts, i = key.split("."), 0
    found, tp, optional, position = None, Any, True, []
    while i < len(parts):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return Slot(None, Any, True, tuple(position))
        fields = dataclasses.fields(node)
        names = [f.name for f in fields]
        if parts[i] not in names:
            raise KeyError(f"{key}: no such key in the run config")
        position.append(names.index(parts[i]))
        found, annotation = fields[position[-1]], typing.get_type_hints(node)[parts[i]]
        optional = type(None) in typing.get_args(annotation) or annotation is Any
        tp = node = _unwrap_optional(annotation)
        entries = typing.get_args(node)[1] if typing.get_origin(node) is dict else None
        if dataclasses.is_dataclass(entries) and i + 1 < len(parts):
            node, i = entries, i + 1  # Dict[str, DatasetConfig]: the next part is the id
            position.append(parts[i])
        i += 1
    return Slot(found, tp, optional, tuple(position))


def default_of(key: str) -> Any:
    """The dataclass default of a key (what a new `data.datasets.<id>` entry starts from)."""
    found = slot(key).field
    if found is None:
        return None
    if found.default is not dataclasses.MISSING:
        return found.default
    return found.default_factory() if found.default_factory is not dataclasses.MISSING else None


def coerce(key: str, value: Any) -> Any:
    """`value` (from JSON, TOML or a string of TRAINER_EXTRA_ARGS) as the type of our `key`, range-checked."""
    where = slot(key)
    if where.field is None:
        return value
    if value is None or (where.optional and isinstance(value, str) and value.strip().lower() in ("none", "null")):
        if not where.optional:
            raise ConfigError(f"{key} cannot be null")
        return None
    typed = _as_type(key, value, where.type)
    check_field(key, typed, where.field.metadata)
    return typed


def _as_type(key: str, value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", ""):
            return False
        raise ConfigError(f"{key} takes true or false, not {value!r}")
    if tp in (int, float):
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise ConfigError(f"{key} takes a number, not {value!r}")
        if tp is int:
            if not number.is_integer():
                raise ConfigError(f"{key} takes a whole number, not {value!r}")
            return int(number)
        return int(number) if isinstance(value, int) else number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} takes a string, not {_show(value)}")
        return str(value)
    return value


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is typing.Union and len(args) == 1 else tp


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value and " " not in value and len(value) < 60 else repr(value)
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
