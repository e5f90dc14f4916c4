"""Which checkpoint a run continues from, and whether it may: decided before any weight is loaded.

`train.resume=latest` takes the newest *intact* checkpoint of `output_dir` (step checkpoints, `last.ckpt`, SLURM's
`hpc_ckpt_N.ckpt`), stepping past a truncated or unreadable one with a warning. Checkpoints are read with
`weights_only=True`: a file that needs to unpickle code is refused, never run. A resumed run must train what the
checkpoint trained: every key that changes the training (model, adapter, optimizer, objective, data, seed) has to be
as recorded in the checkpoint; only schedules of saving, logging, validation and placement may change. A finished
run is not silently re-run, and a fresh run never overwrites one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.errors import ConfigError

log = logging.getLogger(__name__)
RECORD = "simpletuner_pl"  # checkpoint key holding the run's config (callbacks.checkpointing.RunRecord)
# Keys that may differ between a checkpoint and the run resuming it (prefixes of dotted keys).
MAY_CHANGE = ("train.max_steps", "train.checkpoint_every_n_steps", "train.checkpoints_total_limit",
              "train.adapter_every_n_steps", "train.log_every_n_steps", "train.resume", "train.compile",
              "train.gradient_checkpointing", "validation.", "eval.", "trainer.", "offload.", "output_dir",
              "data.num_workers", "data.vae_batch_size", "data.cache_dir", "data.text_embeds.", "quant.cache_dir",
              "quant.quantize_via", "model.attention_backend", "logger.", "hub.")


@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int
    config: Optional[Dict[str, Any]]  # the run's config as recorded, None for checkpoints of other tools


def read(path: Path) -> Dict[str, Any]:
    """A checkpoint's contents without unpickling code (tensors, numbers, strings and containers only)."""
    import pickle

    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # mmap needs the zip format; a legacy pickle gets the same safe unpickler
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        code = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), None)
        if code is None:
            raise  # not a pickle the safe unpickler can read: damaged, to be skipped like a truncated file
        raise ConfigError(f"{path} is not a plain checkpoint: loading it would run code it carries ({code}); "
                          "only checkpoints written by this tool are resumed") from None


def describe(path: Path) -> Checkpoint:
    state = read(path)
    return Checkpoint(str(path), int(state["global_step"]), (state.get(RECORD) or {}).get("config"))


def candidates(output_dir: Path) -> List[Path]:
    return sorted([*(output_dir / "checkpoints").glob("*.ckpt"), *output_dir.glob("hpc_ckpt_*.ckpt")])


def newest_intact(output_dir: Path) -> Optional[Checkpoint]:
    found = []
    for path in candidates(output_dir):
        try:
            found.append((describe(path), path.stat().st_mtime_ns))
        except ConfigError:
            raise
        except Exception as err:  # truncated, emptied or garbage: the previous one is still good
            log.warning("checkpoint %s is unreadable (%s: %s); trying the one before it", path, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "")
    return max(found, key=lambda item: (item[0].step, item[1]))[0] if found else None


def holds_a_run(output_dir: Path) -> bool:
    adapter = output_dir / "adapter"
    return bool(candidates(output_dir)) or (output_dir / "metrics.csv").is_file() or (
        adapter.is_dir() and any(adapter.iterdir()))


def choose(cfg: RunConfig) -> Optional[Checkpoint]:
    """The checkpoint `train.resume` names (null, latest, a step number or a .ckpt path), checked against `cfg`."""
    output_dir, resume = Path(cfg.output_dir), cfg.train.resume
    if resume is None:
        if holds_a_run(output_dir):
            raise ConfigError(f"output_dir={output_dir} already holds a run and train.resume=null would overwrite "
                              "it: resume it (train.resume=latest, the default) or choose a new output_dir")
        return None
    if resume == "latest":
        found = newest_intact(output_dir)
        if found is None and holds_a_run(output_dir):
            raise ConfigError(f"output_dir={output_dir} holds a run's outputs but no readable checkpoint to resume; "
                              "choose a new output_dir (or delete that run's files)")
    else:
        path = output_dir / "checkpoints" / f"step={resume}.ckpt" if str(resume).isdigit() else Path(resume)
        if not path.is_file():
            raise ConfigError(f"train.resume={resume}: no such checkpoint file ({path})")
        try:
            found = describe(path)
        except ConfigError:
            raise
        except Exception as err:  # a damaged file
            raise ConfigError(f"train.resume={resume}: {path} is unreadable ({type(err).__name__}); pick another "
                              "checkpoint or train.resume=latest") from None
    if found is not None:
        check_compatible(found, cfg)
    return found


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def check_compatible(found: Checkpoint, cfg: RunConfig) -> None:
    if found.step >= cfg.train.max_steps:
        raise ConfigError(f"{found.path} is already at step {found.step} (train.max_steps={cfg.train.max_steps}): "
                          "the run is finished. Raise train.max_steps to train on, or choose a new output_dir.")
    if found.config is None:
        return
    recorded, current = flatten(found.config), flatten(dataclasses.asdict(cfg))
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k)
                     and not k.startswith(MAY_CHANGE) and not k.endswith(".cache_dir_vae"))
    if changed:
        shown = "; ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"cannot resume {found.path} with a different training setup ({shown}"
                          f"{'; ...' if len(changed) > 8 else ''}). Keep those values, or start a new run in a new "
                          "output_dir (or train.resume=null there).")
