"""`adapter/README.md`: what the adapter is, how it was trained, and exactly how its validation images were made.

Users most often report that validation images do not match their own inference (SimpleTuner #748: embedded
guidance vs real CFG). So the card states the pipeline, its scheduler and config, every pipeline argument of
validation, whether the negative prompt is used, the seed and resolutions, and gives a snippet written from the same
`InferenceCall` validation rendered (`simpletuner_pl.inference`): run with plain diffusers on this adapter it
reproduces the validation image. It links the step-0 (base model) and final validation images side by side; the
full resolved config closes the card.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import lightning as L
from omegaconf import OmegaConf

from simpletuner_pl.callbacks.prompts import ValidationPlan
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.inference import InferenceCall, snippet
from simpletuner_pl.io import write_text


def _rows(pairs: Dict[str, object]) -> List[str]:
    return ["| setting | value |", "|---|---|"] + [f"| `{k}` | `{v}` |" for k, v in pairs.items()]


def inference_notes(cfg: RunConfig, call: InferenceCall) -> List[str]:
    """What inference must do like validation did, beyond plain pipeline arguments."""
    notes = []
    if call.masked:
        notes.append("Trained with T5 attention masking (`model.attention_masked_training`): inference must mask "
                     "the T5 pad tokens too: the snippet's `masked_t5_attention` gives the transformer the same key "
                     "mask as training; without it the image changes.")
    if call.cfg_delay:
        notes.append(f"True CFG starts at step {call.cfg_delay} (`validation.no_cfg_until_timestep`): before it the "
                     "guided prediction is the positive one (`delay_true_cfg`).")
    if call.reference_image:
        notes.append(f"Kontext edits the reference image `{call.reference_image}`, cropped to the output size "
                     "(`reference`).")
    if cfg.model.assistant_lora_path:
        notes.append(f"Trained on top of the assistant LoRA `{cfg.model.assistant_lora_path}` (frozen, weight 1); "
                     "this adapter is used alone, without it, as validation did.")
    return [f"- {note}" for note in notes] + ([""] if notes else [])


def _validation_section(cfg: RunConfig, plan: ValidationPlan, module, output_dir: Path) -> List[str]:
    pipe = module.validation_pipeline()
    prompt, (width, height) = plan.prompts[0], plan.sizes[0]
    call = module.validation_call(cfg.validation, prompt.prompt, width, height, prompt.adapter_strength)
    scheduler = {k: val for k, val in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    arguments = {k: v for k, v in call.kwargs.items() if k not in ("prompt", "width", "height")}
    negative = call.kwargs.get("negative_prompt",
                               "(not passed: no classifier-free guidance at these settings)")
    lines = ["## Validation settings (reproduce the images with these)", ""] + _rows({
        "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
        "scheduler config": json.dumps(scheduler, sort_keys=True, default=str),
        **arguments, "negative_prompt": negative, "seed": f"{plan.seed} (fresh CPU generator per image)",
        "resolutions": ",".join(f"{w}x{h}" for w, h in plan.sizes)})
    lines += ["", *inference_notes(cfg, call), "| nickname | prompt | adapter strength |", "|---|---|---|"]
    lines += [f"| {p.nickname} | {p.prompt} | {p.adapter_strength} |" for p in plan.prompts]
    adapter_dir = str((output_dir / "adapter").resolve())
    lines += ["", f"The first image ({prompt.nickname}, {width}x{height}) with plain diffusers:", "",
              snippet(module.pipeline_loading_code(adapter_dir, prompt.adapter_strength), call, plan.seed), ""]
    steps = sorted(int(p.name.split("_")[1]) for p in (output_dir / "validation").glob("step_*") if p.is_dir())
    if steps:
        first, last = steps[0], steps[-1]
        lines += ["## Validation images", "", f"| image | step {first} | step {last} |", "|---|---|---|"]
        for image in sorted((output_dir / "validation" / f"step_{last}").glob("*-*x*.png")):
            cells = [f"![step {s}](../validation/step_{s}/{image.name})" for s in (first, last)]
            lines.append(f"| {image.stem} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return lines


def _files_section(adapter) -> List[str]:
    """Which file each loader takes (docs/lora_files.md)."""
    if adapter.type == "full":
        return []
    if adapter.type == "lokr":
        rows = ["- `pytorch_lokr_weights.safetensors` (LyCORIS layout): ComfyUI's LoraLoaderModelOnly as it is; "
                "diffusers through `simpletuner_pl.adapters.lokr.load_lokr_weights` (snippet below)"]
    elif adapter.use_dora:
        rows = ["- `pytorch_lora_weights.safetensors`: diffusers (`load_lora_weights`, PEFT DoRA)",
                "- `pytorch_lora_weights_comfyui.safetensors`: ComfyUI's LoraLoaderModelOnly (its `dora_scale`)"]
    else:
        where = {"universal": "diffusers (`load_lora_weights`) and ComfyUI's LoraLoaderModelOnly, exactly",
                 "diffusers": "diffusers (`load_lora_weights`); for ComfyUI convert it with "
                              "`python -m simpletuner_pl.tools.convert_lora adapter/ out/ --to comfyui`",
                 "kohya": "Kohya-style tools, ComfyUI and diffusers", "comfyui": "ComfyUI and diffusers"}
        rows = [f"- `pytorch_lora_weights.safetensors` ({adapter.export_format} layout): "
                f"{where[adapter.export_format]}"]
    return ["## Files", "", *rows, ""]


def model_card(cfg: RunConfig, plan: Optional[ValidationPlan], module, output_dir: Path, global_step: int) -> str:
    m, a = cfg.model, cfg.adapter
    base = m.pretrained_model_name_or_path or f"tiny random-init {m.family} (simpletuner_pl.models)"
    triggers = sorted({ds.instance_prompt for ds in cfg.data.enabled().values() if ds.instance_prompt}
                      | ({cfg.validation.token} if cfg.validation.token else set()))
    lines = ["---", f"base_model: {base}", "library_name: diffusers",
             f"tags: [{m.family}, {a.type}, text-to-image, simpletuner_pl]"]
    lines += [f"instance_prompt: {json.dumps(triggers[0])}"] if triggers else []
    lines += ["---", "", f"# {a.type} adapter for {base}", "", f"- base model: `{base}` (flavour `{m.flavour}`)",
              f"- trigger / instance prompt: {', '.join(f'`{t}`' for t in triggers) or '(none)'}",
              f"- trained steps: {global_step}", ""]
    best = output_dir / "adapter" / "best" / "best.json"
    if best.is_file():
        info = json.loads(best.read_text())
        lines += [f"- lowest eval loss {info['eval_loss']:.6g} at step {info['step']}: `adapter/best/`", ""]
    lines += _files_section(a)
    lines += ["## Training settings", ""] + _rows({**{f"model.{k}": v for k, v in asdict(m).items()},
                                                    **{f"adapter.{k}": v for k, v in asdict(a).items()},
                                                    **{f"quant.{k}": v for k, v in asdict(cfg.quant).items()},
                                                    **{f"optimizer.{k}": v for k, v in asdict(cfg.optimizer).items()},
                                                    **{f"train.{k}": v for k, v in asdict(cfg.train).items()},
                                                    "seed": cfg.seed}) + [""]
    if plan is not None:
        lines += _validation_section(cfg, plan, module, output_dir)
    config = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    lines += ["<details><summary>Full resolved config</summary>", "", "```yaml", config.rstrip(), "```", "",
              "</details>", ""]
    return "\n".join(lines)


class ModelCard(L.Callback):
    def __init__(self, cfg: RunConfig, plan: Optional[ValidationPlan], output_dir: Path):
        self.cfg, self.plan, self.output_dir = cfg, plan, Path(output_dir)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            card = model_card(self.cfg, self.plan, module, self.output_dir, trainer.global_step)
            write_text(self.output_dir / "adapter" / "README.md", card)
