"""A `Conversion` as a Hydra experiment file: the group overrides, then only the values that differ from what those
groups compose to, then the options left behind (as comments), and a check that the file composes and validates.

The baseline is the real composition (`simpletuner_pl.config.compose`) of an experiment holding only the group
overrides, so "differs" means exactly what the user's run would change.
"""

from __future__ import annotations

import math
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from simpletuner_pl.config import compose, to_typed, validate
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.errors import UserError
from simpletuner_pl.tools.conversion import DEFAULT, VALUE_NOT_SUPPORTED, Conversion, Left, default_of, slot

GROUP_ORDER = ("model", "quant", "adapter", "data", "optimizer", "validation", "eval", "offload", "tread", "strategy",
               "logger")
NAME = "imported"


def experiment_text(conv: Conversion, sources: str) -> str:
    """The experiment YAML (header, defaults, differences, and what was left as trailing comments)."""
    values = differences(conv, baseline(defaults_block(conv)))
    lines = ["# @package _global_",
             f"# SimpleTuner's {sources}, converted by simpletuner_pl.tools.import_simpletuner: only what",
             "# differs from simpletuner_pl's defaults; the end lists every option not carried over, with why."]
    lines.append(defaults_block(conv).rstrip())
    if values:
        lines += ["", OmegaConf.to_yaml(OmegaConf.create(values)).rstrip()]
    return "\n".join(lines) + "\n" + trailer(conv)


def defaults_block(conv: Conversion) -> str:
    groups = sorted(conv.groups.items(), key=lambda item: GROUP_ORDER.index(item[0]))
    quoted = lambda option: f'"{option}"' if option in ("on", "off", "yes", "no", "true", "false") else option
    return "defaults:\n" + "".join(f"  - override /{group}: {quoted(option)}\n" for group, option in groups)


@lru_cache(maxsize=8)
def baseline(defaults: str) -> Dict[str, Any]:
    """What the group overrides alone compose to (resolved, as plain containers)."""
    with tempfile.TemporaryDirectory() as folder:
        return OmegaConf.to_container(compose_experiment(defaults, Path(folder), []), resolve=True)


def compose_experiment(text: str, folder: Path, overrides: List[str]):
    (folder / "experiment").mkdir(parents=True, exist_ok=True)
    (folder / "experiment" / f"{NAME}.yaml").write_text("# @package _global_\n" + text, encoding="utf-8")
    return compose([f"hydra.searchpath=[file://{folder.resolve()}]", f"experiment={NAME}", *overrides])


def differences(conv: Conversion, base: Dict[str, Any]) -> Dict[str, Any]:
    """Nested values that differ from `base`, in the schema's field order; equal ones are left as defaults."""
    tree: Dict[str, Any] = {}
    ids: List[str] = []
    conv.unchanged = []
    for key, (value, src) in sorted(conv.values.items(), key=lambda item: _order(item[0], ids)):
        present, current = _lookup(base, key)
        if same(value, current if present else default_of(key), key):
            conv.unchanged.append(Left(src, conv.given.get(key, value), DEFAULT))
            continue
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def same(value: Any, current: Any, key: str) -> bool:
    if isinstance(value, float) or isinstance(current, float):
        return isinstance(value, (int, float)) and isinstance(current, (int, float)) and \
            math.isclose(value, current, rel_tol=1e-9)
    if key.endswith("_name_or_path") and isinstance(value, str) and isinstance(current, str):
        return value.lower() == current.lower()  # hub ids are case-insensitive
    return value == current


def trailer(conv: Conversion) -> str:
    lines = []
    for reason, entries in conv.left_by_reason().items():
        lines.append(f"# {reason} ({len(entries)}):")
        lines += [f"#   {entry.line()}" for entry in entries]
    if conv.notes:
        lines.append("# notes:")
        lines += [f"#   {note}" for note in conv.notes]
    if not lines:
        return ""
    return "\n# Not carried over from SimpleTuner, by reason:\n" + "\n".join(lines) + "\n"


def settle(conv: Conversion, sources: str, overrides: List[str], attempts: int = 5) -> Tuple[str, Optional[str]]:
    """The experiment text and, if it still fails the checks, why. A combination our checks refuse that names
    exactly one carried-over key (a guidance value for a flavour without guidance embedding, say) drops that key,
    with the check's message as its reason, and tries again."""
    for _ in range(attempts):
        text = experiment_text(conv, sources)
        _, problem = check(text, overrides)
        named = [key for key in conv.values if problem and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", problem)]
        if problem is None or len(named) != 1:
            return text, problem
        value, src = conv.values.pop(named[0])
        conv.leave(src, conv.given.get(named[0], value), VALUE_NOT_SUPPORTED, problem)
    return text, problem


def check(text: str, overrides: Optional[List[str]] = None) -> Tuple[Optional[RunConfig], Optional[str]]:
    """Compose `text` as an experiment and run the config checks: (typed config, None) or (None, the error)."""
    from simpletuner_pl.models.registry import check_config

    body = text.split("\n", 1)[1] if text.startswith("# @package") else text
    try:
        with tempfile.TemporaryDirectory() as folder:
            cfg = to_typed(compose_experiment(body, Path(folder), list(overrides or [])))
        validate(cfg)
        check_config(cfg)
    except UserError as error:
        return None, str(error)
    except Exception as error:  # Hydra/OmegaConf composition errors: the message says which key and why
        return None, f"{type(error).__name__}: {error}"
    return cfg, None


def _lookup(tree: Dict[str, Any], key: str) -> Tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _order(key: str, ids: List[str]) -> Tuple[int, ...]:
    """Sort key: the schema's field order; dataset ids in the order they were met."""
    order = []
    for part in slot(key).position:
        if isinstance(part, str):
            if part not in ids:
                ids.append(part)
            part = ids.index(part)
        order.append(part)
    return tuple(order)
