"""An assistant LoRA: a frozen adapter stacked under the trained one while training, and absent otherwise.

SimpleTuner's schnell recipe: ostris' schnell training adapter "de-distils" FLUX.1-schnell so a new LoRA can learn on
top of it; the LoRA is then used alone on stock schnell. It is loaded as a second PEFT adapter with weight 1 for
training and switched off for validation, evaluation and export; it is never trained or checkpointed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from simpletuner_pl.errors import ConfigError

NAME = "assistant"
TRAINED = "default"
WEIGHTS = "pytorch_lora_weights.safetensors"


def load_assistant(denoiser: torch.nn.Module, pipeline_cls, location: str) -> None:
    """Load the assistant LoRA (a file, a folder holding `pytorch_lora_weights.safetensors`, or a hub repo) into
    `denoiser` as a frozen adapter, the way the pipeline's `load_lora_weights` reads a LoRA (any format it converts,
    its alphas and metadata)."""
    path = Path(location).expanduser()
    folder, name = (str(path.parent), path.name) if path.is_file() else (location, WEIGHTS)
    try:
        state, alphas, metadata = pipeline_cls.lora_state_dict(folder, weight_name=name, return_alphas=True,
                                                               return_lora_metadata=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.assistant_lora_path={location}: cannot read a LoRA there ({err})") from None
    pipeline_cls.load_lora_into_transformer(state, network_alphas=alphas, transformer=denoiser, adapter_name=NAME,
                                            metadata=metadata)
    freeze(denoiser)


def freeze(denoiser: torch.nn.Module) -> None:
    for name, param in denoiser.named_parameters():
        if f".{NAME}." in name:
            param.requires_grad_(False)


def activate(denoiser: torch.nn.Module, with_assistant: bool) -> None:
    adapters = [NAME, TRAINED] if with_assistant else [TRAINED]
    denoiser.set_adapters(adapters, [1.0] * len(adapters))
    freeze(denoiser)  # PEFT marks every active adapter trainable


@contextlib.contextmanager
def without_assistant(denoiser: torch.nn.Module) -> Iterator[None]:
    """The trained adapter alone (validation, evaluation), then both again."""
    activate(denoiser, with_assistant=False)
    try:
        yield
    finally:
        activate(denoiser, with_assistant=True)
