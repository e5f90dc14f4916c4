"""Memory estimate of a configured run, before any weight is loaded.

Every component is built on the meta device from its config (a local folder's, else the published FLUX.1 one),
so parameter counts are exact; weight bytes follow each backend's storage layout (checked against the real
quantised layers in tests/test_memory_plan.py); LoRA parameters come from PEFT on the meta model with the run's
targets; activations from a meta forward (`simpletuner_pl.memory.activations`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

import torch
from torch import nn

GB = 1024**3
FLUX1 = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
             joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu")
FLUX_VAE = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                use_quant_conv=False, use_post_quant_conv=False)
# Bytes of optimizer state per trained weight (weights and gradients are counted apart).
STATE_BYTES = {"adamw": 8, "adamw_bf16": 6, "optimi_stableadamw": 8, "optimi_lion": 4, "bnb_adamw8bit": 2,
               "bnb_lion8bit_paged": 1, "prodigy": 12}
CUDA_OVERHEAD = 0.6 * GB  # CUDA context + cuBLAS workspaces, outside PyTorch's allocator (not measured here)
PROCESS_BASELINE = 1.3 * GB  # RSS of python + torch + diffusers + transformers + lightning, measured on CPU


def meta_components(model_cfg) -> Dict[str, nn.Module]:
    """Transformer, text encoders and VAE on the meta device, from the model's folder when it is local."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    path = model_cfg.pretrained_model_name_or_path
    if model_cfg.flavour == "tiny" and not path:
        from simpletuner_pl.models.tiny import build_tiny_flux_components

        parts = build_tiny_flux_components()
        return {n: parts[n].to("meta") for n in ("transformer", "text_encoder", "text_encoder_2", "vae")}
    folder = Path(path).expanduser() if path else None
    local = folder is not None and (folder / "model_index.json").is_file()
    with torch.device("meta"):
        if local:
            return dict(transformer=FluxTransformer2DModel.from_config(
                            FluxTransformer2DModel.load_config(folder / "transformer")),
                        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                        text_encoder_2=T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2")),
                        vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")))
        return dict(transformer=FluxTransformer2DModel(**{**FLUX1, "guidance_embeds": model_cfg.flavour != "schnell"}),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                    text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)), vae=AutoencoderKL(**FLUX_VAE))


def linear_bytes(linear: nn.Linear, precision: str, dtype_bytes: int) -> int:
    """Storage of one Linear's weight after quantisation (layouts of quanto, bitsandbytes and torchao)."""
    from simpletuner_pl.quantization.backends import bnb_blocksize, nf4_blocks

    n, rows = linear.weight.numel(), linear.out_features
    if precision in ("int8-quanto", "fp8-quanto"):
        return n + rows * dtype_bytes  # one scale per output row
    if precision in ("int4-quanto", "int2-quanto"):
        bits = 4 if precision.startswith("int4") else 2
        return n * bits // 8 + (n // 128) * 2 * dtype_bytes  # scale + shift per group of 128
    if precision == "nf4-bnb" and bnb_blocksize(linear) or precision == "nf4-torchao" and nf4_blocks(n):
        return n // 2 + n // 64 + n // 4096  # 4-bit codes, 8-bit block absmax, double-quantised scalers
    return n * dtype_bytes


def weight_bytes(model: nn.Module, precision: str, dtype_bytes: int, keep=()) -> int:
    """Parameters and buffers of `model` with its Linear layers at `precision` (except the `keep` subtrees);
    LoRA layers, if attached, are left out (they are the adapter's)."""
    total, quantised = 0, set()
    if precision != "no_change":
        for name, module in model.named_modules():
            if type(module) is nn.Linear and name.split(".")[0] not in keep and ".lora_" not in name:
                total += linear_bytes(module, precision, dtype_bytes)
                quantised.add(id(module.weight))
    for name, p in model.named_parameters():
        if id(p) not in quantised and ".lora_" not in name:
            total += p.numel() * dtype_bytes
    return total + sum(b.numel() * b.element_size() for b in model.buffers())


def lora_parameters(transformer: nn.Module, adapter_cfg, family: str = "flux") -> int:
    """Trainable adapter parameters: PEFT's own layer matching on the meta model."""
    from simpletuner_pl.adapters.lora import lora_config, resolve_targets

    transformer.add_adapter(lora_config(adapter_cfg, resolve_targets(transformer, adapter_cfg.target, family)))
    return sum(p.numel() for p in transformer.parameters() if p.requires_grad)


@dataclass
class Estimate:
    """Bytes per component; `gpu` is the accelerator peak (max of startup and training), `ram` system memory."""

    parts: Dict[str, int] = field(default_factory=dict)
    gpu_startup: int = 0
    gpu_training: int = 0
    ram: int = 0
    notes: list = field(default_factory=list)

    @property
    def gpu(self) -> int:
        return max(self.gpu_startup, self.gpu_training)
