"""The validation/evaluation callbacks a run's config asks for, in the order their end-of-training work needs:
images first (the CLIP score reads them), then the eval loss (it writes `adapter/best/`), then the model card
(it links both). Constructors check their model sources and folders, so a bad path fails before weights load.

Family modules take part through a small interface, checked here up front:
`validation_pipeline()`, `validation_kwargs(validation_cfg, adapter_strength)` (images and model card),
`preview_latents(latents, height, width)` and the class attribute `preview_decoder` (previews),
`eval_losses(batch, num_timesteps) -> (sigmas, losses)` (eval loss).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from simpletuner_pl.errors import ConfigError


def family_class(cfg) -> type:
    if cfg.model.family == "sdxl":
        from simpletuner_pl.models.sdxl import SDXLModule

        return SDXLModule
    from simpletuner_pl.models.flux import FluxModule

    return FluxModule


def require(family: type, setting: str, *members: str) -> None:
    missing = [m for m in members if not getattr(family, m, None)]
    if missing:
        raise ConfigError(f"{setting} is not available for {family.__name__} yet (it has no {', '.join(missing)}); "
                          f"turn it off for this model family")


def evaluation_callbacks(cfg, output_dir: Path) -> List:
    from simpletuner_pl.callbacks.model_card import ModelCard

    callbacks: List = []
    v, family = cfg.validation, family_class(cfg)
    if v.enabled:
        from simpletuner_pl.callbacks.validation import ValidationImages

        require(family, "validation.enabled=true", "validation_pipeline", "validation_kwargs")
        preview = None
        if v.preview:
            from simpletuner_pl.callbacks.previews import PreviewWebhook, check_decoder_source

            require(family, "validation.preview=true", "preview_latents")
            if not (v.preview_decoder or getattr(family, "preview_decoder", None)):
                raise ConfigError(f"{family.__name__} has no default Tiny AutoEncoder for previews: set "
                                  "validation.preview_decoder=<AutoencoderTiny folder or hub id>")
            decoder = v.preview_decoder or family.preview_decoder
            check_decoder_source(decoder)
            preview = PreviewWebhook(v, decoder)
        callbacks.append(ValidationImages(cfg, output_dir, preview))
    if cfg.eval.clip_score.enabled:
        from simpletuner_pl.callbacks.clip_score import ClipScore

        callbacks.append(ClipScore(cfg.eval.clip_score))
    if cfg.eval.eval_loss.enabled:
        from simpletuner_pl.callbacks.eval_loss import EvalLoss

        require(family, "eval.eval_loss.enabled=true", "eval_losses")
        callbacks.append(EvalLoss(cfg, output_dir))
    return callbacks + [ModelCard(cfg, output_dir)]
