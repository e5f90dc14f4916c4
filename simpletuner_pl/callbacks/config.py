"""Typed `validation.*` and `eval.*` settings, and the checks that run before any weight is loaded.

Key names follow SimpleTuner's (`validation_guidance_real` → `validation.guidance_real`, ...) so its users can carry
their settings over. `check_validation_config` rejects every combination that would otherwise fail (or silently do
nothing) hours into a run: previews without a webhook, CLIP scores without images, an eval set inside the training
folders, sizes the Flux latent packing cannot represent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

from simpletuner_pl.errors import ConfigError

RESOLUTION_MULTIPLE = 16  # Flux: VAE factor 8 x 2x2 latent packing; SDXL needs 8, so 16 suits both


@dataclass
class ValidationConfig:
    enabled: bool = False
    prompt: Optional[str] = None  # rendered with nickname "validation"
    prompt_library: Optional[str] = None  # JSON nickname -> prompt; a path, or a file shipped in conf/validation/
    token: Optional[str] = None  # replaces `<token>` in prompt-library nicknames and prompts
    # "WxH,WxH" or "N" (square), or a list: validation.resolutions=[1024x1024,1280x768] (a comma in a CLI
    # string needs Hydra quoting: 'validation.resolutions="1024x1024,1280x768"')
    resolutions: Any = "1024x1024"
    guidance: float = 4.0  # Flux: the embedded (distilled) guidance value; SDXL: CFG scale
    guidance_real: float = 1.0  # Flux true CFG with the negative prompt when > 1 (one extra pass per step)
    negative_prompt: Optional[str] = "blurry, cropped, ugly"
    num_inference_steps: int = 30
    every_n_steps: int = 100
    on_startup: bool = True  # step-0 images of the untrained adapter: the base-model benchmark
    seed: Optional[int] = None  # None = the run's seed; a fresh generator per prompt and resolution
    preview: bool = False  # stream intermediate latents, decoded by a Tiny AutoEncoder, to webhook_url
    preview_steps: int = 1
    preview_decoder: Optional[str] = None  # AutoencoderTiny folder or hub id; None = the family's (taef1 for Flux)
    webhook_url: Optional[str] = None
    webhook_timeout_s: float = 5.0


@dataclass
class ClipScoreConfig:
    enabled: bool = False
    # transformers CLIP folder or hub id, or `open_clip:<arch>[:<pretrained tag | weights file | random>]`
    model: str = "openai/clip-vit-large-patch14-336"


@dataclass
class EvalLossConfig:
    enabled: bool = False
    every_n_steps: Optional[int] = None  # None = validation.every_n_steps
    on_startup: bool = True
    timesteps: int = 28  # σ grid: the inference schedule at the eval resolution (with its shift)
    num_images: int = 4  # held-out images per evaluation (SimpleTuner's num_eval_images)
    instance_data_dir: Optional[str] = None  # held-out folder; else data.datasets with dataset_type=eval
    caption_strategy: str = field(default="textfile", metadata={"choices": ("textfile", "filename")})
    resolution: Optional[int] = None  # square side in px; None = the training datasets' resolution
    seed: int = 0  # noise and VAE-sample seed, identical every evaluation
    keep_best: bool = True  # copy the adapter with the lowest eval/loss to adapter/best/


@dataclass
class EvalConfig:
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    eval_loss: EvalLossConfig = field(default_factory=EvalLossConfig)


def parse_resolutions(value: Any) -> List[Tuple[int, int]]:
    """`"1024x1024, 1280x768"` (or a list of items) → [(1024, 1024), (1280, 768)] as (width, height); `"512"` and
    512 are square."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    sizes = []
    for item in filter(None, (str(part).strip() for part in items)):
        try:
            width, height = (int(v) for v in item.lower().split("x")) if "x" in item.lower() else (int(item),) * 2
        except ValueError:
            raise ConfigError(f"validation.resolutions: {item!r} is not WxH or N "
                              "(e.g. [1024x1024,1280x768])") from None
        for side in (width, height):
            if side <= 0 or side % RESOLUTION_MULTIPLE:
                fixed = max(RESOLUTION_MULTIPLE, round(side / RESOLUTION_MULTIPLE) * RESOLUTION_MULTIPLE)
                raise ConfigError(f"validation.resolutions: {item} has side {side}, which is not a positive multiple "
                                  f"of {RESOLUTION_MULTIPLE}; use {fixed}")
        sizes.append((width, height))
    if not sizes:
        raise ConfigError("validation.resolutions is empty; give e.g. \"1024x1024\"")
    return list(dict.fromkeys(sizes))


def check_validation_config(cfg) -> None:
    """Cross-option checks of `validation.*` and `eval.*` (called by `simpletuner_pl.config.validate`)."""
    from simpletuner_pl.callbacks.prompts import validation_prompts

    v, clip, loss = cfg.validation, cfg.eval.clip_score, cfg.eval.eval_loss
    if v.enabled:
        parse_resolutions(v.resolutions)
        validation_prompts(v)  # raises if there is no prompt, or the library is missing or malformed
        for key in ("num_inference_steps", "every_n_steps", "preview_steps"):
            if getattr(v, key) < 1:
                raise ConfigError(f"validation.{key} must be >= 1")
        if v.guidance_real < 1:
            raise ConfigError("validation.guidance_real must be >= 1 (1 = no true CFG)")
        if v.guidance_real > 1 and v.negative_prompt is None:
            raise ConfigError("validation.guidance_real > 1 needs validation.negative_prompt (\"\" is allowed)")
    if v.preview and not v.enabled:
        raise ConfigError("validation.preview=true needs validation.enabled=true (previews are of validation images)")
    if v.preview and not v.webhook_url:
        raise ConfigError("validation.preview=true needs validation.webhook_url=http://host:port/path: previews are "
                          "posted there as JSON; set it, or validation.preview=false")
    if v.webhook_url and not str(v.webhook_url).startswith(("http://", "https://")):
        raise ConfigError(f"validation.webhook_url={v.webhook_url!r} must start with http:// or https://")
    if clip.enabled and not v.enabled:
        raise ConfigError("eval.clip_score.enabled=true scores the validation images: set validation.enabled=true "
                          "(e.g. validation=on) or eval.clip_score.enabled=false")
    if loss.enabled:
        _check_eval_loss(cfg)


def _check_eval_loss(cfg) -> None:
    from simpletuner_pl.callbacks.eval_data import held_out_source

    loss = cfg.eval.eval_loss
    every = loss.every_n_steps if loss.every_n_steps is not None else cfg.validation.every_n_steps
    if every < 1 or loss.timesteps < 1 or loss.num_images < 1:
        raise ConfigError("eval.eval_loss.every_n_steps, .timesteps and .num_images must be >= 1")
    if loss.resolution is not None and (loss.resolution <= 0 or loss.resolution % RESOLUTION_MULTIPLE):
        raise ConfigError(f"eval.eval_loss.resolution={loss.resolution} must be a positive multiple of "
                          f"{RESOLUTION_MULTIPLE}")
    held_out = held_out_source(cfg)  # raises when there is none
    for name, ds in cfg.data.enabled().items():
        if ds.dataset_type == "eval" or not ds.instance_data_dir:
            continue
        train_dir = Path(ds.instance_data_dir).expanduser().resolve()
        if held_out.root == train_dir or train_dir in held_out.root.parents or held_out.root in train_dir.parents:
            raise ConfigError(f"the eval-loss images ({held_out.root}) overlap training dataset {name} "
                              f"({train_dir}): held-out images must never be trained on; use a separate folder")
