"""SimpleTuner options about the run's shape: which model, how long, on how many devices, validation and evaluation.

`choose_model` reads `model_family`/`model_flavour` first (every other rule depends on the family); `finish` then
turns on validation and evaluation the way SimpleTuner decides it (a prompt to render, an eval dataset) and notes
SimpleTuner defaults that differ from ours for options the config leaves unset.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from simpletuner_pl.config.validation import parse_resolutions
from simpletuner_pl.errors import ConfigError, UserError
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.registry import FAMILIES
from simpletuner_pl.paths import group_option
from simpletuner_pl.tools.conversion import DEFAULT, NO_EQUIVALENT, NOT_SUPPORTED, VALUE_NOT_SUPPORTED, Conversion
from simpletuner_pl.tools.option_rules import Context, Rule

# SimpleTuner defaults that differ from ours, noted when the config leaves the option unset: option → (theirs, key)
DIFFERENT_DEFAULTS = {
    "learning_rate": ("4e-7 (tuned for full fine-tunes)", "optimizer.lr"),
    "optimizer": ("adamw_bf16", "optimizer"), "train_batch_size": ("4", "train.batch_size"),
    "max_grad_norm": ("2.0, clipping each element", "train.max_grad_norm"),
    "caption_dropout_probability": ("0.1", "data.datasets.<id>.caption_dropout_probability"),
}
FLOW_DEFAULTS = {"flow_schedule_shift": ("3.0", "train.flow_schedule_shift")}  # flow-matching families
VALIDATION_DEFAULTS = {"validation_num_inference_steps": ("30", "validation.num_inference_steps"),
                       "validation_guidance": ("7.5", "validation.guidance"),
                       "validation_resolution": ("256", "validation.resolutions")}


def choose_model(conv: Conversion, options: Dict[str, Any], label: str) -> FamilySpec:
    """`model=<group>` for model_family + model_flavour; an unsupported family is an error (nothing else maps)."""
    name = options.get("model_family")
    if name is None:
        raise UserError(f"{label}: model_family is not set; simpletuner_pl trains {' and '.join(FAMILIES)}")
    if name not in FAMILIES:
        raise UserError(f"{label}: model_family={name} is not supported; simpletuner_pl trains "
                        f"{' and '.join(FAMILIES)}")
    spec = FAMILIES[name]
    flavour = options.get("model_flavour") or spec.flavours[0]  # the first is SimpleTuner's default too
    if flavour not in spec.flavours:
        raise UserError(f"{label}: model_flavour={flavour} is not a {spec.title} flavour here; valid: "
                        f"{', '.join(spec.flavours)}")
    option = model_group(name, flavour)
    if not group_option("model", option).is_file():
        raise UserError(f"{label}: no model={option} config for model_flavour={flavour}")
    conv.group("model", option)
    path = options.get("pretrained_model_name_or_path")
    other = next((f for f in spec.flavours if f != flavour and path and str(path).lower() == str(
        flavour_repo(name, f) or "").lower()), None)
    if other:
        given = "" if options.get("model_flavour") else " (SimpleTuner's default)"
        conv.note(f"pretrained_model_name_or_path={path} is the {other} flavour's checkpoint but model_flavour is "
                  f"{flavour}{given}: kept as given; set model_flavour={other} (model={model_group(name, other)}) "
                  "to train it as that flavour")
    return spec


def model_group(family: str, flavour: str) -> str:
    """`model=<family>` for the default flavour, `model=<family>_<flavour>` for the others."""
    return family if flavour == FAMILIES[family].flavours[0] else f"{family}_{flavour}"


def flavour_repo(family: str, flavour: str) -> Optional[str]:
    """The checkpoint a flavour's model group loads (its `pretrained_model_name_or_path`)."""
    return model_group_value(model_group(family, flavour), "pretrained_model_name_or_path")


@lru_cache(maxsize=None)
def model_group_value(option: str, key: str) -> Any:
    """`model.<key>` as the group file `conf/model/<option>.yaml` itself sets it (None when it does not)."""
    path = group_option("model", option)
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    node = node.get("model", node)  # files with `# @package _global_` nest their keys under model:
    return node.get(key)


def validation_resolution(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    try:
        parse_resolutions(value)
    except ConfigError as error:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, str(error))
        return
    conv.set("validation.resolutions", str(value).replace(" ", ""), ctx.src(key))


def validation_preview(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if not ctx.on("validation_preview"):
        conv.leave(ctx.src(key), value, DEFAULT)
    else:
        conv.leave(ctx.src(key), value, NO_EQUIVALENT, "SimpleTuner streams previews only to a webhook_config; "
                   "set validation.preview=true validation.webhook_url=http://...")


def disable_benchmark(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if ctx.on(key):
        conv.set("validation.on_startup", False, ctx.src(key))
    else:
        conv.leave(ctx.src(key), value, DEFAULT)


def max_train_steps(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if str(value).strip() in ("0", "0.0"):
        conv.leave(ctx.src(key), value, DEFAULT, "0 = train for num_train_epochs")
    else:
        conv.set("train.max_steps", value, ctx.src(key))


def num_train_epochs(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    steps = str(ctx.options.get("max_train_steps", "0")).strip()
    if steps not in ("0", "0.0"):
        conv.leave(ctx.src(key), value, NO_EQUIVALENT, "max_train_steps is set, which SimpleTuner trains to")
    elif str(value).strip() in ("0", "0.0"):
        conv.leave(ctx.src(key), value, DEFAULT)
    elif conv.set("trainer.max_epochs", int(float(value)), ctx.src(key)):
        conv.note("num_train_epochs became trainer.max_epochs; train.max_steps (1000 unless set) still ends the "
                  "run if it comes first: raise it for long runs")


def resume_from_checkpoint(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value == "latest":
        conv.leave(ctx.src(key), value, DEFAULT)
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "SimpleTuner checkpoint folders cannot be resumed here; "
                   "train.resume=latest resumes this package's own checkpoints")


def zero_is_off(target: str) -> Rule:
    """An option where 0 (or false) means off, which is our default."""
    def rule(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
        if str(value).strip().lower() in ("0", "0.0", "false", "none"):
            conv.leave(ctx.src(key), value, DEFAULT)
        else:
            conv.set(target, value, ctx.src(key))
    return rule


def offset_noise(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    """noise_offset (SimpleTuner's default 0.1) and its probability apply only with offset_noise=true; a family
    that reads no noise offset drops them (`simpletuner_pl.tools.convert.foreign_options`)."""
    if key == "offset_noise":
        if ctx.on(key):
            conv.set("train.noise_offset", ctx.options.get("noise_offset", 0.1), ctx.src(key))
        else:
            conv.leave(ctx.src(key), value, DEFAULT)
    elif not ctx.on("offset_noise"):
        conv.leave(ctx.src(key), value, NO_EQUIVALENT, "read only with offset_noise=true")
    elif key == "noise_offset_probability":
        conv.set("train.noise_offset_probability", value, ctx.src(key))


def fixed(expected: Any, reason: str = NOT_SUPPORTED, detail: str = "") -> Rule:
    """An option of which only SimpleTuner's default value (`expected`) is what happens here."""
    def rule(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
        same = str(value).strip().lower() == str(expected).lower()
        conv.leave(ctx.src(key), value, DEFAULT if same else reason, "" if same else detail)
    return rule


def choose_group(group: str, option: str) -> Rule:
    def rule(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
        if not ctx.on(key):
            conv.leave(ctx.src(key), value, DEFAULT)
        elif group_option(group, option).is_file():
            conv.group(group, option)
        else:
            conv.leave(ctx.src(key), value, NOT_SUPPORTED)
    return rule


def report_to(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value in ("none", None):
        conv.leave(ctx.src(key), value, DEFAULT)
    else:
        conv.set("logger.report_to", value, ctx.src(key))


RUN_RULES: Dict[str, Rule] = {
    "validation_resolution": validation_resolution, "validation_preview": validation_preview,
    "validation_preview_steps": lambda conv, ctx, key, value: conv.leave(
        ctx.src(key), value, DEFAULT if not ctx.on("validation_preview") else NO_EQUIVALENT,
        "goes with validation_preview" if ctx.on("validation_preview") else ""),
    "disable_benchmark": disable_benchmark, "max_train_steps": max_train_steps, "num_train_epochs": num_train_epochs,
    "resume_from_checkpoint": resume_from_checkpoint, "report_to": report_to,
    "validation_on_startup": lambda conv, ctx, key, value: conv.leave(
        ctx.src(key), value, DEFAULT, "step-0 images of the base model are on unless disable_benchmark"),
    "num_processes": lambda conv, ctx, key, value: (conv.set("trainer.devices", int(float(value)), ctx.src(key))
                                                    if int(float(value)) > 1 else conv.leave(ctx.src(key), value,
                                                                                             DEFAULT)),
    "dynamo_backend": lambda conv, ctx, key, value: (conv.set("train.compile", True, ctx.src(key))
                                                     if value not in ("no", "none", None)
                                                     else conv.leave(ctx.src(key), value, DEFAULT)),
    "prediction_type": lambda conv, ctx, key, value: conv.set("model.prediction_type", value, ctx.src(key)),
    "snr_gamma": zero_is_off("train.snr_gamma"), "diff2flow_loss": zero_is_off("train.diff2flow"),
    "offset_noise": offset_noise, "noise_offset": offset_noise, "noise_offset_probability": offset_noise,
    "tokenizer_max_length": lambda conv, ctx, key, value: conv.leave(
        ctx.src(key), value, DEFAULT, "SimpleTuner fixes it (T5: 512, schnell 256; CLIP: 77)"),
    "loss_type": fixed("l2", NOT_SUPPORTED, "the loss is MSE here"),
    "num_validation_images": fixed(1, NOT_SUPPORTED, "one image per prompt and resolution"),
    "aspect_bucket_alignment": fixed(64, VALUE_NOT_SUPPORTED, "buckets are 64-px aligned (SimpleTuner forces 64 "
                                     "for Flux and SDXL)"),
    "data_backend_sampling": fixed("auto-weighting", VALUE_NOT_SUPPORTED, "datasets are weighted by length"),
    "validation_disable_unconditional": fixed(True, NOT_SUPPORTED, "no unconditional image is rendered here"),
    "diff2flow_enabled": fixed(False, DEFAULT, "the bridge alone changes nothing; diff2flow_loss trains on it"),
    "fsdp_enable": choose_group("strategy", "fsdp"),
    "deepspeed_config": lambda conv, ctx, key, value: conv.leave(
        ctx.src(key), value, NOT_SUPPORTED, "pick strategy=deepspeed_zero2|deepspeed_zero3 (_offload)"),
}
