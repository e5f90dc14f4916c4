"""`offload.*`: where components live while a run trains (diffusers group offload, encoder CPU offload, tiling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from simpletuner_pl.config.fields import at_least, choice


@dataclass
class OffloadConfig:
    """Memory placement. `vae_enable_tiling` lives here because `data.*` has no VAE settings (the VAE is a model
    component; the data module only calls it)."""

    group_offload_type: str = choice("none", "none", "block_level", "leaf_level")  # diffusers group offloading
    blocks_per_group: int = at_least(1, 1)
    use_stream: bool = False  # overlap transfers with compute (CUDA only)
    to_disk_path: Optional[str] = None  # spill offloaded weights to this folder instead of RAM
    model_cpu_offload: bool = False  # VAE and text encoders live on the CPU, moved to the GPU only while they run
    offload_during_startup: bool = False  # denoiser stays on the CPU while the caches are built
    vae_enable_tiling: bool = False  # encode large images tile by tile

    @property
    def grouped(self) -> bool:
        return self.group_offload_type != "none"
