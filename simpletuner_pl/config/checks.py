"""Checks of values and option combinations that need nothing but the config (no files, no torch).

Each raises a `ConfigError` that names the keys and the fix, before anything heavy is imported. Family-specific
rules (flavours, LoRA targets, options only one family has) belong to the family (`FamilySpec.check`); checks that
read files belong to `simpletuner_pl.preflight`.
"""

from __future__ import annotations

from simpletuner_pl.config.adapter import check_adapter_keys
from simpletuner_pl.config.data import DataConfig, DatasetConfig
from simpletuner_pl.config.fields import check_fields
from simpletuner_pl.config.pairing import check_conditioning
from simpletuner_pl.config.registries import ATTENTION_BACKENDS, OPTIMIZERS, PRECISIONS, REWRITES_BASE
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.config.strategy import check_strategy
from simpletuner_pl.config.validation import RESOLUTION_MULTIPLE, parse_resolutions
from simpletuner_pl.errors import ConfigError

MAX_MEGAPIXELS = 16.0  # an `area` value above this is surely pixels; a pixel value at or below it surely megapixels


def validate(cfg: RunConfig) -> None:
    """Every family-independent value and combination check."""
    check_fields(cfg)
    check_adapter(cfg)
    check_quantisation(cfg)
    check_memory(cfg)
    check_optimizer(cfg)
    check_schedule(cfg)
    check_data(cfg.data)
    check_validation(cfg)
    check_strategy(cfg)
    resume = cfg.train.resume
    if resume not in (None, "latest") and not str(resume).endswith(".ckpt") and not str(resume).isdigit():
        raise ConfigError(f"train.resume={resume!r}: use null, 'latest', a step number (checkpoints/step=N.ckpt) or "
                          "the path of a .ckpt file (quoted when it has an '=': 'train.resume=\"/run/step=500.ckpt\"')")


def check_adapter(cfg: RunConfig) -> None:
    adapter = cfg.adapter
    check_adapter_keys(adapter)
    if adapter.use_dora and adapter.init in REWRITES_BASE:
        raise ConfigError(f"adapter.use_dora=true cannot be combined with adapter.init={adapter.init}")
    if adapter.use_dora and adapter.export_format in ("kohya", "comfyui"):
        raise ConfigError(f"adapter.export_format={adapter.export_format} cannot carry a DoRA adapter that diffusers "
                          "also reads (it drops dora_scale tensors); use adapter.export_format=universal, which "
                          "writes the diffusers file and pytorch_lora_weights_comfyui.safetensors for ComfyUI")
    if adapter.type != "full":
        return
    regularisation = [name for name, ds in cfg.data.training().items() if ds.is_regularisation_data]
    if regularisation:
        raise ConfigError(f"is_regularisation_data ({', '.join(regularisation)}) trains towards the base model's own "
                          "prediction, which adapter=full overwrites as it trains; use an adapter (adapter=lora) or "
                          "drop the flag to train on those images as ordinary data")
    if cfg.quant.base_model_precision != "no_change":
        raise ConfigError(f"adapter=full trains every weight of the denoiser, which cannot be quantised "
                          f"(quant.base_model_precision={cfg.quant.base_model_precision}); use quant=none, "
                          "or adapter=lora to train on a quantised base")
    if adapter.export_format != "universal":
        raise ConfigError(f"adapter.export_format={adapter.export_format} exports LoRA weights; adapter=full saves "
                          "the whole denoiser as a diffusers folder (adapter/<unet|transformer>/). Remove "
                          "adapter.export_format.")


def check_quantisation(cfg: RunConfig) -> None:
    quant, adapter = cfg.quant, cfg.adapter
    precision = PRECISIONS[quant.base_model_precision]
    if quant.base_model_default_dtype == "fp16":
        raise ConfigError("quant.base_model_default_dtype=fp16 is not supported: Flux overflows in fp16. "
                          "Use bf16 (default) or fp32.")
    if adapter.init == "loftq" and quant.base_model_precision != "no_change":
        raise ConfigError(f"adapter.init=loftq computes its initialisation from the full-precision weights and "
                          f"quantises them itself; it cannot start from a {quant.base_model_precision} base. Use "
                          "quant=none with LoftQ, or keep the quantised base with adapter.init=default.")
    # DoRA on quanto layers works with PEFT >= 0.21 (its weight norm goes through quanto's dequantising ops), so
    # unlike SimpleTuner it is allowed. torchao NF4 is not: PEFT calls `weight.dequantize()`, which NF4Tensor lacks.
    if adapter.use_dora and not precision.dora:
        raise ConfigError("adapter.use_dora=true cannot read torchao NF4 weights (PEFT cannot dequantise them); "
                          "use quant=nf4 (bitsandbytes) or quant=int8, or set adapter.use_dora=false.")
    if cfg.train.compile and not precision.compiles:
        raise ConfigError("train.compile=true: bitsandbytes NF4 layers do not compile (graph breaks on every "
                          "layer, no speed-up). Use quant=nf4_torchao, which compiles, or train.compile=false.")


def check_memory(cfg: RunConfig) -> None:
    offload, train = cfg.offload, cfg.train
    if offload.grouped and offload.model_cpu_offload:
        raise ConfigError("offload.group_offload_type and offload.model_cpu_offload exclude each other: both "
                          "install hooks that move weights between devices and they would fight over placement. "
                          "Pick one (group offload saves more memory for the transformer).")
    if offload.use_stream and not offload.grouped:
        raise ConfigError("offload.use_stream=true only applies to group offloading: set "
                          "offload.group_offload_type=block_level (or leaf_level)")
    if train.gradient_checkpointing_interval is not None and not train.gradient_checkpointing:
        raise ConfigError("train.gradient_checkpointing_interval needs train.gradient_checkpointing=true")
    if not ATTENTION_BACKENDS[cfg.model.attention_backend].trains:
        raise ConfigError(f"model.attention_backend={cfg.model.attention_backend}: SageAttention has no backward "
                          "pass, so it cannot train. Use sdpa (default), flash, xformers or flex.")


def check_optimizer(cfg: RunConfig) -> None:
    opt = cfg.optimizer
    traits = OPTIMIZERS[opt.name]
    if len(opt.betas) != 2 or not all(0 <= b < 1 for b in opt.betas):
        raise ConfigError(f"optimizer.betas={list(opt.betas)}: give two values in [0, 1), e.g. [0.9, 0.999]")
    if traits.bf16_weights and cfg.quant.base_model_default_dtype == "fp32":
        raise ConfigError(f"optimizer={opt.name} trains bf16 weights; with quant.base_model_default_dtype=fp32 use "
                          "optimizer=adamw (fp32 weights and states) or set quant.base_model_default_dtype=bf16")
    if traits.bf16_weights and cfg.adapter.type == "full":
        raise ConfigError(f"optimizer={opt.name} keeps the trained weights in bf16; adapter=full keeps fp32 master "
                          "weights, use optimizer=adamw (or optimi_stableadamw)")
    if traits.schedule_free and (opt.lr_scheduler != "constant" or opt.warmup_steps):
        raise ConfigError(f"optimizer={opt.name} is schedule-free and sets its own step size: use "
                          "optimizer.lr_scheduler=constant and optimizer.warmup_steps=0 (optimizer=prodigy sets both)")


def check_tiny(cfg: RunConfig) -> None:
    model = cfg.model
    if model.pretrained_model_name_or_path:
        raise ConfigError(f"model.tiny=true builds a random-init model in code and reads no folder; set "
                          f"model.pretrained_model_name_or_path=null, or model.tiny=false to load "
                          f"{model.pretrained_model_name_or_path}")
    overrides = [f"model.{key}" for key in ("pretrained_transformer_model_name_or_path",
                                            "pretrained_vae_model_name_or_path", "pretrained_unet_model_name_or_path")
                 if getattr(model, key)]
    if overrides:
        raise ConfigError(f"model.tiny=true builds every component in code, so {', '.join(overrides)} would do "
                          "nothing; set them to null")


def check_schedule(cfg: RunConfig) -> None:
    train, model = cfg.train, cfg.model
    if model.tiny:
        check_tiny(cfg)
    if model.guidance_mode == "random-range" and model.guidance_min > model.guidance_max:
        raise ConfigError(f"model.guidance_min={model.guidance_min:g} is above model.guidance_max="
                          f"{model.guidance_max:g}")
    if train.flow_schedule_auto_shift and train.flow_schedule_shift is not None:
        raise ConfigError("train.flow_schedule_auto_shift=true computes the shift from the resolution; "
                          "unset train.flow_schedule_shift (null) or turn auto-shift off.")


# ---- data ------------------------------------------------------------------------------------------------------
def check_data(data: DataConfig) -> None:
    if not data.training():
        raise ConfigError("no enabled training dataset (dataset_type=image): pick one with data=demo|local and, for "
                          "data=local, data.datasets.main.instance_data_dir=/path/to/images")
    if not any(ds.probability > 0 for ds in data.training().values()):
        raise ConfigError("every enabled dataset has probability 0: give at least one "
                          "data.datasets.<id>.probability > 0")
    for name, ds in data.enabled().items():
        check_dataset(f"data.datasets.{name}", ds)
    check_conditioning(data)


def check_dataset(key: str, ds: DatasetConfig) -> None:
    if not ds.instance_data_dir:
        raise ConfigError(f"{key}.instance_data_dir is not set: point it at a folder of images")
    if ds.caption_strategy == "instanceprompt" and not ds.instance_prompt:
        raise ConfigError(f"{key}.caption_strategy=instanceprompt needs {key}.instance_prompt")
    if ds.caption_strategy == "parquet" and not ds.parquet.path:
        raise ConfigError(f"{key}.caption_strategy=parquet needs {key}.parquet.path (a .parquet file with a "
                          f"{ds.parquet.filename_column!r} and a {ds.parquet.caption_column!r} column)")
    if ds.crop and ds.crop_aspect in ("closest", "random") and not ds.crop_aspect_buckets:
        raise ConfigError(f"{key}.crop_aspect={ds.crop_aspect} needs {key}.crop_aspect_buckets, e.g. [0.75, 1.0, 1.33]")
    if ds.vae_cache_disable and ds.vae_cache_ondemand:
        raise ConfigError(f"{key}: vae_cache_disable and vae_cache_ondemand exclude each other; set one")
    check_units(key, ds)


def check_units(key: str, ds: DatasetConfig) -> None:
    """Sizes are in the dataset's unit: megapixels for `area`, pixels otherwise. A value in the other unit is the
    classic cause of "no images detected", so it is rejected here with the fix."""
    sizes = {"resolution": ds.resolution, "minimum_image_size": ds.minimum_image_size,
             "maximum_image_size": ds.maximum_image_size, "target_downsample_size": ds.target_downsample_size}
    for field_name, value in sizes.items():
        if value is None:
            continue
        if ds.resolution_type == "area" and value > MAX_MEGAPIXELS:
            raise ConfigError(
                f"{key}.{field_name}={value:g} with resolution_type=area means {value:g} megapixels; for pixel sizes "
                f"set {key}.resolution_type=pixel_area (edge of a square of equal area) or pixel (shorter side), "
                f"or give megapixels (1024x1024 = {1024 * 1024 / 1e6:g})")
        if ds.resolution_type != "area" and value <= MAX_MEGAPIXELS:
            raise ConfigError(
                f"{key}.{field_name}={value:g} with resolution_type={ds.resolution_type} means {value:g} pixels; "
                f"for megapixels set {key}.resolution_type=area, or give pixels (e.g. 1024)")
    if ds.resolution_type != "area" and ds.resolution < 64:
        raise ConfigError(f"{key}.resolution={ds.resolution:g}: the smallest bucket side is 64 px")


# ---- validation and evaluation ---------------------------------------------------------------------------------
def check_validation(cfg: RunConfig) -> None:
    """Combinations that would otherwise fail (or silently do nothing) hours into a run: previews without a
    webhook, CLIP scores without images, an eval loss without held-out images."""
    v, clip, loss = cfg.validation, cfg.eval.clip_score, cfg.eval.eval_loss
    if v.enabled:
        parse_resolutions(v.resolutions)
        if not v.prompt and not v.prompt_library:
            raise ConfigError("validation.enabled=true needs validation.prompt=\"...\" and/or "
                              "validation.prompt_library")
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
        if loss.resolution is not None and loss.resolution % RESOLUTION_MULTIPLE:
            raise ConfigError(f"eval.eval_loss.resolution={loss.resolution} must be a positive multiple of "
                              f"{RESOLUTION_MULTIPLE}")
        if not loss.instance_data_dir and not cfg.data.held_out():
            raise ConfigError("eval.eval_loss.enabled=true needs held-out images: set "
                              "eval.eval_loss.instance_data_dir=/path/to/held_out (never trained on), or add a "
                              "dataset with dataset_type=eval to the data config")
