"""The adapter's SimpleTuner options: model_type/lora_type choose `adapter=lora|lokr|full`, a lycoris_config.json
becomes `adapter.lycoris.*`, and the LoRA's init, targets and file layout carry over where the family has them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from simpletuner_pl.config.registries import LORA_INITS
from simpletuner_pl.tools.conversion import DEFAULT, NO_EQUIVALENT, VALUE_NOT_SUPPORTED, Conversion
from simpletuner_pl.tools.option_rules import Context, Rule

LYCORIS_FIELDS = ("multiplier", "linear_dim", "linear_alpha", "factor", "full_matrix", "bypass_mode")


def model_type(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value == "full":
        conv.group("adapter", "full")
    elif value != "lora":
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "lora or full")
    elif ctx.options.get("lora_type", "standard") == "standard":
        conv.leave(ctx.src(key), value, DEFAULT)


def lora_type(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if ctx.options.get("model_type", "lora") == "full":
        conv.leave(ctx.src(key), value, NO_EQUIVALENT, "read only with model_type=lora")
    elif value == "lycoris":
        conv.group("adapter", "lokr")
    elif value == "standard":
        conv.leave(ctx.src(key), value, DEFAULT)
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "standard or lycoris")


def lycoris_config(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if ctx.options.get("lora_type") != "lycoris":
        conv.leave(ctx.src(key), value, NO_EQUIVALENT, "read only with lora_type=lycoris")
        return
    settings = value if isinstance(value, dict) else _read_json(ctx, str(value))
    if settings is None:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED,
                   "file not found: adapter.lycoris keeps SimpleTuner's example config (LoKr, factor 16/8)")
        return
    label = f"{Path(str(value)).name if not isinstance(value, dict) else key}"
    for name, item in settings.items():
        src = f"{label}: {name}"
        if name == "algo":
            if item != "lokr":
                conv.leave(src, item, VALUE_NOT_SUPPORTED, "LyCORIS LoKr (algo=lokr) only")
        elif name in LYCORIS_FIELDS:
            conv.set(f"adapter.lycoris.{name}", item, src)
        elif name == "apply_preset" and isinstance(item, dict):
            _lycoris_preset(conv, label, item)
        else:
            conv.leave(src, item, VALUE_NOT_SUPPORTED if name in ("dropout", "rank_dropout") else NO_EQUIVALENT)


def _lycoris_preset(conv: Conversion, label: str, preset: Dict[str, Any]) -> None:
    for name, item in preset.items():
        src = f"{label}: apply_preset.{name}"
        if name in ("target_module", "target_name"):
            conv.set(f"adapter.lycoris.{name}", list(item), src)
        elif name == "module_algo_map" and isinstance(item, dict):
            factors = {cls: spec["factor"] for cls, spec in item.items() if isinstance(spec, dict) and "factor" in spec}
            conv.set("adapter.lycoris.module_factors", factors, src)
        else:
            conv.leave(src, item, VALUE_NOT_SUPPORTED)


def lora_init_type(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value == "loftq" and ctx.quantised():
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, "LoftQ needs an unquantised base; SimpleTuner falls "
                   "back to default with base_model_precision set, and so does this import")
    elif value in LORA_INITS:
        conv.set("adapter.init", value, ctx.src(key))
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"one of {', '.join(LORA_INITS)}")


def flux_lora_target(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    targets = ctx.family.targets
    if targets.free_form:
        conv.leave(ctx.src(key), value, NO_EQUIVALENT, f"a Flux option; SimpleTuner ignores it for "
                   f"{ctx.family.title}")
    elif value == targets.default:
        conv.leave(ctx.src(key), value, DEFAULT)
    elif value in targets.presets:
        conv.set("adapter.target", value, ctx.src(key))
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"one of {', '.join(targets.presets)}")


def peft_lora_target_modules(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    modules = json.loads(value) if isinstance(value, str) and value.strip().startswith("[") else value
    names = modules if isinstance(modules, list) else str(modules).split(",")
    if not ctx.family.targets.free_form:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"{ctx.family.title} takes a preset "
                   "(adapter.target, SimpleTuner's flux_lora_target)")
    else:
        conv.set("adapter.target", ",".join(str(n).strip() for n in names), ctx.src(key))


def lora_format(conv: Conversion, ctx: Context, key: str, value: Any) -> None:
    if value == "diffusers":
        conv.leave(ctx.src(key), value, DEFAULT)
    elif value == "comfyui" and "kohya" in ctx.family.export_formats:
        conv.set("adapter.export_format", "kohya", ctx.src(key))
    else:
        conv.leave(ctx.src(key), value, VALUE_NOT_SUPPORTED, f"{ctx.family.title} LoRAs are saved in the layout "
                   "diffusers and ComfyUI both load")


def _read_json(ctx: Context, location: str) -> Optional[Dict[str, Any]]:
    for folder in (ctx.folder, Path.cwd()):
        path = (folder / location).expanduser()
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


ADAPTER_RULES: Dict[str, Rule] = {
    "model_type": model_type, "lora_type": lora_type, "lycoris_config": lycoris_config,
    "lora_init_type": lora_init_type, "flux_lora_target": flux_lora_target,
    "peft_lora_target_modules": peft_lora_target_modules, "lora_format": lora_format,
}
