"""`validation.*` and `eval.*`: validation images, CLIP score and the stable eval loss.

Key names follow SimpleTuner's (`validation_guidance_real` → `validation.guidance_real`, ...) so its users can carry
their settings over. `parse_resolutions` turns `validation.resolutions` into sizes once, for the checks and the
callbacks alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from simpletuner_pl.config.fields import at_least, choice
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
    guidance: float = at_least(4.0, 0.0)  # Flux: the embedded (distilled) guidance value; SDXL: CFG scale
    guidance_real: float = at_least(1.0, 1.0, hint="1 = no true CFG")  # Flux true CFG with the negative prompt
    no_cfg_until_timestep: int = at_least(2, 0)  # Flux true CFG starts at this step index (SimpleTuner's default)
    reference_image: Optional[str] = None  # Kontext: the input image every validation prompt edits
    negative_prompt: Optional[str] = "blurry, cropped, ugly"
    num_inference_steps: int = at_least(20, 1)  # the Flux quickstart's advice: ~20 is enough to judge
    every_n_steps: int = at_least(100, 1)
    on_startup: bool = True  # step-0 images of the untrained adapter: the base-model benchmark
    seed: Optional[int] = None  # None = the run's seed; a fresh generator per prompt and resolution
    preview: bool = False  # stream intermediate latents, decoded by a Tiny AutoEncoder, to webhook_url
    preview_steps: int = at_least(1, 1)
    preview_decoder: Optional[str] = None  # AutoencoderTiny folder or hub id; None = the family's (taef1 for Flux)
    webhook_url: Optional[str] = None
    webhook_timeout_s: float = at_least(5.0, 0.0, strict=True)


@dataclass
class ClipScoreConfig:
    enabled: bool = False
    # transformers CLIP folder or hub id, or `open_clip:<arch>[:<pretrained tag | weights file | random>]`
    model: str = "openai/clip-vit-large-patch14-336"


@dataclass
class EvalLossConfig:
    enabled: bool = False
    every_n_steps: Optional[int] = at_least(None, 1)  # None = validation.every_n_steps
    on_startup: bool = True
    timesteps: int = at_least(28, 1)  # σ grid: the inference schedule at the eval resolution (with its shift)
    num_images: int = at_least(4, 1)  # held-out images per evaluation (SimpleTuner's num_eval_images)
    instance_data_dir: Optional[str] = None  # held-out folder; else data.datasets with dataset_type=eval
    caption_strategy: str = choice("textfile", "textfile", "filename")  # textfile falls back to the file name
    resolution: Optional[int] = at_least(None, RESOLUTION_MULTIPLE)  # square side; None = the training data's
    seed: int = 0  # noise and VAE-sample seed, identical every evaluation
    keep_best: bool = True  # copy the adapter with the lowest eval/loss to adapter/best/

    def period(self, validation: ValidationConfig) -> int:
        return self.every_n_steps if self.every_n_steps is not None else validation.every_n_steps


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
