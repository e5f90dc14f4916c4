"""Validation prompts: `validation.prompt` plus a JSON prompt library, with nicknames made into safe file names.

A library is SimpleTuner's `user_prompt_library` format: `{"nickname": "prompt"}` or
`{"nickname": {"prompt": "...", "adapter_strength": 0.8}}`. Nicknames become file names, so they are reduced to
`[A-Za-z0-9_-]` (no separators, no dots: `../x` cannot leave the step folder) and de-duplicated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

from simpletuner_pl.config.validation import ValidationConfig, parse_resolutions
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.paths import shipped_prompt_libraries

TOKEN = "<token>"
_PROMPT_KEYS = ("prompt", "caption", "tags")
MAX_NICKNAME = 80


@dataclass(frozen=True)
class ValidationPrompt:
    nickname: str  # safe file-name stem, unique within a run
    prompt: str
    adapter_strength: float = 1.0


def library_path(value: str) -> Path:
    """A path as given, else a library shipped in `conf/validation/` (works from an installed wheel too)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    shipped = shipped_prompt_libraries()
    if value in shipped:
        return shipped[value]
    raise ConfigError(f"validation.prompt_library={value}: no such file; give a JSON file path or one of the shipped "
                      f"libraries: {', '.join(shipped) or '(none)'}")


def safe_nickname(name: str) -> str:
    """`../x` → `x`, `a/b` → `a_b`, `anime <tok>` → `anime_tok`: only letters, digits, `_` and `-` survive."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:MAX_NICKNAME]
    return cleaned or "prompt"


def _entry(nickname: str, value) -> Tuple[str, float]:
    if isinstance(value, str):
        return value, 1.0
    if isinstance(value, dict):
        unknown = set(value) - set(_PROMPT_KEYS) - {"adapter_strength"}
        texts = [value[k] for k in _PROMPT_KEYS if k in value]
        if not unknown and len(texts) == 1 and isinstance(texts[0], str):
            return texts[0], float(value.get("adapter_strength", 1.0))
    raise ConfigError(f"prompt library entry {nickname!r}: expected a prompt string or "
                      "{\"prompt\": \"...\", \"adapter_strength\": 1.0}")


def load_library(path: Path, token: str | None) -> List[Tuple[str, str, float]]:
    """[(nickname, prompt, adapter_strength)] with `<token>` replaced, in file order."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"validation.prompt_library={path}: not readable JSON ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"validation.prompt_library={path}: expected a non-empty JSON object nickname -> prompt")
    if token is None and TOKEN in json.dumps(raw):
        raise ConfigError(f"validation.prompt_library={path.name} uses {TOKEN}: set validation.token=<your trigger "
                          "word> (usually the dataset's instance_prompt)")
    entries = []
    for nickname, value in raw.items():
        prompt, strength = _entry(nickname, value)
        entries.append((nickname.replace(TOKEN, token or TOKEN), prompt.replace(TOKEN, token or TOKEN), strength))
    return entries


@dataclass(frozen=True)
class ValidationPlan:
    """What every validation round renders, parsed once at startup (the callback and the model card share it)."""

    prompts: List[ValidationPrompt]
    sizes: List[Tuple[int, int]]  # (width, height)
    seed: int


def validation_plan(validation: ValidationConfig, run_seed: int) -> ValidationPlan:
    return ValidationPlan(validation_prompts(validation), parse_resolutions(validation.resolutions),
                          validation.seed if validation.seed is not None else run_seed)


def validation_prompts(validation_cfg: ValidationConfig) -> List[ValidationPrompt]:
    """Every prompt to render, in a stable order, each with a unique safe nickname."""
    entries: List[Tuple[str, str, float]] = []
    if validation_cfg.prompt:
        entries.append(("validation", validation_cfg.prompt, 1.0))
    if validation_cfg.prompt_library:
        entries += load_library(library_path(validation_cfg.prompt_library), validation_cfg.token)
    if not entries:
        raise ConfigError("validation.enabled=true needs validation.prompt=\"...\" and/or validation.prompt_library")
    prompts, used = [], set()
    for name, prompt, strength in entries:
        stem, n = safe_nickname(name), 2
        unique = stem
        while unique.lower() in used:  # `a/b` next to `a_b`; case-insensitive file systems
            unique, n = f"{stem}_{n}", n + 1
        used.add(unique.lower())
        prompts.append(ValidationPrompt(unique, prompt, strength))
    return prompts
