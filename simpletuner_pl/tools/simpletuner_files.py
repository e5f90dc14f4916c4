"""Reading SimpleTuner's files: `config.json` (or `config.toml`, or a `config.env` with `TRAINER_EXTRA_ARGS`) and
`multidatabackend.json`, into plain options with SimpleTuner's bare key names.

SimpleTuner accepts its CLI spelling in config.json (`"--lora_rank": 16`, as its quickstarts write it) and the bare
name (`"lora_rank": 16`); both come out the same here. A file that does not parse is a `UserError` naming the line,
the column and the usual cause (a trailing comma, a `#` comment), never a traceback.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Dict, List, Tuple

from simpletuner_pl.errors import UserError

# config.env names of the pre-JSON SimpleTuner that are not the lower-cased option name
ENV_ALIASES = {
    "model_name": "pretrained_model_name_or_path", "max_num_steps": "max_train_steps",
    "num_epochs": "num_train_epochs", "dataloader_config": "data_backend_config",
    "training_num_processes": "num_processes", "training_dynamo_backend": "dynamo_backend",
}
ENV_IGNORED = ("trainer_extra_args", "accelerate_extra_args", "venv_path", "simpletuner_log_level", "config_backend")


class SimpleTunerFileError(UserError):
    """A SimpleTuner file that cannot be read."""


def read_options(path: Path) -> Dict[str, Any]:
    """The options of a SimpleTuner config file, keyed by bare option name (`--lora_rank` → `lora_rank`)."""
    text = _read_text(path)
    if path.suffix == ".toml":
        pairs = list(_parse_toml(path, text).items())
    elif path.suffix == ".env" or path.name.endswith(".env"):
        pairs = _parse_env(path, text)
    else:
        data = parse_json(path, text)
        if not isinstance(data, dict):
            raise SimpleTunerFileError(f"{path}: expected a JSON object of options ({{\"model_family\": ..., "
                                       f"...}}), found a {type(data).__name__}")
        pairs = list(data.items())
    return normalise(path, pairs)


def read_backends(path: Path) -> List[Dict[str, Any]]:
    """The dataset entries of a multidatabackend.json (a JSON list of objects)."""
    data = parse_json(path, _read_text(path))
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise SimpleTunerFileError(f"{path}: expected a JSON list of dataset objects, as SimpleTuner's "
                                   'multidatabackend.json: [{"id": ..., "instance_data_dir": ...}, ...]')
    return data


def parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SimpleTunerFileError(_describe_json_error(path, text, error)) from None


def normalise(path: Path, pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """Bare option names; the same option given twice with different values is an error."""
    options: Dict[str, Any] = {}
    for raw, value in pairs:
        key = str(raw).strip().lstrip("-").strip()
        if key in options and options[key] != value:
            raise SimpleTunerFileError(f"{path}: option {key} is given twice ({options[key]!r} and {value!r}, "
                                       "e.g. as both --key and key); keep one")
        options[key] = value
    return options


def parse_flags(text: str) -> List[Tuple[str, Any]]:
    """`--key value --key=value --flag` (SimpleTuner's TRAINER_EXTRA_ARGS) → pairs; a bare flag is true."""
    tokens = shlex.split(text, comments=True)
    pairs: List[Tuple[str, Any]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise SimpleTunerFileError(f"TRAINER_EXTRA_ARGS: {token!r} is not a --option (values follow their option)")
        if "=" in token:
            key, value = token.split("=", 1)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            key, value = token, tokens[i + 1]
            i += 1
        else:
            key, value = token, True
        pairs.append((key, value))
        i += 1
    return pairs


def _parse_env(path: Path, text: str) -> List[Tuple[str, Any]]:
    pairs: List[Tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        if "=" not in line:
            raise SimpleTunerFileError(f"{path}:{number}: expected NAME=value, found {line!r}")
        name, raw = line.split("=", 1)
        words = shlex.split(raw, comments=True)
        value = " ".join(words)
        key = name.strip().lower()
        if key == "trainer_extra_args":
            pairs += parse_flags(value)
        elif key not in ENV_IGNORED:
            pairs.append((ENV_ALIASES.get(key, key), value))
    return pairs


def _parse_toml(path: Path, text: str) -> Dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise SimpleTunerFileError(f"{path}: reading TOML needs Python 3.11+ (or `pip install tomli`); "
                                       "or convert it to config.json") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SimpleTunerFileError(f"{path}: not valid TOML: {error}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SimpleTunerFileError(f"{path}: no such file") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as error:
        raise SimpleTunerFileError(f"{path}: cannot be read as a text file ({error})") from None


def _describe_json_error(path: Path, text: str, error: json.JSONDecodeError) -> str:
    line = text.splitlines()[error.lineno - 1] if error.lineno <= len(text.splitlines()) else ""
    before = text[:error.pos].rstrip()
    hint = ""
    if before.endswith(",") and text[error.pos:error.pos + 1] in "}]":
        hint = " (a trailing comma before the closing bracket: JSON allows none; remove it)"
    elif text[error.pos:error.pos + 1] == "#" or line.lstrip().startswith("#"):
        hint = " (JSON has no comments: remove the # lines)"
    elif not text.lstrip().startswith(("{", "[")):
        hint = " (the file must be a whole JSON document: wrap the options in { })"
    pointer = " " * (error.colno - 1) + "^"
    return (f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}{hint}\n"
            f"    {line}\n    {pointer}")
