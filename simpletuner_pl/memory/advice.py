"""The cheapest changes that make a run fit: price combinations of memory options, cheapest first.

Costs are rough ranks of what a change gives up (speed or fidelity), not bytes: turning on checkpointing or CPU
offload of the encoders costs little, a coarser quantisation more, group offload slows every step, and a lower
resolution changes what is learned, so it comes last.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import List, Optional, Tuple

from simpletuner_pl.memory.budget import Facts, assemble, run_resolution

QUANT_STEPS = [("no_change", "none", 0), ("int8-quanto", "int8", 1), ("nf4-bnb", "nf4", 3),
               ("int4-quanto", "int4", 3), ("int2-quanto", "int2", 5)]


@dataclass(frozen=True)
class Change:
    overrides: Tuple[str, ...]  # Hydra overrides, as the user would type them
    settings: Tuple[Tuple[str, object], ...]  # (dotted attribute, value) applied to the typed config
    cost: float


NONE = Change((), (), 0.0)


def knobs(cfg, side: int) -> List[List[Change]]:
    train, offload, quant = cfg.train, cfg.offload, cfg.quant
    groups = []
    if not train.gradient_checkpointing or (train.gradient_checkpointing_interval or 1) > 1:
        groups.append([NONE, Change(("train.gradient_checkpointing=true", "train.gradient_checkpointing_interval=null"),
                                    (("train.gradient_checkpointing", True),
                                     ("train.gradient_checkpointing_interval", None)), 1)])
    if not offload.model_cpu_offload:
        groups.append([NONE, Change(("offload=encoders",), (("offload.model_cpu_offload", True),
                                    ("offload.offload_during_startup", True), ("offload.vae_enable_tiling", True)), 1)])
    if quant.text_encoder_2_precision == "no_change":  # T5-XXL: 9 GB in bf16, the startup peak of low-VRAM runs
        groups.append([NONE, Change(("quant.text_encoder_2_precision=int8-quanto",),
                                    (("quant.text_encoder_2_precision", "int8-quanto"),), 1)])
    if cfg.optimizer.name in ("adamw", "optimi_stableadamw", "prodigy"):
        groups.append([NONE, Change(("optimizer=bnb_adamw8bit",), (("optimizer.name", "bnb_adamw8bit"),), 1)])
    names = [p for p, _, _ in QUANT_STEPS]
    current = names.index(quant.base_model_precision) if quant.base_model_precision in names else len(names)
    groups.append([NONE] + [Change((f"quant={group}",), (("quant.base_model_precision", p),), c)
                            for p, group, c in QUANT_STEPS[current + 1:]])
    if offload.group_offload_type == "none":
        groups.append([NONE, Change(("offload=group",), (("offload.group_offload_type", "block_level"),
                                    ("offload.model_cpu_offload", False)), 4)])
    groups.append([NONE] + [Change((f"resolution={r}",), (("resolution", r),), c)
                            for r, c in ((768, 6), (512, 8)) if r < side])
    return groups


def apply(cfg, settings, side: int) -> Tuple[object, int]:
    cfg = copy.deepcopy(cfg)
    for path, value in settings:
        if path == "resolution":
            side = value
            continue
        *parents, attr = path.split(".")
        node = cfg
        for p in parents:
            node = getattr(node, p)
        setattr(node, attr, value)
    return cfg, side


def suggest(cfg, facts: Facts, budget: int, side: Optional[int] = None, limit: int = 3) -> List[Tuple[List[str], int]]:
    """Up to `limit` combinations (overrides, GPU peak) that fit `budget` bytes, cheapest first."""
    side = side or run_resolution(cfg)
    combos = sorted(itertools.product(*knobs(cfg, side)), key=lambda cs: (sum(c.cost for c in cs), len(cs)))
    found: List[Tuple[List[str], int]] = []
    for combo in combos:
        changes = [c for c in combo if c is not NONE]
        if not changes:
            continue
        overrides = sorted((o for c in changes for o in c.overrides), key=lambda o: "." in o.split("=")[0])
        if any(set(f) <= set(overrides) for f, _ in found):
            continue  # adds changes to a suggestion that already fits
        variant, variant_side = apply(cfg, [s for c in changes for s in c.settings], side)
        peak = assemble(variant, facts, side=variant_side).gpu
        if peak <= budget:
            found.append((overrides, peak))
            if len(found) == limit:
                break
    return found


def table(est, budget: Optional[int] = None) -> str:
    gb = 1024**3
    rows = [f"{name:<28}{value / gb:>9.2f} GB" for name, value in est.parts.items()]
    rows += ["-" * 39, f"{'GPU peak at startup':<28}{est.gpu_startup / gb:>9.2f} GB",
             f"{'GPU peak while training':<28}{est.gpu_training / gb:>9.2f} GB",
             f"{'system RAM peak':<28}{est.ram / gb:>9.2f} GB"]
    if budget is not None:
        verdict = "fits" if est.gpu <= budget else "does NOT fit"
        rows.append(f"{'GPU memory':<28}{budget / gb:>9.2f} GB  -> {verdict}")
    return "\n".join(rows + [f"note: {n}" for n in est.notes])

