"""`FamilySpec`: everything the rest of the package needs to know about one model family, in one record.

Torch-free, so config checks, source checks and the planner can consult a family before anything heavy is
imported; the classes it names (module, loader, diffusers classes) are imported only when asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Tuple

from simpletuner_pl.config.registries import LoraTargets
from simpletuner_pl.config.schema import ModelConfig, RunConfig
from simpletuner_pl.sources import Source


def resolve(path: str):
    """`"package.module:attribute"` → the attribute, importing the module on demand."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class FamilySpec:
    name: str  # model.family
    title: str  # for messages
    flavours: Tuple[str, ...]  # model.flavour values
    denoiser_name: str  # the trained component ("transformer", "unet")
    module: str  # "pkg.mod:Class" of its LightningModule (a DiffusionModule)
    loader: str  # "pkg.mod:function": (model_cfg, dtype, denoiser=None) -> components dict
    denoiser_class: str  # "diffusers:<ModelMixin>" of the denoiser (streamed quantised loading)
    pipeline: str  # "diffusers:<Pipeline>": validation images, LoRA export, the model card's snippet
    targets: LoraTargets  # what adapter.target may be
    keep_high_precision: Tuple[str, ...]  # top-level denoiser children never quantised
    preview_decoder: str  # default Tiny AutoEncoder for validation previews
    export_formats: Mapping[str, str]  # adapter.export_format → LoRA file layout (simpletuner_pl.adapters.layouts)
    options: Tuple[str, ...]  # config keys only this family reads; set with another family, they are refused
    sources: Callable[[ModelConfig], List[Source]]  # what check_source must find before loading
    denoiser_source: Callable[[ModelConfig], Tuple[str, Optional[str]]]  # (location, subfolder) of the denoiser
    check: Callable[[RunConfig], None]  # the family's own option rules (ConfigError)
    text_encoders: Tuple[str, ...] = ("text_encoder", "text_encoder_2")
    tokenizers: Tuple[str, ...] = ("tokenizer", "tokenizer_2")
    planner: Optional[str] = None  # module with `meta_components`/`profile_inputs`; None: not priced
    flavour_pipelines: Mapping[str, str] = field(default_factory=dict)  # flavour → its own "diffusers:<Pipeline>"
    routed_blocks: Tuple[str, ...] = ()  # TREAD: the denoiser's token-block lists in order; () = no token routing
    block_names: Tuple[str, ...] = ()  # names only its LoRA files contain (diffusers', BFL's/LDM's): convert_lora

    def module_class(self) -> type:
        return resolve(self.module)

    def load_components(self) -> Callable:
        return resolve(self.loader)

    def denoiser_cls(self) -> type:
        return resolve(self.denoiser_class)

    def pipeline_cls(self) -> type:
        """The family's pipeline: LoRA export and loading (`save_lora_weights`, `lora_state_dict`)."""
        return resolve(self.pipeline)

    def pipeline_for(self, flavour: str) -> type:
        """The pipeline a flavour validates and infers with (FLUX.1 Kontext: `FluxKontextPipeline`)."""
        return resolve(self.flavour_pipelines.get(flavour, self.pipeline))
