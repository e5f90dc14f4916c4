"""Apply the memory/speed options to loaded components: attention backend, VAE tiling, and — once the adapter is
attached — trainable dtype, gradient checkpointing (interval), torch.compile of the blocks and group offload."""

from __future__ import annotations

import logging
import os
from typing import Dict

import torch
from torch import nn

from simpletuner_pl.errors import ConfigError

log = logging.getLogger(__name__)

# model.attention_backend -> diffusers' attention dispatcher name (sdpa = torch's scaled_dot_product_attention).
ATTENTION = {"sdpa": "native", "flash": "flash", "flash_varlen": "flash_varlen", "flex": "flex",
             "xformers": "xformers", "sage": "sage", "native_flash": "_native_flash",
             "native_efficient": "_native_efficient", "native_cudnn": "_native_cudnn", "native_math": "_native_math"}


def training_device(cfg) -> torch.device:
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def configure_components(cfg, components: Dict[str, object], denoiser_name: str) -> None:
    backend = cfg.model.attention_backend
    if backend != "sdpa":
        from diffusers.models.attention_dispatch import _check_attention_backend_requirements

        try:
            _check_attention_backend_requirements(ATTENTION[backend])
        except Exception as err:  # diffusers says which package is missing
            raise ConfigError(f"model.attention_backend={backend}: {err}. Use model.attention_backend=sdpa.") from None
    # Set even for sdpa: diffusers also stores the choice process-wide, so an earlier run in the same process
    # (a notebook, a test session) must not leak its backend into this one.
    components[denoiser_name].set_attention_backend(ATTENTION[backend])
    if cfg.offload.vae_enable_tiling and "vae" in components:
        components["vae"].enable_tiling()


def configure_training(denoiser: nn.Module, cfg) -> None:
    """After the adapter is attached (its layers must exist before blocks are compiled or grouped for offload)."""
    from simpletuner_pl.callbacks.checkpointing_interval import enable_gradient_checkpointing
    from simpletuner_pl.optimizers import prepare_trainable

    prepare_trainable([p for p in denoiser.parameters() if p.requires_grad], cfg.optimizer)
    if cfg.train.gradient_checkpointing:
        names = enable_gradient_checkpointing(denoiser, cfg.train.gradient_checkpointing_interval)
        log.info("gradient checkpointing: %d blocks", len(names))
    if cfg.train.compile:
        compile_blocks(denoiser)
    if cfg.offload.group_offload_type != "none":
        group_offload(denoiser, cfg.offload, training_device(cfg))


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """torch.compile each transformer block's forward in place. Module identity is kept (checkpointing, LoRA
    export and state-dict keys see the same modules) and one graph is compiled per block type. The outputs are
    copied inside the graph: Flux's single block returns two views of one tensor, which AOTAutograd refuses to
    compile when quantised weights (tensor subclasses) are graph inputs."""
    from simpletuner_pl.callbacks.checkpointing_interval import block_lists

    count = 0
    for name in block_lists(model):
        for block in model.get_submodule(name):
            block.forward = torch.compile(_fresh_outputs(block.forward), backend=backend)
            count += 1
    return count


def _fresh_outputs(forward):
    def call(*args, **kwargs):
        out = forward(*args, **kwargs)
        return tuple(o.clone() if torch.is_tensor(o) else o for o in out) if isinstance(out, tuple) else out

    return call


def group_offload(model: nn.Module, offload, device: torch.device) -> None:
    """diffusers group offloading: blocks live on the CPU (or disk) and are moved to `device` just before they run.
    The model then places itself: `DiffusionModule._apply` leaves it out of Lightning's `.to(device)`."""
    if offload.use_stream and device.type != "cuda":
        raise ConfigError("offload.use_stream=true overlaps copies with CUDA streams and needs a CUDA GPU; "
                          "set offload.use_stream=false on this machine")
    model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                               offload_type=offload.group_offload_type, num_blocks_per_group=offload.blocks_per_group,
                               use_stream=offload.use_stream, offload_to_disk_path=offload.to_disk_path)
    model._places_itself = True
