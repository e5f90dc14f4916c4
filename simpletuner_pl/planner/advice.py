"""The cheapest changes that make a run fit: price combinations of memory options, cheapest first.

Each change is spelled once, as the Hydra overrides a user would type (`offload=encoders`,
`quant.text_encoder_2_precision=int8-quanto`); pricing applies exactly those, reading a group option from its own
file in `conf/`, so the planner can never drift from the groups it suggests. Costs are rough ranks of what a change
gives up (speed or fidelity), not bytes: checkpointing or CPU offload of the encoders costs little, a coarser
quantisation more, group offload slows every step, and a lower resolution changes what is learned, so it is last.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from simpletuner_pl.config.registries import OPTIMIZERS, PRECISIONS
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.paths import group_option
from simpletuner_pl.planner.budget import Facts, assemble
from simpletuner_pl.planner.estimate import Estimate

QUANT_COSTS = {"int8-quanto": 1, "nf4-bnb": 3, "int4-quanto": 3, "int2-quanto": 5}  # in order of memory saved


@dataclass(frozen=True)
class Change:
    overrides: Tuple[str, ...]  # Hydra overrides, as the user would type them
    cost: float


NONE = Change((), 0.0)


def knobs(cfg: RunConfig, side: int) -> List[List[Change]]:
    """Groups of alternative changes (pick at most one per group) that lower the peak."""
    train, offload, quant = cfg.train, cfg.offload, cfg.quant
    groups = []
    if not train.gradient_checkpointing or (train.gradient_checkpointing_interval or 1) > 1:
        groups.append([NONE, Change(("train.gradient_checkpointing=true",
                                     "train.gradient_checkpointing_interval=null"), 1)])
    if not offload.model_cpu_offload and not offload.grouped:
        groups.append([NONE, Change(("offload=encoders",), 1), Change(("offload=group",), 4)])
    if quant.text_encoder_2_precision == "no_change":  # T5-XXL: 9 GB in bf16, the startup peak of low-VRAM runs
        groups.append([NONE, Change(("quant.text_encoder_2_precision=int8-quanto",), 1)])
    if OPTIMIZERS[cfg.optimizer.name].state_bytes >= 8:
        groups.append([NONE, Change(("optimizer=bnb_adamw8bit",), 1)])
    order = list(QUANT_COSTS)
    coarser = order[order.index(quant.base_model_precision) + 1:] if quant.base_model_precision in order else \
        order if quant.base_model_precision == "no_change" else []
    groups.append([NONE] + [Change((f"quant={PRECISIONS[p].group}",), QUANT_COSTS[p]) for p in coarser])
    groups.append([NONE] + [Change((f"resolution={r}",), c) for r, c in ((768, 6), (512, 8)) if r < side])
    return groups


@lru_cache(maxsize=None)
def group_section(section_type: type, group: str, option: str):
    """The section a `group=option` selection gives, typed by Hydra's own rules (`conf/<group>/<option>.yaml`
    over the section's defaults)."""
    from omegaconf import OmegaConf

    settings = OmegaConf.load(group_option(group, option))
    settings.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(section_type), settings))


def apply(cfg: RunConfig, overrides: Sequence[str], side: int) -> Tuple[RunConfig, int]:
    """`cfg` with the overrides applied as Hydra would: group options first (from the group's defaults), then
    dotted keys; `resolution=N` changes the priced side only."""
    sections: Dict[str, object] = {}
    for override in sorted(overrides, key=lambda o: "." in o.split("=")[0]):
        key, value = override.split("=", 1)
        if key == "resolution":
            side = int(value)
        elif "." in key:
            section, name = key.split(".", 1)
            current = sections.get(section, getattr(cfg, section))
            sections[section] = dataclasses.replace(current, **{name: yaml.safe_load(value)})
        else:
            sections[key] = group_section(type(getattr(cfg, key)), key, value)
    return dataclasses.replace(cfg, **sections), side


def suggest(cfg: RunConfig, facts: Facts, budget: int, side: Optional[int] = None,
            limit: int = 3) -> List[Tuple[List[str], int]]:
    """Up to `limit` combinations (overrides, GPU peak) that fit `budget` bytes, cheapest first."""
    side = side or cfg.data.largest_edge()
    combos = sorted(itertools.product(*knobs(cfg, side)), key=lambda cs: (sum(c.cost for c in cs), len(cs)))
    found: List[Tuple[List[str], int]] = []
    for combo in combos:
        overrides = sorted((o for c in combo for o in c.overrides), key=lambda o: "." in o.split("=")[0])
        if not overrides or any(set(f) <= set(overrides) for f, _ in found):
            continue  # nothing changed, or adds changes to a suggestion that already fits
        variant, variant_side = apply(cfg, overrides, side)
        peak = assemble(variant, facts, side=variant_side).gpu
        if peak <= budget:
            found.append((overrides, peak))
            if len(found) == limit:
                break
    return found


def table(est: Estimate, budget: Optional[int] = None) -> str:
    gb = 1024**3
    rows = [f"{name:<28}{value / gb:>9.2f} GB" for name, value in est.parts.items()]
    rows += ["-" * 39, f"{'GPU peak at startup':<28}{est.gpu_startup / gb:>9.2f} GB",
             f"{'GPU peak while training':<28}{est.gpu_training / gb:>9.2f} GB",
             f"{'system RAM peak':<28}{est.ram / gb:>9.2f} GB"]
    if budget is not None:
        verdict = "fits" if est.gpu <= budget else "does NOT fit"
        rows.append(f"{'GPU memory':<28}{budget / gb:>9.2f} GB  -> {verdict}")
    return "\n".join(rows + [f"note: {n}" for n in est.notes])
