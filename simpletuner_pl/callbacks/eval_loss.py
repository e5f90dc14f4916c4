"""Stable eval loss (spacepxl's "Demystifying SD fine-tuning", SimpleTuner's eval loss) and the best adapter.

The training loss jumps with the random σ and noise of each batch, so it cannot tell when to stop. Here the same
held-out images are scored at every round with the same VAE sample and noise (fixed seed) at every σ of a fixed
grid (the inference schedule at the eval resolution), so two rounds differ only by the adapter's weights.
Logs `eval/loss` (mean over images and σ) and `eval/loss_t00..` (per σ, t00 = noisiest), writes every round to
`eval/losses.jsonl`, redraws `eval/loss_vs_sigma.png`, and keeps the adapter with the lowest loss in
`adapter/best/` (with `best.json` saying which step it is).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import lightning as L
import torch

from simpletuner_pl.callbacks.image_log import log_image
from simpletuner_pl.callbacks.plot import plot_loss_vs_sigma
from simpletuner_pl.callbacks.rounds import PeriodicRound, log_metrics
from simpletuner_pl.config.validation import EvalLossConfig
from simpletuner_pl.data.batch import Batch
from simpletuner_pl.data.held_out import HeldOutImage
from simpletuner_pl.data.images import load_pixels, normalise
from simpletuner_pl.io import write_json, write_text

log = logging.getLogger(__name__)


def batches(images: List[HeldOutImage], device: torch.device) -> Iterator[Batch]:
    """One image per batch, like SimpleTuner (eval images need not share an aspect), decoded as training does."""
    for image in images:
        pixels = normalise(load_pixels(image.path, image.geometry).unsqueeze(0))
        batch: Batch = {"pixel_values": pixels.to(device), "captions": [image.caption]}
        if image.reference is not None:  # Kontext: the reference, cropped like its image
            batch["reference_pixel_values"] = normalise(load_pixels(image.reference, image.geometry)[None]).to(device)
        yield batch


class EvalLoss(PeriodicRound):
    def __init__(self, loss_cfg: EvalLossConfig, every_n_steps: int, images: List[HeldOutImage], output_dir: Path):
        super().__init__(every_n_steps, loss_cfg.on_startup)
        self.cfg = loss_cfg
        self.items = images  # found and checked at startup, before any weight is loaded
        self.eval_dir = Path(output_dir) / "eval"
        self.best_dir = Path(output_dir) / "adapter" / "best"
        self.best: Optional[Dict[str, float]] = None  # {"step", "eval_loss"}; saved in checkpoints for resume
        self.history: List[Dict[str, Any]] = []

    def evaluate(self, module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ grid, mean loss per σ over the held-out images). Seeded per image: bit-identical for equal weights."""
        per_image = []
        for i, batch in enumerate(batches(self.items, module.device)):
            torch.manual_seed(self.cfg.seed + i)  # the caller (`isolated`) restores the training RNG
            sigmas, losses = module.eval_losses(batch, self.cfg.timesteps)
            per_image.append(losses)
        return sigmas, torch.stack(per_image).mean(0)

    def run_round(self, trainer: L.Trainer, module: L.LightningModule, step: int) -> None:
        started = time.perf_counter()
        sigmas, losses = self.evaluate(module)
        mean = losses.mean().item()
        metrics = {"eval/loss": mean, **{f"eval/loss_t{i:02d}": v.item() for i, v in enumerate(losses)},
                   "eval/loss_seconds": time.perf_counter() - started}
        log_metrics(trainer, metrics, step)
        record = {"step": step, "eval_loss": mean, "sigmas": sigmas.tolist(), "losses": losses.tolist()}
        self.history.append(record)
        lines = "".join(json.dumps(r) + "\n" for r in self.history)  # rewritten whole: right after a resume too
        write_text(self.eval_dir / "losses.jsonl", lines)
        plot = plot_loss_vs_sigma([(r["step"], r["sigmas"], r["losses"]) for r in self.history],
                                  self.eval_dir / "loss_vs_sigma.png")
        log_image(trainer, plot, "eval/loss_vs_sigma", step)
        log.info("step %d: eval/loss %.6f over %d images x %d sigmas", step, mean, len(self.items), len(sigmas))
        if self.cfg.keep_best and math.isfinite(mean) and (self.best is None or mean < self.best["eval_loss"]):
            self.best = {"step": step, "eval_loss": mean}
            module.export_adapter(self.best_dir)
            write_json(self.best_dir / "best.json", self.best)

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.history = list(state_dict.get("history", []))
