"""What every family's loader shares: a component read from its source, the denoiser unless one was handed in,
and the VAE (the base pipeline's, or `model.pretrained_vae_model_name_or_path` with its subfolder)."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from simpletuner_pl.config.schema import ModelConfig
from simpletuner_pl.models.family import resolve
from simpletuner_pl.sources import component_source


def from_source(model_cls, source: Tuple[str, Optional[str]], model: ModelConfig, dtype: torch.dtype):
    location, sub = source
    return model_cls.from_pretrained(location, subfolder=sub, revision=model.revision, dtype=dtype)


def denoiser_or_load(denoiser: Optional[torch.nn.Module], model_cls,
                     source: Callable[[ModelConfig], Tuple[str, Optional[str]]], model: ModelConfig,
                     dtype: torch.dtype) -> torch.nn.Module:
    """The denoiser already loaded (quantised while streaming), else read from the family's denoiser source."""
    return denoiser if denoiser is not None else from_source(model_cls, source(model), model, dtype)


VAE_CLASS = "diffusers:AutoencoderKL"  # every family's VAE


def load_vae(model: ModelConfig, dtype: torch.dtype):
    source = component_source(model.pretrained_model_name_or_path, model.pretrained_vae_model_name_or_path,
                              model.pretrained_vae_subfolder, "vae")
    return from_source(resolve(VAE_CLASS), source, model, dtype)


def from_base(model_cls, sub: str, model: ModelConfig, dtype: Optional[torch.dtype] = None):
    """A component of the base pipeline (text encoders, tokenizers, scheduler): its `sub` folder."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return model_cls.from_pretrained(model.pretrained_model_name_or_path, subfolder=sub, revision=model.revision,
                                     **kwargs)
