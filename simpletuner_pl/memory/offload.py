"""`offload.group_offload_type`: diffusers group offloading of the denoiser's blocks."""

from __future__ import annotations

import torch
from torch import nn

from simpletuner_pl.config.offload import OffloadConfig
from simpletuner_pl.errors import ConfigError


def group_offload(model: nn.Module, offload: OffloadConfig, device: torch.device) -> None:
    """Blocks live on the CPU (or disk) and are moved to `device` just before they run. diffusers' hooks then
    place the model themselves (`placement.is_self_placing`), so Lightning's `.to(device)` leaves it alone."""
    if offload.use_stream and device.type != "cuda":
        raise ConfigError("offload.use_stream=true overlaps copies with CUDA streams and needs a CUDA GPU; "
                          "set offload.use_stream=false on this machine")
    model.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                               offload_type=offload.group_offload_type, num_blocks_per_group=offload.blocks_per_group,
                               use_stream=offload.use_stream, offload_to_disk_path=offload.to_disk_path)
