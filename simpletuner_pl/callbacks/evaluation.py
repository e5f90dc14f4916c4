"""The validation/evaluation callbacks a run asks for, in the order their end-of-training work needs: images first
(the CLIP score reads them), then the eval loss (it writes `adapter/best/`), then the model card (it links both).
Everything they read from disk (prompt libraries, held-out images, model sources) was checked at startup by
`simpletuner_pl.preflight`; what it found is handed in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import lightning as L

from simpletuner_pl.callbacks.clip_score import ClipScore
from simpletuner_pl.callbacks.eval_loss import EvalLoss
from simpletuner_pl.callbacks.model_card import ModelCard
from simpletuner_pl.callbacks.model_sources import preview_decoder
from simpletuner_pl.callbacks.previews import PreviewWebhook
from simpletuner_pl.callbacks.prompts import ValidationPlan
from simpletuner_pl.callbacks.validation import ValidationImages
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.data.held_out import HeldOutImage


def evaluation_callbacks(cfg: RunConfig, output_dir: Path, plan: Optional[ValidationPlan],
                         held_out: Optional[List[HeldOutImage]]) -> List[L.Callback]:
    v: ValidationConfig = cfg.validation
    callbacks: List[L.Callback] = []
    if plan is not None:
        preview = PreviewWebhook(v, preview_decoder(cfg)) if v.preview else None
        callbacks.append(ValidationImages(v, plan, output_dir, preview))
    if cfg.eval.clip_score.enabled:
        callbacks.append(ClipScore(cfg.eval.clip_score))
    if held_out is not None:
        loss = cfg.eval.eval_loss
        callbacks.append(EvalLoss(loss, loss.period(v), held_out, output_dir))
    return callbacks + [ModelCard(cfg, plan, output_dir)]
