"""The models the evaluation callbacks load (CLIP scorer, preview decoder): which, and whether they can be found.

Checked by `simpletuner_pl.preflight` before any weight is loaded, so a bad path fails in a second rather than at
the first validation round; torch-free (open_clip is imported only for an `open_clip:` spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.models.registry import family
from simpletuner_pl.sources import Source, check_source

OPEN_CLIP = "open_clip:"


def parse_open_clip(spec: str) -> Tuple[str, Optional[str]]:
    """`open_clip:ViT-H-14:laion2b_s32b_b79k` → (arch, pretrained); registers an arch given as a .json file."""
    import open_clip

    rest = spec[len(OPEN_CLIP):]
    if rest.startswith("hf-hub:"):
        return rest, None
    arch, _, pretrained = rest.partition(":")
    if arch.endswith(".json"):
        if not Path(arch).expanduser().is_file():
            raise ConfigError(f"eval.clip_score.model={spec}: model config {arch} does not exist")
        open_clip.add_model_config(Path(arch).expanduser())
        arch = Path(arch).stem
    if arch not in open_clip.list_models():
        raise ConfigError(f"eval.clip_score.model={spec}: open_clip has no architecture {arch!r} (open_clip."
                          "list_models() names them), and it is not a .json model config")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not pretrained:
        if not tags:
            raise ConfigError(f"eval.clip_score.model={spec}: no known weights for {arch}; append :<weights file> "
                              "or :random")
        return arch, tags[0]
    if pretrained == "random":
        return arch, None
    if pretrained not in tags and not Path(pretrained).expanduser().is_file():
        raise ConfigError(f"eval.clip_score.model={spec}: {pretrained!r} is neither a weights file nor one of "
                          f"{arch}'s pretrained tags ({', '.join(tags) or 'none'}); or use :random")
    return arch, pretrained


def check_clip_source(spec: str) -> None:
    if spec.startswith(OPEN_CLIP):
        parse_open_clip(spec)
    else:
        check_source(Source("CLIP score model", spec, None, "config.json", key="eval.clip_score.model"))


def preview_decoder(cfg: RunConfig) -> str:
    """The Tiny AutoEncoder of validation previews: `validation.preview_decoder`, else the family's."""
    return cfg.validation.preview_decoder or family(cfg.model.family).preview_decoder


def check_decoder_source(location: str) -> None:
    check_source(Source("validation preview decoder", location, None, "config.json", key="validation.preview_decoder"))
