"""`adapter/README.md`: what the adapter is, how it was trained, and exactly how its validation images were made.

Users most often report that validation images do not match their own inference (SimpleTuner #748: embedded
guidance vs real CFG). So the card states the pipeline, scheduler (with its shift settings), steps, guidance and
true-CFG scale, negative prompt, seed and resolutions, gives a diffusers snippet with those arguments, and links the
step-0 (base model) and final validation images side by side. The full resolved config closes the card.
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
from simpletuner_pl.io import write_text


def _rows(pairs: Dict[str, object]) -> List[str]:
    return ["| setting | value |", "|---|---|"] + [f"| `{k}` | `{v}` |" for k, v in pairs.items()]


def _snippet(pipeline: str, base: str, kwargs: Dict[str, object], prompt: str, size, seed: int, steps: int) -> str:
    args = "".join(f"    {k}={v!r},\n" for k, v in kwargs.items())
    return (f"```python\nimport torch\nfrom diffusers import {pipeline}\n\n"
            f"pipe = {pipeline}.from_pretrained({base!r}, dtype=torch.bfloat16).to(\"cuda\")\n"
            f"pipe.load_lora_weights(\"path/to/this/adapter\")\nimage = pipe(\n    prompt={prompt!r},\n"
            f"    width={size[0]}, height={size[1]},\n    num_inference_steps={steps},\n{args}"
            f"    generator=torch.Generator(\"cpu\").manual_seed({seed}),\n).images[0]\n```")


def _validation_section(cfg: RunConfig, plan: ValidationPlan, module, output_dir: Path) -> List[str]:
    v = cfg.validation
    pipe = module.validation_pipeline()
    seed, prompts, sizes = plan.seed, plan.prompts, plan.sizes
    kwargs = module.validation_kwargs(v)
    scheduler = {k: val for k, val in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    lines = ["## Validation settings (reproduce the images with these)", ""] + _rows({
        "pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
        "scheduler shift settings": json.dumps({k: scheduler.get(k) for k in (
            "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")}),
        "num_inference_steps": v.num_inference_steps, "guidance (embedded for Flux)": v.guidance,
        "guidance_real (true CFG; 1 = off)": v.guidance_real,
        "negative_prompt": v.negative_prompt if v.guidance_real > 1 else "(unused: no true CFG)",
        "seed": f"{seed} (fresh CPU generator per image)", "resolutions": ",".join(f"{w}x{h}" for w, h in sizes),
        "pipeline kwargs": json.dumps(kwargs, default=str)}) + ["", "| nickname | prompt | adapter strength |",
                                                               "|---|---|---|"]
    lines += [f"| {p.nickname} | {p.prompt} | {p.adapter_strength} |" for p in prompts]
    lines += ["", _snippet(type(pipe).__name__, cfg.model.pretrained_model_name_or_path or "<base model>",
                           kwargs, prompts[0].prompt, sizes[0], seed, v.num_inference_steps), ""]
    steps = sorted(int(p.name.split("_")[1]) for p in (output_dir / "validation").glob("step_*") if p.is_dir())
    if steps:
        first, last = steps[0], steps[-1]
        lines += ["## Validation images", "", f"| image | step {first} | step {last} |", "|---|---|---|"]
        for image in sorted((output_dir / "validation" / f"step_{last}").glob("*-*x*.png")):
            cells = [f"![step {s}](../validation/step_{s}/{image.name})" for s in (first, last)]
            lines.append(f"| {image.stem} | {cells[0]} | {cells[1]} |")
        lines.append("")
    return lines


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
