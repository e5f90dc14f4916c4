"""The typed run configuration: one dataclass per `conf/` group, registered as the schema of `conf/train.yaml`.

Hydra rejects unknown keys and wrongly typed values while composing; `choice`/`at_least`/`between` declare what a
type cannot say, checked by `simpletuner_pl.config.checks.validate` before anything heavy is imported. Which values
a family accepts (flavours, LoRA targets) is the family's to say (`simpletuner_pl.models.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from simpletuner_pl.config.adapter import AdapterConfig
from simpletuner_pl.config.data import DataConfig
from simpletuner_pl.config.fields import at_least, between, choice
from simpletuner_pl.config.hub import HubConfig
from simpletuner_pl.config.logging import LoggerConfig
from simpletuner_pl.config.offload import OffloadConfig
from simpletuner_pl.config.registries import (
    ATTENTION_BACKENDS,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    OPTIMIZERS,
    PRECISIONS,
    SIGMA_SAMPLING,
)
from simpletuner_pl.config.strategy import StrategyConfig
from simpletuner_pl.config.validation import EvalConfig, ValidationConfig

_PRECISIONS = tuple(PRECISIONS)


@dataclass
class ModelConfig:
    """Which pipeline to train and where its weights come from (SimpleTuner's `model_family`/`model_flavour`)."""

    family: str = "flux"  # a registered family: simpletuner_pl.models.registry.FAMILIES
    flavour: str = "krea"  # one of the family's flavours
    tiny: bool = False  # the family's tiny random-init model (tests, the demo), built for the flavour
    pretrained_model_name_or_path: Optional[str] = "black-forest-labs/FLUX.1-Krea-dev"
    pretrained_transformer_model_name_or_path: Optional[str] = None
    pretrained_transformer_subfolder: Optional[str] = "transformer"
    pretrained_vae_model_name_or_path: Optional[str] = None
    pretrained_vae_subfolder: Optional[str] = "vae"
    pretrained_unet_model_name_or_path: Optional[str] = None  # SDXL: UNet from another repo or folder
    pretrained_unet_subfolder: Optional[str] = "unet"
    prediction_type: Optional[str] = choice(None, None, "epsilon", "v_prediction")  # SDXL; null = scheduler config
    revision: Optional[str] = None
    guidance_value: float = at_least(1.0, 0.0)
    guidance_mode: str = choice("constant", "constant", "random-range")  # random-range: U(guidance_min, _max)
    guidance_min: float = at_least(0.0, 0.0)
    guidance_max: float = at_least(4.0, 0.0)
    t5_max_length: int = at_least(512, 1)
    t5_padding: str = choice("unmodified", "unmodified", "zero")  # zero: T5 outputs at pad tokens set to 0
    attention_masked_training: bool = False  # pad tokens of the T5 sequence are masked out of the joint attention
    assistant_lora_path: Optional[str] = None  # schnell: a frozen LoRA stacked during training, removed after
    attention_backend: str = choice("sdpa", *ATTENTION_BACKENDS)  # diffusers' attention dispatcher

    @property
    def is_builtin_tiny(self) -> bool:
        """The random-init tiny model built in code (no folder to read; checks refuse a path with it)."""
        return self.tiny


@dataclass
class QuantConfig:
    base_model_precision: str = choice("no_change", *_PRECISIONS)
    text_encoder_1_precision: str = choice("no_change", *_PRECISIONS)
    text_encoder_2_precision: str = choice("no_change", *_PRECISIONS)
    quantize_via: str = choice("accelerator", "cpu", "accelerator")
    base_model_default_dtype: str = choice("bf16", "bf16", "fp32", "fp16")
    cache_dir: Optional[str] = None  # keep the quantised denoiser here; later runs skip quantisation

    def encoder_precisions(self) -> Dict[str, str]:
        """Text-encoder component name → its precision."""
        return {"text_encoder": self.text_encoder_1_precision, "text_encoder_2": self.text_encoder_2_precision}


@dataclass
class OptimizerConfig:
    name: str = choice("adamw", *OPTIMIZERS)
    lr: float = at_least(1e-4, 0.0, strict=True)
    weight_decay: float = at_least(1e-2, 0.0)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = at_least(1e-8, 0.0, strict=True)
    lr_scheduler: str = choice("constant_with_warmup", *LR_SCHEDULERS)
    warmup_steps: int = at_least(0, 0)
    lr_power: float = at_least(0.8, 0.0, strict=True)  # polynomial decay exponent
    extra: Dict[str, Any] = field(default_factory=dict)  # more constructor arguments (SimpleTuner's optimizer_config)


@dataclass
class TrainConfig:
    batch_size: int = at_least(1, 1)
    max_steps: int = at_least(1000, 1)
    gradient_accumulation_steps: int = at_least(1, 1)
    max_grad_norm: Optional[float] = at_least(1.0, 0.0, strict=True, hint="null turns clipping off")
    mixed_precision: str = choice("bf16", *MIXED_PRECISION)
    gradient_checkpointing: bool = True
    gradient_checkpointing_interval: Optional[int] = at_least(None, 1, hint="1 = every block; null = every block")
    compile: bool = False  # torch.compile each transformer block
    checkpoint_every_n_steps: int = at_least(500, 1)
    checkpoints_total_limit: Optional[int] = at_least(5, 1, hint="null keeps every checkpoint")
    adapter_every_n_steps: Optional[int] = at_least(None, 1)  # None = with every checkpoint
    resume: Optional[str] = "latest"  # null | latest | <path to .ckpt>
    flow_sigma_sampling: str = choice("logit_normal", *SIGMA_SAMPLING)
    flow_sigmoid_scale: float = at_least(1.0, 0.0, strict=True)
    flow_beta_alpha: float = at_least(2.0, 0.0, strict=True)
    flow_beta_beta: float = at_least(2.0, 0.0, strict=True)
    flow_schedule_shift: Optional[float] = at_least(None, 0.0, strict=True, hint="null = no shift")
    flow_schedule_auto_shift: bool = False
    log_every_n_steps: int = at_least(10, 1)
    # SDXL (DDPM) objectives
    snr_gamma: Optional[float] = at_least(None, 0.0, strict=True, hint="5.0 is typical; null = no min-SNR weighting")
    noise_offset: float = at_least(0.0, 0.0)  # offset-noise strength; 0 = off (SimpleTuner: 0.1 with --offset_noise)
    noise_offset_probability: float = between(0.25, 0.0, 1.0)
    diff2flow: bool = False  # flow-matching objective on the ε/v UNet (simpletuner_pl.losses)


@dataclass
class TreadRoute:
    """One TREAD route: `selection_ratio` of the image tokens skip blocks `start_layer_idx..end_layer_idx`."""

    selection_ratio: float = between(0.5, 0.0, 1.0, high_strict=True)  # fraction of image tokens set aside
    start_layer_idx: int = 2  # double then single blocks, numbered together; negative counts from the end
    end_layer_idx: int = -2  # inclusive


@dataclass
class TreadConfig:
    routes: List[TreadRoute] = field(default_factory=list)  # empty: no routing (tread=off)


def open_node():
    """A config node that takes any key without Hydra's `+` (`trainer.devices=2`); the keys are checked against
    `lightning.Trainer`'s signature at startup instead (`simpletuner_pl.config.trainer`)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({}, flags={"struct": False})


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Any `lightning.Trainer` argument (checked against its signature at startup); steps, accumulation and
    # clipping come from `train.*` so each setting has one home.
    trainer: Any = field(default_factory=open_node)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    tread: TreadConfig = field(default_factory=TreadConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)  # trainer.strategy, from the strategy= group
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # trackers besides metrics.csv
    hub: HubConfig = field(default_factory=HubConfig)
    output_dir: str = "outputs/${now:%Y-%m-%d_%H-%M-%S}"
    seed: int = 42
