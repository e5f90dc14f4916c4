"""One SimpleTuner config (and dataloader file) → a `Conversion`: every option mapped by the tables and rules, or
left with its reason.

The order matters only where SimpleTuner's does: the family first (every rule reads it), then each option, then
the dataloader, then `finish` (validation, evaluation, betas, the data group) which needs all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from simpletuner_pl.models.registry import FAMILIES
from simpletuner_pl.paths import group_option
from simpletuner_pl.tools.adapter_rules import ADAPTER_RULES
from simpletuner_pl.tools.conversion import (
    DEFAULT,
    NO_EQUIVALENT,
    NOT_SUPPORTED,
    UNKNOWN,
    VALUE_NOT_SUPPORTED,
    Conversion,
    default_of,
)
from simpletuner_pl.tools.dataset_rules import convert_datasets, dataset_field
from simpletuner_pl.tools.option_rules import RULES, Context
from simpletuner_pl.tools.option_table import DATASET_DEFAULTS, DIRECT, NO_EQUIVALENT_OPTIONS, NOT_SUPPORTED_OPTIONS
from simpletuner_pl.tools.run_rules import (
    DIFFERENT_DEFAULTS,
    FLOW_DEFAULTS,
    RUN_RULES,
    VALIDATION_DEFAULTS,
    choose_model,
    model_group_value,
)

FINISHED = ("model_family", "model_flavour", "validation_disable", "evaluation_type", "eval_loss_disable",
            "disable_assistant_lora", "assistant_lora_strength", "assistant_lora_inference_strength",
            "pretrained_vae_model_name_or_path")
MISSING = "???"  # Hydra's mandatory value: composing says which key to set


def convert(options: Dict[str, Any], backends: Optional[List[Dict[str, Any]]], label: str = "config.json",
            backends_label: str = "multidatabackend.json", folder: Path = Path(".")) -> Conversion:
    conv = Conversion()
    spec = choose_model(conv, options, label)
    ctx = Context(options, spec, label, folder)
    for key, value in options.items():
        carry(conv, ctx, key, value)
    if backends is None:
        conv.group("data", "local")
        conv.set("data.datasets.main.instance_data_dir", MISSING, label)
        for name in DATASET_DEFAULTS:
            if name in options:
                dataset_field(conv, "main", name, options[name], ctx.src(name), {})
        conv.note("no multidatabackend.json: data=local, one dataset; set data.datasets.main.instance_data_dir")
    else:
        conv.group("data", "null")
        convert_datasets(conv, backends, options, backends_label, label)
    finish(conv, ctx)
    return conv


def carry(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    src = ctx.src(key)
    rule = RULES.get(key) or ADAPTER_RULES.get(key) or RUN_RULES.get(key)
    if rule is not None:
        try:
            rule(conv, ctx, key, value)
        except (TypeError, ValueError, AttributeError):  # a value of the wrong kind (a word for a number, ...)
            conv.leave(src, value, VALUE_NOT_SUPPORTED, "not a value SimpleTuner accepts for it")
    elif key in DIRECT:
        conv.set(DIRECT[key], value, src)
    elif key in NO_EQUIVALENT_OPTIONS:
        conv.leave(src, value, NO_EQUIVALENT, NO_EQUIVALENT_OPTIONS[key])
    elif key in NOT_SUPPORTED_OPTIONS:
        conv.leave(src, value, NOT_SUPPORTED, NOT_SUPPORTED_OPTIONS[key])
    elif key not in FINISHED and key not in DATASET_DEFAULTS:
        conv.leave(src, value, UNKNOWN, "not a SimpleTuner option this importer knows; check the spelling")


def finish(conv: Conversion, ctx: Context) -> None:
    options = ctx.options
    foreign_options(conv, ctx)
    validation = bool(options.get("validation_prompt") or options.get("user_prompt_library"))
    if "validation_disable" in options:
        validation = validation and not ctx.on("validation_disable")
        conv.leave(ctx.src("validation_disable"), options["validation_disable"], DEFAULT,
                   "validation runs only when there is a prompt to render")
    if validation:
        conv.group("validation", "on")
    elif any(key.startswith("validation.") for key in conv.values):
        conv.note("validation stays off: there is no validation_prompt or user_prompt_library to render "
                  "(SimpleTuner would render only an unconditional image); add validation=on validation.prompt=...")
    evaluation(conv, ctx, validation)
    if "disable_assistant_lora" in options:
        if ctx.on("disable_assistant_lora"):
            conv.set("model.assistant_lora_path", None, ctx.src("disable_assistant_lora"))
        else:
            conv.leave(ctx.src("disable_assistant_lora"), options["disable_assistant_lora"], DEFAULT)
    for key, default in (("assistant_lora_strength", 1.0), ("assistant_lora_inference_strength", 0.0)):
        if key in options:
            same = str(options[key]).strip() in (str(default), f"{default:g}")
            conv.leave(ctx.src(key), options[key], DEFAULT if same else NOT_SUPPORTED,
                       "" if same else f"the assistant LoRA is applied at {default:g}")
    assistant_needs_lora(conv, ctx)
    vae = options.get("pretrained_vae_model_name_or_path")
    if "pretrained_vae_model_name_or_path" in options:
        if vae is None or str(vae).lower() == str(options.get("pretrained_model_name_or_path", "")).lower():
            conv.leave(ctx.src("pretrained_vae_model_name_or_path"), vae, DEFAULT, "the pipeline's own VAE")
        else:
            conv.set("model.pretrained_vae_model_name_or_path", vae, ctx.src("pretrained_vae_model_name_or_path"))
    if ctx.betas:
        group = conv.groups.get("optimizer", "adamw")
        betas = list(OmegaConf.load(group_option("optimizer", group)).get("betas", default_of("optimizer.betas")))
        for index, value in ctx.betas.items():
            betas[index] = value
        conv.set("optimizer.betas", betas, ctx.src("adam_beta1/2"))
    unset_defaults(conv, ctx, validation)


def assistant_needs_lora(conv: Conversion, ctx: Context) -> None:
    """A flavour trained over an assistant LoRA (schnell) keeps it only under a PEFT LoRA here."""
    adapter = conv.groups.get("adapter", "lora")
    path = model_group_value(conv.groups["model"], "assistant_lora_path")
    if adapter != "lora" and path and "model.assistant_lora_path" not in conv.values:
        conv.set("model.assistant_lora_path", None, ctx.src("lora_type" if adapter == "lokr" else "model_type"))
        conv.note(f"the assistant LoRA ({path}) stacks only under a PEFT LoRA here: adapter={adapter} trains "
                  "without it (model.assistant_lora_path=null)")


def evaluation(conv: Conversion, ctx: Context, validation: bool) -> None:
    options = ctx.options
    clip = options.get("evaluation_type", "none") == "clip"
    if clip and not validation:
        conv.leave(ctx.src("evaluation_type"), "clip", NO_EQUIVALENT, "CLIP scores the validation images, and "
                   "validation is off")
        clip = False
    elif "evaluation_type" in options and not clip:
        conv.leave(ctx.src("evaluation_type"), options["evaluation_type"], DEFAULT)
    held_out = any(key.startswith("data.datasets.") and key.endswith(".dataset_type") and value == "eval"
                   for key, (value, _) in conv.values.items())
    loss = held_out and not ctx.on("eval_loss_disable")
    if "eval_loss_disable" in options and not held_out:
        conv.leave(ctx.src("eval_loss_disable"), options["eval_loss_disable"], DEFAULT, "no eval dataset")
    if clip or loss:
        conv.group("eval", "all" if clip and loss else "clip" if clip else "loss")


def foreign_options(conv: Conversion, ctx: Context) -> None:
    """Keys only another family reads: SimpleTuner ignores them for this one, and our checks would refuse them."""
    foreign = {key for other in FAMILIES.values() if other is not ctx.family for key in other.options}
    for key in [k for k in conv.values if k in foreign and k not in ctx.family.options]:
        value, src = conv.values.pop(key)
        conv.leave(src, value, NO_EQUIVALENT, f"SimpleTuner ignores it for {ctx.family.title}")


def unset_defaults(conv: Conversion, ctx: Context, validation: bool) -> None:
    table = dict(DIFFERENT_DEFAULTS)
    if "model.prediction_type" not in ctx.family.options:  # flow matching (DDPM families read a prediction type)
        table.update(FLOW_DEFAULTS)
    if validation:
        table.update(VALIDATION_DEFAULTS)
    for option, (theirs, ours) in table.items():
        if option not in ctx.options:
            conv.note(f"{option} is not set: SimpleTuner's default is {theirs}; {ours} keeps simpletuner_pl's")
