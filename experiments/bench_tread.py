"""TREAD speed: median s/step (forward + backward + AdamW step, LoRA rank 16 on `all`) with and without routing.

    python experiments/bench_tread.py                      # deeper tiny Flux on the CPU, 256/512/1024 px
    python experiments/bench_tread.py --full-size --device cuda --dtype bf16   # FLUX.1-dev's architecture (GPU)

The transformer is random-init from a config (no download): on CPU a "deeper tiny" Flux (2 double + 6 single
blocks, width 256) so that block compute dominates as it does at full size; with `--full-size` the published
FLUX.1 geometry (19 + 38 blocks, width 3072). Inputs are random tensors of the right shapes (T5 length 512 at full
size, 64 otherwise). Routes are `simpletuner_pl.memory.tread`'s; the default is SimpleTuner's balanced
`{selection_ratio: 0.5, start_layer_idx: 2, end_layer_idx: -2}`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

DEEPER_TINY = dict(in_channels=64, num_layers=2, num_single_layers=6, attention_head_dim=64, num_attention_heads=4,
                   joint_attention_dim=256, pooled_projection_dim=256, guidance_embeds=True, axes_dims_rope=(8, 28, 28))


def build(full_size: bool, routes, device, dtype):
    import torch
    from diffusers import FluxTransformer2DModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from simpletuner_pl.config.registries import FLUX_TARGETS
    from simpletuner_pl.memory.tread import TokenRouter, resolve_routes
    from simpletuner_pl.models.flux_planner import FLUX1

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**(FLUX1 if full_size else DEEPER_TINY)).to(device, dtype)
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(FLUX_TARGETS.presets["all"])))
    cast_training_params(transformer, dtype=torch.float32)  # fp32 adapter weights, as training keeps them
    lists = ("transformer_blocks", "single_transformer_blocks")
    depth = sum(len(getattr(transformer, name)) for name in lists)
    router = TokenRouter(transformer, lists, resolve_routes(routes, depth)) if routes else None
    return transformer.train(), router


def step_seconds(transformer, side: int, text: int, steps: int, warmup: int, device, dtype) -> float:
    import torch

    tokens, config = (side // 16) ** 2, transformer.config
    inputs = dict(hidden_states=torch.randn(1, tokens, config.in_channels, device=device, dtype=dtype),
                  encoder_hidden_states=torch.randn(1, text, config.joint_attention_dim, device=device, dtype=dtype),
                  pooled_projections=torch.randn(1, config.pooled_projection_dim, device=device, dtype=dtype),
                  timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
                  guidance=torch.ones(1, device=device), txt_ids=torch.zeros(text, 3, device=device),
                  img_ids=torch.zeros(tokens, 3, device=device), return_dict=False)
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = transformer(**inputs)[0].float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> dict:
    import torch

    from simpletuner_pl.config.schema import TreadRoute

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--start", type=int, default=2)
    parser.add_argument("--end", type=int, default=-2)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    text = 512 if args.full_size else 64
    route = [TreadRoute(args.ratio, args.start, args.end)]
    results = {}
    print(f"{'px':>5} {'tokens':>7} {'s/step plain':>13} {'s/step TREAD':>13} {'saved':>7}")
    for side in args.sizes:
        figures = []
        for routes in ([], route):
            transformer, router = build(args.full_size, routes, device, dtype)
            figures.append(step_seconds(transformer, side, text, args.steps, args.warmup, device, dtype))
            del transformer, router
        plain, routed = figures
        results[side] = dict(plain=plain, tread=routed, saved=1 - routed / plain)
        print(f"{side:>5} {(side // 16) ** 2:>7} {plain:>13.3f} {routed:>13.3f} {1 - routed / plain:>7.1%}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
