"""The pipeline-loading lines of a model card's inference snippet, from the facts a family states about itself.

Torch-free string building: each family says which pipeline class validation uses, which components it loads from
somewhere other than the base pipeline folder (a transformer or VAE override, a fully fine-tuned denoiser), and what
it changes after loading (SDXL's DDIM scheduler); this module writes the Python that does the same with diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

from simpletuner_pl.adapters.lokr import LOKR_FILE
from simpletuner_pl.config.registries import PRECISIONS
from simpletuner_pl.config.schema import ModelConfig


@dataclass(frozen=True)
class LoadedApart:
    """A pipeline component read on its own and passed to `from_pretrained` (`<argument>=<argument>`)."""

    argument: str  # the pipeline's argument: transformer, unet, vae
    cls: str  # its diffusers class
    location: str
    subfolder: Optional[str]
    dtype: str  # torch dtype name


def _from_pretrained(cls: str, location: str, subfolder: Optional[str], revision: Optional[str], dtype: str) -> str:
    args = [repr(location)] + ([f"subfolder={subfolder!r}"] if subfolder else [])
    args += ([f"revision={revision!r}"] if revision else []) + [f"dtype=torch.{dtype}"]
    return f"{cls}.from_pretrained({', '.join(args)})"


@dataclass(frozen=True)
class BuiltIn:
    """`model.tiny`: the random-init components a function of this package builds (seeded: always the same)."""

    module: str  # e.g. simpletuner_pl.models.tiny_flux
    call: str  # e.g. build_tiny_flux_components(guidance_embeds=False)


def adapter_code(adapter_type: str, adapter_dir: str, denoiser: str, strength: float = 1.0) -> List[str]:
    """The lines that put the trained adapter on `pipe`: diffusers' LoRA loader, or LyCORIS for a LoKr (at a
    prompt's strength); a full fine-tune is a component read apart instead (nothing here)."""
    if adapter_type == "lora":
        return [f"pipe.load_lora_weights({adapter_dir!r})  # this adapter folder"]
    if adapter_type != "lokr":
        return []
    lines = ["from simpletuner_pl.adapters.lokr import load_lokr_weights",
             f"lokr = load_lokr_weights(pipe.{denoiser}, {f'{adapter_dir}/{LOKR_FILE}'!r})  # this adapter's LoKr"]
    if strength != 1.0:
        lines.append(f"lokr.set_multiplier(lokr.multiplier * {strength!r})  # the prompt's adapter strength")
    return lines


def pipeline_code(pipeline: str, model: ModelConfig, dtype: str, apart: Sequence[LoadedApart],
                  adapter: Sequence[str], after_load: Sequence[str] = (), extra_imports: Sequence[str] = (),
                  quantised: Optional[Mapping[str, str]] = None, built_in: Optional[BuiltIn] = None) -> List[str]:
    """Lines ending with `pipe` on `device`: the base pipeline at `dtype`, the components in `apart`, the lines in
    `after_load`, then the `adapter` lines (`adapter_code`); `quantised` (component → precision) is stated in a
    comment; `built_in` replaces the base folder."""
    classes = sorted({pipeline, *(c.cls for c in apart), *extra_imports})
    lines = [f"from diffusers import {', '.join(classes)}"]
    if built_in is not None:
        lines.append(f"from {built_in.module} import {built_in.call.partition('(')[0]}")
    lines += ["", 'device = "cuda" if torch.cuda.is_available() else "cpu"']
    if quantised:
        listed = ", ".join(f"{name} {precision} ({PRECISIONS[precision].backend})" for name, precision in
                           quantised.items())
        lines.append(f"# trained on quantised components ({listed}): quantise them the same way for images "
                     "identical to validation's")
    for component in apart:
        lines.append(f"{component.argument} = " + _from_pretrained(component.cls, component.location,
                                                                  component.subfolder, model.revision,
                                                                  component.dtype))
    if built_in is not None:
        lines.append(f"components = {{name: part.to(dtype=torch.{dtype}).eval() if isinstance(part, torch.nn.Module) "
                     f"else part for name, part in {built_in.call}.items()}}  # model.tiny: random-init, seeded")
        replaced = "".join(f", {c.argument!r}: {c.argument}" for c in apart)
        lines.append(f"pipe = {pipeline}(**{{**components{replaced}}})" if apart else
                     f"pipe = {pipeline}(**components)")
    else:
        passed = "".join(f", {c.argument}={c.argument}" for c in apart)
        revision = f", revision={model.revision!r}" if model.revision else ""
        lines.append(f"pipe = {pipeline}.from_pretrained({model.pretrained_model_name_or_path!r}{passed}{revision}, "
                     f"dtype=torch.{dtype})")
    lines += [*after_load, *adapter, "pipe.to(device)"]
    return lines
