"""The GPU suite's cases (`experiments/gpu_suite.py` runs each in its own subprocess): one function per case, each
returning table rows (dicts). `--dry-run` runs the same code on the CPU with the tiny widths.

A Flux case builds the transformer from a config with random weights (FLUX.1-dev's published geometry, or the tiny
one), quantises it with the package's own converters, puts a rank-16 LoRA on `all`, and times forward + backward +
AdamW steps on random inputs of the right shapes under bf16 autocast, for each resolution and checkpointing setting
(and TREAD at the largest size). Beside each measured peak goes the memory planner's estimate of the same run.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Dict, List

import torch

FLUX_SIZES, TINY_SIZES = (512, 1024), (64, 128)
SDXL_DIMS = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True)


def device_and_dtype(dry_run: bool):
    return (torch.device("cpu"), torch.float32) if dry_run else (torch.device("cuda"), torch.bfloat16)


def flux_transformer(dry_run: bool, device, dtype):
    from diffusers import FluxTransformer2DModel

    from simpletuner_pl.models.flux_planner import FLUX1
    from simpletuner_pl.models.tiny_flux import TINY_FLUX_TRANSFORMER

    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel(**(TINY_FLUX_TRANSFORMER if dry_run else FLUX1)).to(dtype)
    return model.requires_grad_(False)


def with_lora(model, family: str, rank: int = 16):
    from diffusers.training_utils import cast_training_params

    from simpletuner_pl.adapters.lora import attach_lora, resolve_targets
    from simpletuner_pl.config.adapter import AdapterConfig
    from simpletuner_pl.models.registry import family as family_spec

    adapter = AdapterConfig(rank=rank, dropout=0.0, target="all" if family == "flux" else None)
    attach_lora(model, adapter, resolve_targets(model, adapter.target, family_spec(family).targets))
    cast_training_params(model, dtype=torch.float32)
    return model


def flux_inputs(model, side: int, dry_run: bool, device, dtype) -> dict:
    config, text = model.config, 64 if dry_run else 512
    tokens = (side // 16) ** 2
    return dict(hidden_states=torch.randn(1, tokens, config.in_channels, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(1, text, config.joint_attention_dim, device=device, dtype=dtype),
                pooled_projections=torch.randn(1, config.pooled_projection_dim, device=device, dtype=dtype),
                timestep=torch.full((1,), 0.5, device=device), guidance=torch.ones(1, device=device),
                txt_ids=torch.zeros(text, 3, device=device), img_ids=torch.zeros(tokens, 3, device=device),
                return_dict=False)


def measure(model, inputs: dict, steps: int, warmup: int, device, dtype) -> Dict[str, float]:
    """Median s/step, peak memory and counted FLOPs of forward + backward + AdamW on `inputs`."""
    from torch.utils.flop_counter import FlopCounterMode

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, flops = [], 0
    for i in range(warmup + steps):
        counter = FlopCounterMode(display=False) if i == 0 else None
        started = time.perf_counter()
        with counter or contextlib.nullcontext(), \
                torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs)[0].float().square().mean()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if counter is not None:
            flops = counter.get_total_flops()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    row = {"s_per_step": statistics.median(times), "flops": flops}
    if cuda:
        row.update(peak_alloc_gb=torch.cuda.max_memory_allocated() / 2**30,
                   peak_reserved_gb=torch.cuda.max_memory_reserved() / 2**30)
    del optimizer
    return row


def planned_gb(overrides: List[str], side: int) -> float:
    """The planner's training-time GPU estimate of the denoiser's share (weights, adapter, optimizer, activations)."""
    from simpletuner_pl.config import compose, to_typed
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.planner.budget import Facts, assemble

    cfg = to_typed(compose(overrides))
    spec = family(cfg.model.family)
    est = assemble(cfg, Facts(cfg, spec), gpu=True, side=side)
    parts = est.parts
    keys = [k for k in parts if k.startswith(f"{spec.denoiser_name} weights")]
    keys += ["adapter weights+grads", "optimizer states", "activations"]
    return sum(parts[k] for k in keys) / 2**30


def flux_case(precision: str, dry_run: bool, steps: int, warmup: int) -> List[dict]:
    """Every (resolution, checkpointing) of one quantisation level; TREAD at the largest size for bf16."""
    from simpletuner_pl.config.registries import PRECISIONS
    from simpletuner_pl.config.schema import TreadRoute
    from simpletuner_pl.memory.checkpointing import enable_gradient_checkpointing
    from simpletuner_pl.memory.tread import TokenRouter, resolve_routes
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.quantization import quantize_model

    device, dtype = device_and_dtype(dry_run)
    model = flux_transformer(dry_run, device, dtype)
    if precision != "no_change":
        quantize_model(model, precision, family("flux").keep_high_precision, device)
    model = with_lora(model, "flux").train()
    model.set_attention_backend("native")
    sizes = TINY_SIZES if dry_run else FLUX_SIZES
    base = ["model=tiny_flux" if dry_run else "model=flux_dev", f"quant={PRECISIONS[precision].group}",
            "adapter.rank=16", "adapter.target=all", "optimizer=adamw", "train.batch_size=1"]
    rows = []
    variants = [(side, ckpt, False) for side in sizes for ckpt in (False, True)]
    if precision == "no_change":
        variants.append((sizes[-1], True, True))
    for side, ckpt, tread in variants:
        if ckpt:
            enable_gradient_checkpointing(model)
        else:
            model.disable_gradient_checkpointing()
        lists = ("transformer_blocks", "single_transformer_blocks")
        depth = sum(len(getattr(model, n)) for n in lists)
        route = TreadRoute(0.5, 0, -1) if dry_run else TreadRoute(0.5, 2, -2)  # the tiny model has 2 blocks
        router = TokenRouter(model, lists, resolve_routes([route], depth)) if tread else None
        row = {"case": "flux", "precision": precision, "px": side, "checkpointing": ckpt, "tread": tread}
        try:
            row.update(measure(model, flux_inputs(model, side, dry_run, device, dtype), steps, warmup, device, dtype))
            overrides = base + [f"train.gradient_checkpointing={str(ckpt).lower()}"] + (
                ["tread=default"] if tread and not dry_run else [])
            row["planned_gb"] = planned_gb(overrides, side)
        except torch.cuda.OutOfMemoryError as err:
            row["error"] = f"OOM: {str(err).splitlines()[0][:120]}"
        finally:
            if router is not None:
                router.remove()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def sdxl_case(precision: str, dry_run: bool, steps: int, warmup: int) -> List[dict]:
    """The SDXL UNet (published geometry; tiny when dry) with a rank-16 LoRA at 1024 px (128² latents)."""
    from diffusers import UNet2DConditionModel

    from simpletuner_pl.models.tiny_sdxl import TINY_SDXL_UNET
    from simpletuner_pl.quantization import quantize_model

    device, dtype = device_and_dtype(dry_run)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_SDXL_UNET if dry_run else SDXL_DIMS)).to(dtype).requires_grad_(False)
    if precision != "no_change":
        quantize_model(unet, precision, (), device)
    unet = with_lora(unet, "sdxl").train()
    config, latent = unet.config, 16 if dry_run else 128
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    inputs = dict(sample=torch.randn(1, 4, latent, latent, device=device, dtype=dtype),
                  timestep=torch.tensor([500], device=device),
                  encoder_hidden_states=torch.randn(1, 77, config.cross_attention_dim, device=device, dtype=dtype),
                  added_cond_kwargs={"text_embeds": torch.randn(1, pooled, device=device, dtype=dtype),
                                     "time_ids": torch.randn(1, 6, device=device, dtype=dtype)},
                  return_dict=False)
    row = {"case": "sdxl", "precision": precision, "px": latent * 8, "checkpointing": False, "tread": False}
    try:
        row.update(measure(unet, inputs, steps, warmup, device, dtype))
    except torch.cuda.OutOfMemoryError as err:
        row["error"] = f"OOM: {str(err).splitlines()[0][:120]}"
    return [row]
