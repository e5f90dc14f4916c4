"""SimpleTuner options that need a rule: a config-group choice, a value translation or a companion option.

Each rule takes `(conversion, context, key, value)` and either carries the value over (`conversion.set`/`.group`)
or leaves it with the reason. The adapter's rules are in `simpletuner_pl.tools.adapter_rules`, those for the run's
shape (validation, evaluation, its length and devices) in `simpletuner_pl.tools.run_rules`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from simpletuner_pl.config.registries import ATTENTION_BACKENDS, LR_SCHEDULERS, PRECISIONS
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.tools.conversion import DEFAULT, NO_EQUIVALENT, VALUE_NOT_SUPPORTED, Conversion

OPTIMIZERS = {"adamw_bf16": "adamw_bf16", "adamw": "adamw", "torch-adamw": "adamw", "optimi-lion": "optimi_lion",
              "optimi-stableadamw": "optimi_stableadamw", "bnb-adamw8bit": "bnb_adamw8bit",
              "bnb-lion8bit-paged": "bnb_lion8bit_paged", "prodigy": "prodigy"}
ATTENTION = {"diffusers": "sdpa", "xformers": "xformers", "flash-attn": "flash", "flash-attn-2": "flash",
             "flash-attn-varlen": "flash_varlen", "flex": "flex", "cudnn": "native_cudnn",
             "native-efficient": "native_efficient", "native-flash": "native_flash", "native-cudnn": "native_cudnn",
             "native-math": "native_math"}


@dataclass
class Context:
    options: Dict[str, Any]
    family: FamilySpec
    label: str  # the config file's name, for the report
    folder: Path  # relative paths in the config (lycoris_config) are looked up here, then in the working dir
    betas: Dict[int, float] = field(default_factory=dict)

    def src(self, key: str) -> str:
        return f"{self.label}: {key}"

    def on(self, key: str) -> bool:
        return str(self.options.get(key, False)).strip().lower() in ("true", "1", "yes")

    def quantised(self) -> bool:
        return self.options.get("base_model_precision", "no_change") != "no_change"


Rule = Callable[[Conversion, Context, str, Any], None]


def base_model_precision(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value not in PRECISIONS:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"one of {', '.join(PRECISIONS)}")
    elif value == "no_change":
        conv.leave(ctx.src(key), value, DEFAULT)
    else:
        conv.group("quant", PRECISIONS[value].group)


def quantize_via(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value == "pipeline":
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "cpu or accelerator; on a GPU, quant=nf4 quantises "
                   "while loading")
    else:
        conv.set("quant.quantize_via", value, ctx.src(key))


def optimizer(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value not in OPTIMIZERS:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"one of {', '.join(OPTIMIZERS)}")
    elif OPTIMIZERS[value] != "adamw":
        conv.group("optimizer", OPTIMIZERS[value])
    else:
        conv.leave(ctx.src(key), value, DEFAULT)


def lr_scheduler(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value in LR_SCHEDULERS:
        conv.set("optimizer.lr_scheduler", value, ctx.src(key))
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"one of {', '.join(LR_SCHEDULERS)}")


def beta(index: int) -> Rule:
    def rule(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
        try:
            ctx.betas[index] = float(value)
        except (TypeError, ValueError):
            conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "a number in [0, 1)")
    return rule


def optimizer_config(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    pairs = value.items() if isinstance(value, dict) else (
        item.split("=", 1) for item in str(value).split(",") if "=" in item)
    conv.set("optimizer.extra", {k.strip(): _scalar(v) for k, v in pairs}, ctx.src(key))


def max_grad_norm(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number == 0:
        conv.set("train.max_grad_norm", None, ctx.src(key))
    elif conv.set("train.max_grad_norm", value, ctx.src(key)) and "grad_clip_method" not in ctx.options:
        conv.note(f"max_grad_norm={value}: SimpleTuner clips each gradient element to ±{value} by default "
                  "(grad_clip_method=value); train.max_grad_norm bounds the global norm instead")


def grad_clip_method(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    detail = "" if value == "norm" else "gradients are clipped by global norm here (train.max_grad_norm)"
    conv.leave(ctx.src(key), value, DEFAULT if value == "norm" else VALUE_NOT_SUPPORTED, detail)


def flow_schedule_shift(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if ctx.on("flow_schedule_auto_shift"):
        conv.leave(ctx.src(key), value, DEFAULT, "flow_schedule_auto_shift computes the shift")
    elif _number(value) == 0:
        conv.leave(ctx.src(key), value, DEFAULT, "0 = no shift")
    else:
        conv.set("train.flow_schedule_shift", value, ctx.src(key))


def sigma_sampling(name: str) -> Rule:
    def rule(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
        if ctx.on(key):
            conv.set("train.flow_sigma_sampling", name, ctx.src(key))
        else:
            conv.leave(ctx.src(key), value, DEFAULT)
    return rule


def attention_mechanism(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if str(value).startswith("sageattention"):
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "SageAttention has no backward pass (SimpleTuner uses "
                   "it for validation only by default); training uses sdpa")
    elif value in ATTENTION and ATTENTION[value] in ATTENTION_BACKENDS:
        conv.set("model.attention_backend", ATTENTION[value], ctx.src(key))
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"one of {', '.join(ATTENTION)}")


def group_offload(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    targets = {"enable_group_offload": None, "group_offload_type": "offload.group_offload_type",
               "group_offload_blocks_per_group": "offload.blocks_per_group",
               "group_offload_use_stream": "offload.use_stream", "group_offload_to_disk_path": "offload.to_disk_path"}
    if not ctx.on("enable_group_offload"):
        conv.leave(ctx.src(key), value, DEFAULT if key == "enable_group_offload" else NO_EQUIVALENT,
                   "" if key == "enable_group_offload" else "read only with enable_group_offload")
    elif key == "enable_group_offload":
        conv.set("offload.group_offload_type", ctx.options.get("group_offload_type", "block_level"), ctx.src(key))
    elif key != "group_offload_type":
        conv.set(targets[key], value, ctx.src(key))


def tread_config(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    settings = json.loads(value) if isinstance(value, str) and value.strip().startswith("{") else value
    routes = settings.get("routes") if isinstance(settings, dict) else None
    if not ctx.family.routed_blocks:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"{ctx.family.title} has no token blocks to route")
    elif not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, 'expected {"routes": [{"selection_ratio": ...}, ...]}')
    else:
        conv.set("tread.routes", routes, ctx.src(key))


def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scalar(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


RULES: Dict[str, Rule] = {
    "base_model_precision": base_model_precision, "quantize_via": quantize_via, "optimizer": optimizer,
    "lr_scheduler": lr_scheduler, "adam_beta1": beta(0), "optimizer_beta1": beta(0), "adam_beta2": beta(1),
    "optimizer_beta2": beta(1), "optimizer_config": optimizer_config, "max_grad_norm": max_grad_norm,
    "grad_clip_method": grad_clip_method,
    "flow_schedule_shift": flow_schedule_shift, "flow_use_uniform_schedule": sigma_sampling("uniform"),
    "flow_use_beta_schedule": sigma_sampling("beta"), "flux_fast_schedule": sigma_sampling("fast"),
    "attention_mechanism": attention_mechanism, "tread_config": tread_config,
    **{name: group_offload for name in ("enable_group_offload", "group_offload_type", "group_offload_blocks_per_group",
                                        "group_offload_use_stream", "group_offload_to_disk_path")},
}
