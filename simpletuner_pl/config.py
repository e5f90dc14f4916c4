"""Typed run configuration: Hydra structured configs plus checks of values and option combinations.

The dataclasses are registered in Hydra's ConfigStore as the schema of `conf/train.yaml`, so an unknown key or a
wrongly typed value fails while Hydra composes. Closed sets of values (`adapter.target`, `train.mixed_precision`, ...)
are declared with `choice(...)` and checked by `validate()`, which names the valid choices, before anything heavy
is imported or loaded.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from simpletuner_pl.callbacks.config import EvalConfig, ValidationConfig, check_validation_config
from simpletuner_pl.data.config import DataConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.memory.config import OffloadConfig, check_combinations


def choice(default: Any, *choices: Any) -> Any:
    """A dataclass field whose value must be one of `choices` (checked by `validate`)."""
    return field(default=default, metadata={"choices": tuple(choices)})


FLUX_FLAVOURS = ("krea", "dev", "schnell", "tiny")
FLUX_LORA_TARGETS = ("mmdit", "all", "all+ffs", "context", "context+ffs", "tiny", "nano")
SDXL_FLAVOURS = ("base-1.0", "tiny")
FLAVOURS = {"flux": FLUX_FLAVOURS, "sdxl": SDXL_FLAVOURS}
PRECISIONS = ("no_change", "int8-quanto", "int4-quanto", "int2-quanto", "fp8-quanto", "nf4-bnb", "nf4-torchao")
OPTIMIZERS = ("adamw", "adamw_bf16", "optimi_lion", "optimi_stableadamw", "bnb_adamw8bit", "bnb_lion8bit_paged",
              "prodigy")
ATTENTION_BACKENDS = ("sdpa", "flash", "flash_varlen", "flex", "xformers", "sage", "native_flash", "native_efficient",
                      "native_cudnn", "native_math")


@dataclass
class ModelConfig:
    family: str = choice("flux", "flux", "sdxl")
    flavour: str = choice("krea", *FLUX_FLAVOURS, "base-1.0")  # per family: FLAVOURS
    pretrained_model_name_or_path: Optional[str] = "black-forest-labs/FLUX.1-Krea-dev"
    pretrained_transformer_model_name_or_path: Optional[str] = None
    pretrained_transformer_subfolder: Optional[str] = "transformer"
    pretrained_vae_model_name_or_path: Optional[str] = None
    pretrained_vae_subfolder: Optional[str] = "vae"
    pretrained_unet_model_name_or_path: Optional[str] = None  # SDXL: UNet from another repo or folder
    pretrained_unet_subfolder: Optional[str] = "unet"
    prediction_type: Optional[str] = choice(None, None, "epsilon", "v_prediction")  # SDXL; null = scheduler config
    revision: Optional[str] = None
    guidance_value: float = 1.0
    t5_max_length: int = 512
    attention_backend: str = choice("sdpa", *ATTENTION_BACKENDS)  # diffusers' attention dispatcher


@dataclass
class QuantConfig:
    base_model_precision: str = choice("no_change", *PRECISIONS)
    text_encoder_1_precision: str = choice("no_change", *PRECISIONS)
    text_encoder_2_precision: str = choice("no_change", *PRECISIONS)
    quantize_via: str = choice("accelerator", "cpu", "accelerator")
    base_model_default_dtype: str = choice("bf16", "bf16", "fp32", "fp16")
    cache_dir: Optional[str] = None  # keep the quantised transformer here; later runs skip quantisation


@dataclass
class AdapterConfig:
    type: str = choice("lora", "lora", "full")
    rank: int = 16
    alpha: Optional[float] = None  # None = rank, as in SimpleTuner
    dropout: float = 0.1
    target: Optional[str] = None  # null = family default; Flux: a preset, SDXL: comma-separated module names
    init: str = choice("default", "default", "gaussian", "olora", "pissa", "loftq")
    use_dora: bool = False
    init_lora: Optional[str] = None
    export_format: str = choice("diffusers", "diffusers", "kohya")  # kohya: also write lora_unet_* with .alpha


@dataclass
class OptimizerConfig:
    name: str = choice("adamw", *OPTIMIZERS)
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    lr_scheduler: str = choice(
        "constant_with_warmup", "constant", "constant_with_warmup", "cosine", "linear", "polynomial"
    )
    warmup_steps: int = 0
    lr_power: float = 0.8  # polynomial decay exponent
    extra: Dict[str, Any] = field(default_factory=dict)  # more constructor arguments (SimpleTuner's optimizer_config)


@dataclass
class TrainConfig:
    batch_size: int = 1
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: str = choice("bf16", "bf16", "fp16", "no")
    gradient_checkpointing: bool = True
    gradient_checkpointing_interval: Optional[int] = None  # checkpoint every n-th block; null = every block
    compile: bool = False  # torch.compile each transformer block
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
    # SDXL (DDPM) objectives
    snr_gamma: Optional[float] = None  # min-SNR-γ loss weighting (5.0 is typical); null = off
    noise_offset: float = 0.0  # offset-noise strength; 0 = off (SimpleTuner: 0.1 with --offset_noise)
    noise_offset_probability: float = 0.25
    diff2flow: bool = False  # flow-matching objective on the ε/v UNet (simpletuner_pl.losses)


@dataclass
class TrainerConfig:
    """`lightning.Trainer` arguments users set per run; null = Lightning's default. Steps, accumulation, clipping
    and precision come from `train.*` so each setting has one home."""

    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Optional[str] = None  # null = from train.mixed_precision
    deterministic: Optional[bool] = None
    benchmark: Optional[bool] = None
    max_time: Optional[str] = None  # "DD:HH:MM:SS"
    profiler: Optional[str] = None  # simple | advanced | pytorch
    detect_anomaly: bool = False
    limit_train_batches: Optional[float] = None
    use_distributed_sampler: Optional[bool] = None
    sync_batchnorm: bool = False


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
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
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


def _check_family(cfg: Any) -> None:
    """Options whose meaning depends on the model family (flavours, LoRA targets, DDPM-only objectives)."""
    model, adapter, train = cfg.model, cfg.adapter, cfg.train
    if model.flavour not in FLAVOURS[model.family]:
        raise ConfigError(f"model.flavour={model.flavour!r} is not a {model.family} flavour; valid choices: "
                          f"{', '.join(FLAVOURS[model.family])} (or pick another model=<group>)")
    if model.family == "flux":
        if adapter.target is not None and adapter.target not in FLUX_LORA_TARGETS:
            raise ConfigError(f"adapter.target={adapter.target!r} is not a valid choice; valid choices: "
                              f"{', '.join(FLUX_LORA_TARGETS)}")
        sdxl_only = {"model.prediction_type": model.prediction_type is not None,
                     "model.pretrained_unet_model_name_or_path": model.pretrained_unet_model_name_or_path is not None,
                     "train.snr_gamma": train.snr_gamma is not None, "train.noise_offset": train.noise_offset != 0,
                     "train.diff2flow": train.diff2flow, "adapter.export_format=kohya": adapter.export_format == "kohya"}
        used = [key for key, is_set in sdxl_only.items() if is_set]
        if used:
            raise ConfigError(f"{', '.join(used)}: SDXL-only (DDPM UNet) option(s); Flux is a flow-matching "
                              "transformer whose LoRA loads in ComfyUI as saved. Remove them or use model=sdxl.")
        return
    if adapter.target in FLUX_LORA_TARGETS:
        raise ConfigError(f"adapter.target={adapter.target} is a Flux preset; for SDXL use null (the default: "
                          "to_k,to_q,to_v,to_out.0) or a comma-separated list of UNet module names")
    if model.pretrained_transformer_model_name_or_path:
        raise ConfigError("model.pretrained_transformer_model_name_or_path is for Flux; SDXL's denoiser is a UNet: "
                          "set model.pretrained_unet_model_name_or_path (and model.pretrained_unet_subfolder)")
    if train.snr_gamma is not None and train.snr_gamma <= 0:
        raise ConfigError("train.snr_gamma must be > 0 (5.0 is typical) or null for no min-SNR weighting")
    if train.diff2flow and train.snr_gamma is not None:
        raise ConfigError("train.diff2flow=true trains on flow velocity, which min-SNR weights do not apply to; "
                          "set train.snr_gamma=null or train.diff2flow=false")
    if adapter.export_format == "kohya" and adapter.use_dora:
        raise ConfigError("adapter.export_format=kohya cannot carry DoRA magnitudes (diffusers drops Kohya "
                          "dora_scale tensors); use adapter.export_format=diffusers or adapter.use_dora=false")
    if train.noise_offset < 0 or not 0 <= train.noise_offset_probability <= 1:
        raise ConfigError("train.noise_offset must be >= 0 and train.noise_offset_probability in [0, 1]")


def _check_adapter_type(cfg: Any) -> None:
    adapter = cfg.adapter
    if adapter.type != "full":
        return
    if cfg.quant.base_model_precision != "no_change":
        raise ConfigError(f"adapter=full trains every weight of the denoiser, which cannot be quantised "
                          f"(quant.base_model_precision={cfg.quant.base_model_precision}); use quant=none, "
                          "or adapter=lora to train on a quantised base")
    if adapter.export_format != "diffusers":
        raise ConfigError("adapter.export_format=kohya exports LoRA weights; adapter=full saves the whole denoiser "
                          "as a diffusers folder (adapter/<unet|transformer>/). Remove adapter.export_format.")


def validate(cfg: Any) -> None:
    """Reject invalid values and option combinations with an actionable message, before any heavy work."""
    _check_choices(cfg, RunConfig, "")
    _check_family(cfg)
    check_combinations(cfg)  # quantisation x adapter x offload x optimizer (simpletuner_pl.memory.config)
    _check_adapter_type(cfg)
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
    check_validation_config(cfg)
    resume = cfg.train.resume
    if resume not in (None, "latest") and not str(resume).endswith(".ckpt"):
        raise ConfigError(f"train.resume={resume!r}: use null, 'latest' or the path of a .ckpt file")
