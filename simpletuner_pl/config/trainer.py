"""`trainer.*`: any `lightning.Trainer` argument, checked against the installed Lightning's own signature.

The names are read from Lightning's source with `ast` instead of importing it (which pulls in torch), so a typo
fails in milliseconds, with the closest valid names. Arguments this package sets from its own keys are refused
with the key to use instead, so each setting has one home.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from simpletuner_pl.errors import ConfigError

OWNED = {
    "max_steps": "train.max_steps", "accumulate_grad_batches": "train.gradient_accumulation_steps",
    "gradient_clip_val": "train.max_grad_norm", "gradient_clip_algorithm": "train.max_grad_norm (global norm)",
    "log_every_n_steps": "train.log_every_n_steps", "default_root_dir": "output_dir",
    "logger": "logger= (csv|tensorboard|wandb|mlflow; several: logger=[tensorboard,wandb])",
    "callbacks": "the run's own callbacks",
    "plugins": "the atomic checkpoint writer",
    "strategy": "the strategy= group (strategy=ddp|fsdp|deepspeed_zero2|...)",
}


@lru_cache(maxsize=1)
def trainer_parameters() -> Tuple[str, ...]:
    """Keyword parameters of `lightning.Trainer.__init__` in the installed Lightning."""
    spec = importlib.util.find_spec("lightning")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("lightning is not installed: `pip install lightning`")
    source = Path(spec.submodule_search_locations[0]) / "pytorch" / "trainer" / "trainer.py"
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            init = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
            return tuple(a.arg for a in [*init.args.args[1:], *init.args.kwonlyargs])
    raise ConfigError(f"cannot read lightning.Trainer's arguments from {source}")


def check_trainer_args(trainer: Mapping[str, Any]) -> Dict[str, Any]:
    """The `trainer.*` arguments to pass through (nulls dropped: they mean Lightning's default)."""
    valid = trainer_parameters()
    for key in trainer:
        if key in OWNED:
            raise ConfigError(f"trainer.{key} is set from {OWNED[key]}; use that instead of trainer.{key}")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"trainer.{key} is not a lightning.Trainer argument{hint}; valid: "
                              f"{', '.join(k for k in valid if k not in OWNED)}")
    return {k: v for k, v in trainer.items() if v is not None}
