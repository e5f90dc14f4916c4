"""The plan as text (for `python -m simpletuner_pl.plan`) and as a startup warning when a run will not fit."""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch

from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.models.registry import family
from simpletuner_pl.planner.advice import suggest, table
from simpletuner_pl.planner.budget import Facts, assemble

log = logging.getLogger(__name__)
GB = 1024**3


def describe(cfg: RunConfig, side: int) -> str:
    train = cfg.train
    ckpt = "off" if not train.gradient_checkpointing else f"every {train.gradient_checkpointing_interval or 1} block(s)"
    return (f"{cfg.model.family} ({cfg.model.flavour}), base {cfg.quant.base_model_precision} "
            f"({cfg.quant.base_model_default_dtype}), {cfg.adapter.type} rank {cfg.adapter.rank} on "
            f"{cfg.adapter.target or 'default'} targets, optimizer {cfg.optimizer.name}, {side} px, batch "
            f"{train.batch_size}, gradient checkpointing {ckpt}")


def report(cfg: RunConfig, gpu_bytes: Optional[int], side: Optional[int] = None) -> Tuple[str, bool]:
    spec = family(cfg.model.family)
    if spec.planner is None:
        return f"memory plan: the planner has no model of {spec.title} yet; no estimate", True
    facts = Facts(cfg, spec)
    side = side or cfg.data.largest_edge()
    est = assemble(cfg, facts, gpu=gpu_bytes is not None, side=side)
    lines = [f"memory plan: {describe(cfg, side)}", table(est, gpu_bytes)]
    fits = gpu_bytes is None or est.gpu <= gpu_bytes
    if not fits:
        found = suggest(cfg, facts, gpu_bytes, side)
        lines.append("cheapest changes that fit:" if found else "no combination of the planner's changes fits")
        lines += [f"  {' '.join(o)}   (GPU peak {peak / GB:.1f} GB)" for o, peak in found]
    return "\n".join(lines), fits


def check_budget(cfg: RunConfig, device: torch.device) -> None:
    """Warn at startup when the estimated peak exceeds the device (GPU memory, or RAM on a CPU-only run)."""
    spec = family(cfg.model.family)
    if spec.planner is None:
        log.info("memory plan: the planner has no model of %s yet; no estimate", spec.title)
        return
    try:
        if device.type == "cuda":
            text, fits = report(cfg, torch.cuda.get_device_properties(device).total_memory)
        else:
            import psutil

            est = assemble(cfg, Facts(cfg, spec), gpu=False)
            fits, text = est.ram <= psutil.virtual_memory().total, f"estimated RAM peak {est.ram / GB:.1f} GB"
    except Exception as err:
        log.warning("memory plan unavailable (%s: %s)", type(err).__name__, err)
        return
    if not fits:
        log.warning("this run probably does not fit in memory:\n%s", text)
