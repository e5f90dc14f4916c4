"""Validation images: every prompt at every resolution, with a fixed seed, at step 0, every N steps and at the end.

The images come from the family's own diffusers pipeline built over the module's components
(`module.validation_pipeline()`): the adapter-carrying, possibly quantised transformer that is being trained, with
no second copy in memory. Each image is one `InferenceCall` (`module.validation_call`), the same record the model
card turns into its snippet, so the snippet reproduces the image. A fresh CPU generator seeded with
`validation.seed` per image makes the initial noise identical across steps (and devices), so differences between
rounds are the adapter's doing.
Files: `validation/step_N/<nickname>-<W>x<H>.png` plus `grid.png`; callbacks that define
`on_validation_images(trainer, module, step, samples)` (the CLIP score) receive the images of each round.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import lightning as L

from simpletuner_pl.callbacks.image_log import log_grid, make_grid, rows_by_prompt
from simpletuner_pl.callbacks.previews import PreviewWebhook
from simpletuner_pl.callbacks.prompts import ValidationPlan
from simpletuner_pl.callbacks.rounds import PeriodicRound, log_metrics
from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.inference import run
from simpletuner_pl.io import save_image

log = logging.getLogger(__name__)


def image_path(step_dir: Path, nickname: str, width: int, height: int) -> Path:
    path = step_dir / f"{nickname}-{width}x{height}.png"
    if path.resolve().parent != step_dir.resolve():  # nicknames are sanitised; this is the last line of defence
        raise ValueError(f"validation image name {path.name!r} leaves {step_dir}")
    return path


class ValidationImages(PeriodicRound):
    def __init__(self, validation: ValidationConfig, plan: ValidationPlan, output_dir: Path,
                 preview: Optional[PreviewWebhook] = None):
        super().__init__(validation.every_n_steps, validation.on_startup)
        self.cfg, self.plan = validation, plan
        self.root = Path(output_dir) / "validation"
        self.preview = preview

    def render(self, module: L.LightningModule, step: int) -> List[Dict[str, object]]:
        pipe = module.validation_pipeline()
        pipe.set_progress_bar_config(disable=True)
        samples = []
        for prompt in self.plan.prompts:
            for width, height in self.plan.sizes:
                call = module.validation_call(self.cfg, prompt.prompt, width, height, prompt.adapter_strength)
                extra = {}
                if self.preview is not None:
                    info = {"global_step": step, "nickname": prompt.nickname, "prompt": prompt.prompt}
                    extra["callback_on_step_end"] = self.preview.step_callback(
                        module, info, width, height, self.cfg.num_inference_steps)
                with module.adapter_strength(prompt.adapter_strength):  # LoKr's multiplier; LoRA: in `call`
                    image = run(pipe, call, self.plan.seed, **extra)
                samples.append({"nickname": prompt.nickname, "prompt": prompt.prompt, "width": width,
                                "height": height, "image": image})
        return samples

    def run_round(self, trainer: L.Trainer, module: L.LightningModule, step: int) -> None:
        started = time.perf_counter()
        if self.preview is not None:
            self.preview.attach(module)
        try:
            samples = self.render(module, step)
        finally:
            if self.preview is not None:
                self.preview.detach()
        step_dir = self.root / f"step_{step}"
        step_dir.mkdir(parents=True, exist_ok=True)
        for sample in samples:
            sample["path"] = image_path(step_dir, sample["nickname"], sample["width"], sample["height"])
            save_image(sample["image"], sample["path"])
        log_grid(trainer, make_grid(rows_by_prompt(samples)), step_dir / "grid.png", step)
        seconds = time.perf_counter() - started
        log_metrics(trainer, {"validation/seconds": seconds}, step)
        log.info("step %d: %d validation images in %.1f s -> %s", step, len(samples), seconds, step_dir)
        for callback in trainer.callbacks:
            if hasattr(callback, "on_validation_images"):
                callback.on_validation_images(trainer, module, step, samples)
