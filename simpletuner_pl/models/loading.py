"""Where model weights come from: a hub id or a local folder, with per-component overrides.

`check_model_sources` runs before any weight is read and turns the usual failures (typo in a path, gated repo,
no network) into one actionable message instead of a traceback ten seconds into loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from simpletuner_pl.errors import ModelSourceError

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def subfolder(value: Optional[str]) -> Optional[str]:
    """SimpleTuner writes `none` for "the weights are at the repo root"."""
    return None if value in (None, "", "none", "None") else value


def component_source(base: str, override: Optional[str], override_subfolder: Optional[str],
                     default_subfolder: str) -> tuple:
    """(location, subfolder) of one component: the override with its own subfolder, else the base's folder."""
    return (override, subfolder(override_subfolder)) if override else (base, default_subfolder)


def cast_modules(components: dict, names, dtype: torch.dtype) -> dict:
    """Random-init tiny components are built in fp32; cast the weighted ones to the run's dtype."""
    if dtype != torch.float32:
        for name in names:
            components[name].to(dtype)
    return components


@dataclass(frozen=True)
class Source:
    what: str
    location: str
    subfolder: Optional[str]
    filename: str
    key: str = "model.pretrained_model_name_or_path"  # the config key that sets `location`, named in errors


def flux_sources(model_cfg) -> List[Source]:
    base = model_cfg.pretrained_model_name_or_path
    sources = [Source("text encoders and tokenizers", base, None, "model_index.json")]
    transformer = model_cfg.pretrained_transformer_model_name_or_path
    if transformer:
        sources.append(Source("transformer", transformer, subfolder(model_cfg.pretrained_transformer_subfolder),
                              "config.json"))
    if model_cfg.pretrained_vae_model_name_or_path:
        sources.append(Source("VAE", model_cfg.pretrained_vae_model_name_or_path,
                              subfolder(model_cfg.pretrained_vae_subfolder), "config.json"))
    return sources


def looks_like_path(location: str) -> bool:
    return location.startswith(("/", "./", "../", "~")) or location.count("/") != 1 or os.sep != "/" and os.sep in location


def check_source(source: Source, revision: Optional[str] = None) -> None:
    if not source.location:
        raise ModelSourceError(f"no location given for the {source.what}: set model.pretrained_model_name_or_path")
    local = Path(source.location).expanduser()
    relative = f"{source.subfolder}/{source.filename}" if source.subfolder else source.filename
    if local.is_dir():
        if not (local / relative).is_file():
            raise ModelSourceError(
                f"{local} has no {relative}, so it is not a diffusers folder for the {source.what}. Point at a folder "
                "written by `save_pretrained` (or `hf download <repo> --local-dir DIR`), or fix the subfolder override."
            )
        return
    if looks_like_path(source.location):
        raise ModelSourceError(f"model folder {source.location} (for the {source.what}) does not exist")
    _check_hub(source, relative, revision)


def _check_hub(source: Source, relative: str, revision: Optional[str]) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo = source.location
    login = "log in with `hf auth login` (or set HF_TOKEN)"
    try:
        hf_hub_download(repo, source.filename, subfolder=source.subfolder, revision=revision)
    except GatedRepoError:
        raise ModelSourceError(
            f"{repo} is gated: accept its license at https://huggingface.co/{repo}, then {login}; "
            "or download it elsewhere and pass the local folder"
        ) from None
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"{repo} is neither a local folder nor a hub repo you can see (private repos need you to {login})"
        ) from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{repo} has no revision {revision!r} (model.revision)") from None
    except LocalEntryNotFoundError as err:  # a subclass of EntryNotFoundError: catch it first
        raise ModelSourceError(
            f"cannot reach the Hugging Face Hub for {repo} ({type(err).__name__}; offline or HF_HUB_OFFLINE=1) and it "
            f"is not in the local cache. Run `hf download {repo}` on a connected machine (after `hf auth login` for "
            f"gated models such as FLUX.1), or pass a local folder as {source.key}."
        ) from None
    except EntryNotFoundError:
        raise ModelSourceError(f"hub repo {repo} has no {relative}: check the subfolder override for the {source.what}") from None
    except OSError as err:  # network failures surface as OSError subclasses
        raise ModelSourceError(f"cannot reach the Hugging Face Hub for {repo} ({err}); pass a local folder instead") from None


def check_model_sources(model_cfg) -> None:
    if model_cfg.flavour == "tiny" and not model_cfg.pretrained_model_name_or_path:
        return
    if model_cfg.family == "sdxl":
        from simpletuner_pl.models.loading_sdxl import sdxl_sources

        sources = sdxl_sources(model_cfg)
    else:
        sources = flux_sources(model_cfg)
    for source in sources:
        check_source(source, model_cfg.revision)


def load_flux_components(model_cfg, dtype: torch.dtype, transformer: Optional[torch.nn.Module] = None) -> dict:
    """FluxPipeline's components (transformer, VAE, CLIP-L, T5, tokenizers, scheduler) at `dtype`; a `transformer`
    already loaded (quantised while streaming, simpletuner_pl.quantization) is used instead of reading one."""
    if model_cfg.flavour == "tiny" and not model_cfg.pretrained_model_name_or_path:
        from simpletuner_pl.models.tiny import build_tiny_flux_components

        return cast_modules(build_tiny_flux_components(), ("transformer", "vae", "text_encoder", "text_encoder_2"),
                            dtype)

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    base, rev = model_cfg.pretrained_model_name_or_path, model_cfg.revision
    transformer_path, transformer_sub = component_source(
        base, model_cfg.pretrained_transformer_model_name_or_path, model_cfg.pretrained_transformer_subfolder,
        "transformer")
    vae_path, vae_sub = component_source(base, model_cfg.pretrained_vae_model_name_or_path,
                                         model_cfg.pretrained_vae_subfolder, "vae")
    return dict(
        transformer=transformer if transformer is not None else FluxTransformer2DModel.from_pretrained(
            transformer_path, subfolder=transformer_sub, revision=rev, dtype=dtype),
        vae=AutoencoderKL.from_pretrained(vae_path, subfolder=vae_sub, revision=rev, dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", revision=rev, dtype=dtype),
        tokenizer=AutoTokenizer.from_pretrained(base, subfolder="tokenizer", revision=rev),
        text_encoder_2=T5EncoderModel.from_pretrained(base, subfolder="text_encoder_2", revision=rev, dtype=dtype),
        tokenizer_2=AutoTokenizer.from_pretrained(base, subfolder="tokenizer_2", revision=rev),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler", revision=rev),
    )
