"""Typed run configuration: Hydra structured configs plus checks of values and option combinations.

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/train.yaml`, so an unknown key or a
wrongly typed value fails while Hydra composes. Closed sets of values (`adapter.target`, `train.mixed_precision`, ...)
are declared with `choice(...)` and checked by `validate()`, which names the valid choices, before anything heavy
is imported or loaded.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from simpletuner_pl.data.config import DataConfig
from simpletuner_pl.errors import ConfigError


def choice(default: Any, *choices: Any) -> Any:
    """A dataclass field whose value must be one of `choices` (checked by `validate`)."""
    return field(default=default, metadata={"choices": tuple(choices)})


FLUX_FLAVOURS = ("krea", "dev", "schnell", "tiny")
FLUX_LORA_TARGETS = ("mmdit", "all", "all+ffs", "context", "context+ffs", "tiny", "nano")


@dataclass
class ModelConfig:
    family: str = choice("flux", "flux")
    flavour: str = choice("krea", *FLUX_FLAVOURS)
    pretrained_model_name_or_path: Optional[str] = "black-forest-labs/FLUX.1-Krea-dev"
    pretrained_transformer_model_name_or_path: Optional[str] = None
    pretrained_transformer_subfolder: Optional[str] = "transformer"
    pretrained_vae_model_name_or_path: Optional[str] = None
    pretrained_vae_subfolder: Optional[str] = "vae"
    revision: Optional[str] = None
    guidance_value: float = 1.0
    t5_max_length: int = 512


@dataclass
class QuantConfig:
    base_model_precision: str = choice("no_change", "no_change")
    text_encoder_1_precision: str = choice("no_change", "no_change")
    text_encoder_2_precision: str = choice("no_change", "no_change")
    quantize_via: str = choice("accelerator", "cpu", "accelerator")
    base_model_default_dtype: str = choice("bf16", "bf16", "fp32", "fp16")


@dataclass
class AdapterConfig:
    type: str = choice("lora", "lora")
    rank: int = 16
    alpha: Optional[float] = None  # None = rank, as in SimpleTuner
    dropout: float = 0.1
    target: str = choice("all", *FLUX_LORA_TARGETS)
    init: str = choice("default", "default", "gaussian", "olora", "pissa", "loftq")
    use_dora: bool = False
    init_lora: Optional[str] = None


@dataclass
class OptimizerConfig:
    name: str = choice("adamw", "adamw")
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    lr_scheduler: str = choice(
        "constant_with_warmup", "constant", "constant_with_warmup", "cosine", "linear", "polynomial"
    )
    warmup_steps: int = 0
    lr_power: float = 0.8  # polynomial decay exponent


@dataclass
class TrainConfig:
    batch_size: int = 1
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: str = choice("bf16", "bf16", "fp16", "no")
    gradient_checkpointing: bool = True
    checkpoint_every_n_steps: int = 500
    checkpoints_total_limit: Optional[int] = 5
    adapter_every_n_steps: Optional[int] = None  # None = with every checkpoint
    resume: Optional[str] = "latest"  # null | latest | <path to .ckpt>
    flow_sigma_sampling: str = choice("logit_normal", "logit_normal", "uniform", "beta", "fast")
    flow_sigmoid_scale: float = 1.0
    flow_beta_alpha: float = 2.0
    flow_beta_beta: float = 2.0
    flow_schedule_shift: Optional[float] = None  # None = no shift (SimpleTuner's code default is 3.0)
    flow_schedule_auto_shift: bool = False
    log_every_n_steps: int = 10


@dataclass
class ValidationConfig:
    enabled: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    trainer: Dict[str, Any] = field(default_factory=dict)  # passed through to lightning.Trainer
    output_dir: str = "outputs/${now:%Y-%m-%d_%H-%M-%S}"
    seed: int = 42


def register_configs() -> None:
    """Make `RunConfig` the schema of `conf/train.yaml` (called before Hydra composes)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def _check_choices(node: Any, schema: Any, path: str) -> None:
    for f in fields(schema):
        value = getattr(node, f.name)
        key = f"{path}.{f.name}" if path else f.name
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}={value!r} is not a valid choice; valid choices: {', '.join(map(str, choices))}")
        default_type = f.default_factory() if f.default_factory is not MISSING else None
        if is_dataclass(default_type) and value is not None:
            _check_choices(value, type(default_type), key)


def validate(cfg: Any) -> None:
    """Reject invalid values and option combinations with an actionable message, before any heavy work."""
    _check_choices(cfg, RunConfig, "")
    cfg.data.validate(batch_size=cfg.train.batch_size)
    if cfg.train.batch_size < 1:
        raise ConfigError("train.batch_size must be >= 1")
    if cfg.train.max_steps < 1:
        raise ConfigError("train.max_steps must be >= 1")
    if cfg.train.gradient_accumulation_steps < 1:
        raise ConfigError("train.gradient_accumulation_steps must be >= 1")
    if cfg.adapter.rank < 1:
        raise ConfigError("adapter.rank must be >= 1")
    if not 0.0 <= cfg.adapter.dropout < 1.0:
        raise ConfigError("adapter.dropout must be in [0, 1)")
    if cfg.quant.base_model_default_dtype == "fp16":
        raise ConfigError(
            "quant.base_model_default_dtype=fp16 is not supported: Flux overflows in fp16. Use bf16 (default) or fp32."
        )
    if cfg.train.flow_schedule_auto_shift and cfg.train.flow_schedule_shift is not None:
        raise ConfigError(
            "train.flow_schedule_auto_shift=true computes the shift from the resolution; "
            "unset train.flow_schedule_shift (null) or turn auto-shift off."
        )
    if cfg.train.flow_schedule_shift is not None and cfg.train.flow_schedule_shift <= 0:
        raise ConfigError("train.flow_schedule_shift must be > 0 (or null for no shift)")
    if cfg.model.flavour == "schnell" and cfg.train.flow_sigma_sampling != "fast":
        raise ConfigError(
            "model.flavour=schnell is timestep-distilled and needs train.flow_sigma_sampling=fast "
            "(model=flux_schnell sets it); pass train.flow_sigma_sampling=fast."
        )
    if cfg.adapter.init == "loftq":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("adapter.init=loftq needs a CUDA GPU (PEFT's LoftQ quantises with bitsandbytes on CUDA); "
                              "use adapter.init=default|gaussian|pissa|olora on this machine")
    if cfg.validation.enabled:
        raise ConfigError("validation.enabled=true: validation image callbacks are not available in this version; "
                          "use validation=off.")
    resume = cfg.train.resume
    if resume not in (None, "latest") and not str(resume).endswith(".ckpt"):
        raise ConfigError(f"train.resume={resume!r}: use null, 'latest' or the path of a .ckpt file")
