"""`model.attention_backend`: diffusers' attention dispatcher, checked before the first step."""

from __future__ import annotations

from torch import nn

from simpletuner_pl.config.registries import ATTENTION_BACKENDS
from simpletuner_pl.errors import ConfigError


def set_attention_backend(denoiser: nn.Module, backend: str) -> None:
    """Set even for sdpa: diffusers keeps the choice process-wide, so an earlier run in the same process (a
    notebook, a test session) must not leak its backend into this one."""
    name = ATTENTION_BACKENDS[backend].dispatcher
    if backend != "sdpa":
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        try:
            _check_attention_backend_requirements(AttentionBackendName(name))  # it reads the enum's value
        except Exception as err:  # diffusers says which package is missing
            raise ConfigError(f"model.attention_backend={backend}: {err}. Use model.attention_backend=sdpa.") from None
    if hasattr(denoiser, "set_attention_backend"):
        denoiser.set_attention_backend(name)
