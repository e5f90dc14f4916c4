"""Peak memory and s/step of rank-16 LoRA training on the FLUX.1-dev transformer, per quantisation level.

The transformer is built from its published config with random weights (no download), materialised and quantised
block by block on the device, given a rank-16 LoRA on the `all` targets, gradient checkpointing and AdamW, and
trained for a few steps at batch 1 on random latents and 512 T5 tokens. Each configuration runs in its own process so
its peak is its own: `torch.cuda.max_memory_allocated` on a GPU, peak RSS minus the post-import RSS on the CPU. The
memory planner's estimate for the same configuration is printed beside it, with the relative error.

On a CPU-only machine the full model (12B parameters) cannot train, so `--scale small` (the default there) or
`medium` use the same architecture narrowed and shortened; use them to check the script and the planner (their
s/step on a shared CPU says nothing about a GPU). On the CPU the bench also records the bytes autograd really saves
for the backward pass, to check the planner's meta-device activation profile separately from allocator effects.

    python experiments/bench_memory.py                       # GPU: full size, all levels, 512 and 1024 px
    python experiments/bench_memory.py --scale small --levels none int8 --resolutions 256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simpletuner_pl.models.flux_spec import FLUX  # noqa: E402  (torch-free)

KEEP = FLUX.keep_high_precision

FLUX1_DEV = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                 joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
SMALL = dict(FLUX1_DEV, num_layers=2, num_single_layers=4, num_attention_heads=4, joint_attention_dim=512)
MEDIUM = dict(FLUX1_DEV, num_layers=2, num_single_layers=4, num_attention_heads=12, joint_attention_dim=1536)
SCALES = {"full": FLUX1_DEV, "medium": MEDIUM, "small": SMALL}
LEVELS = {"none": "no_change", "int8": "int8-quanto", "int4": "int4-quanto", "int2": "int2-quanto",
          "fp8": "fp8-quanto", "nf4": "nf4-bnb", "nf4_torchao": "nf4-torchao"}
GB = 1024**3


def build(config: dict, precision: str, device, dtype):
    """Random-init transformer, materialised and quantised one block at a time (peak: quantised model + 1 block)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from simpletuner_pl.quantization import flag_4bit
    from simpletuner_pl.quantization.backends import converter
    from simpletuner_pl.quantization.streaming import convert_tree, iter_units

    with init_empty_weights(include_buffers=False):
        model = FluxTransformer2DModel(**config)
    convert = converter(precision) if precision != "no_change" else None
    for name, unit in iter_units(model):
        unit.to_empty(device=device)
        with torch.no_grad():
            for pname, p in unit.named_parameters():
                p.data = (p.data.normal_(0, 0.02) if p.dim() > 1 else
                          p.data.fill_(1.0 if pname.endswith("weight") else 0.0)).to(dtype)
        if convert and name.split(".")[0] not in KEEP:
            convert_tree(model, name, convert)
    if precision != "no_change":
        flag_4bit(model, precision)
    return model.requires_grad_(False)


def inputs_for(config: dict, side: int, text_tokens: int, device) -> dict:
    import torch

    tokens, bf16 = (side // 16) ** 2, dict(device=device, dtype=torch.bfloat16)
    return dict(hidden_states=torch.randn(1, tokens, 64, **bf16),
                encoder_hidden_states=torch.randn(1, text_tokens, config["joint_attention_dim"], **bf16),
                pooled_projections=torch.randn(1, 768, **bf16), timestep=torch.rand(1, device=device),
                guidance=torch.ones(1, device=device), txt_ids=torch.zeros(text_tokens, 3, device=device),
                img_ids=torch.zeros(tokens, 3, device=device), return_dict=False)


def saved_activations(model, inputs: dict, checkpointing: bool) -> int:
    """Bytes autograd keeps for the backward pass, with real tensors (same accounting as the planner's meta run)."""
    import torch

    from simpletuner_pl.memory.checkpointing import selected_blocks
    from simpletuner_pl.planner.activations import profile_activations

    blocks = selected_blocks(model)
    with torch.autocast(inputs["hidden_states"].device.type, dtype=torch.bfloat16):
        profile = profile_activations(model, blocks, **inputs)
    return profile.kept_bytes(blocks if checkpointing else [])


def planner(config: dict, precision: str, side: int, text_tokens: int, checkpointing: bool) -> dict:
    """The memory planner's training-time parts for this exact architecture (no CUDA context overhead)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from simpletuner_pl.config import compose, to_typed
    from simpletuner_pl.models.flux_planner import meta_components
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.planner.budget import Facts, assemble

    cfg = to_typed(compose(["model=flux", f"quant.base_model_precision={precision}", "adapter.rank=16",
                                       "adapter.target=all", "adapter.dropout=0", "optimizer=adamw",
                                       f"train.gradient_checkpointing={str(checkpointing).lower()}",
                                       f"model.t5_max_length={text_tokens}"]))
    components = meta_components(cfg.model)
    with torch.device("meta"):
        components["transformer"] = FluxTransformer2DModel(**config)
    est = assemble(cfg, Facts(cfg, family("flux"), components=components), side=side)
    keys = ("transformer weights", "adapter weights+grads", "optimizer states", "activations")
    return {k: est.parts[k] for k in keys}


def one(level: str, side: int, steps: int, scale: str, text_tokens: int, checkpointing: bool, compile_: bool):
    import psutil
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from simpletuner_pl.config.registries import FLUX_TARGETS
    from simpletuner_pl.memory.checkpointing import enable_gradient_checkpointing
    from simpletuner_pl.memory.compile import compile_blocks

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = SCALES[scale]
    plan = planner(config, LEVELS[level], side, text_tokens, checkpointing)  # first: its imports join the baseline
    import bitsandbytes  # noqa: F401  (so do the backends')

    baseline = psutil.Process().memory_info().rss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build(config, LEVELS[level], device, torch.bfloat16)
    model.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(FLUX_TARGETS.presets["all"]),
                                 init_lora_weights="gaussian"))
    cast_training_params(model, dtype=torch.float32)
    model.train()
    if checkpointing:
        enable_gradient_checkpointing(model)
    if compile_:
        compile_blocks(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    inputs = inputs_for(config, side, text_tokens, device)
    target = torch.randn_like(inputs["hidden_states"])
    times = []
    for _ in range(steps + 1):  # the first step (allocator warm-up, compilation) is not timed
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(model(**inputs)[0].float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    saved = None
    if not cuda:  # after the peak is read: real saved-tensor bytes, to check the planner's meta-device profile
        model.disable_gradient_checkpointing()  # (checkpointing hides a block's tensors from the hooks; on a GPU
        saved = saved_activations(model, inputs, checkpointing)  # this would hold every block's at once)
    return dict(level=level, px=side, device=torch.cuda.get_device_name() if cuda else "cpu", scale=scale,
                checkpointing=checkpointing, compile=compile_, peak_gb=peak / GB,
                reserved_gb=torch.cuda.max_memory_reserved() / GB if cuda else None,
                s_per_step=statistics.median(times[1:]), loss=float(loss),
                saved_activations_gb=None if saved is None else saved / GB,
                plan_gb=sum(plan.values()) / GB, plan={k: v / GB for k, v in plan.items()})


LOADERS = ("from_pretrained", "from_pretrained+quantize", "stream", "stream+fill-cache", "stream+cache")


def loading(mode: str, folder: str, level: str, cache_dir: str) -> dict:
    """Peak RSS of getting a quantised transformer from a diffusers folder into memory, one way or another."""
    import bitsandbytes  # noqa: F401
    import psutil
    import torch
    from diffusers import FluxTransformer2DModel

    import simpletuner_pl.quantization as quantization
    from simpletuner_pl.quantization import quantize_model
    from simpletuner_pl.quantization.backends import converter
    from simpletuner_pl.quantization.cache import UnitCache, cache_key
    from simpletuner_pl.quantization.streaming import stream_load, weight_index

    baseline, precision, cpu = psutil.Process().memory_info().rss, LEVELS[level], torch.device("cpu")
    start = time.perf_counter()
    if mode.startswith("from_pretrained"):
        model = FluxTransformer2DModel.from_pretrained(folder, dtype=torch.bfloat16)
        if mode.endswith("quantize"):
            quantize_model(model, precision, KEEP)
        else:  # diffusers maps the file lazily: read every weight once, as the first training step will
            torch.stack([p.detach().float().sum() for p in model.parameters()]).sum()
    elif mode == "stream":
        model = stream_load(FluxTransformer2DModel, Path(folder), torch.bfloat16, converter(precision), KEEP, cpu)
    else:  # "stream+fill-cache" quantises and writes the cache, then "stream+cache" (a new process) reads it
        model = quantization._stream(FluxTransformer2DModel, Path(folder), torch.bfloat16, precision, KEEP, cpu,
                                     cache_dir)
        assert UnitCache(cache_dir, cache_key(list(weight_index(Path(folder)).values()), precision, torch.bfloat16,
                                              KEEP), precision).complete
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    from simpletuner_pl.planner.estimate import weight_bytes

    with torch.device("meta"):
        meta = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder))
    return dict(mode=mode, level=level, peak_gb=peak / GB, seconds=seconds,
                quantised_gb=weight_bytes(meta, precision if "quantize" in mode or "stream" in mode else "no_change",
                                          2, KEEP) / GB, bf16_gb=weight_bytes(meta, "no_change", 2) / GB,
                layers=sum(1 for _ in model.modules()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--scale", choices=list(SCALES), default=None)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also run each level with compiled blocks")
    parser.add_argument("--json", type=Path, help="append one JSON line per configuration here")
    parser.add_argument("--loading", type=Path, help="instead: peak RAM of each way of loading this folder's "
                        "transformer (a diffusers transformer folder) at the first of --levels")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--load-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.load_one:
        result = one(**json.loads(args.one)) if args.one else loading(**json.loads(args.load_one))
        print("RESULT " + json.dumps(result))
        return
    if args.loading:
        return compare_loading(args.loading, args.levels[0])
    import torch

    scale = args.scale or ("full" if torch.cuda.is_available() else "small")
    resolutions = args.resolutions or ([512, 1024] if scale == "full" else [256])
    rows = []
    for level in args.levels:
        for side in resolutions:
            for compile_ in ([False, True] if args.compile and level != "nf4" else [False]):
                spec = dict(level=level, side=side, steps=args.steps, scale=scale, text_tokens=args.text_tokens,
                            checkpointing=not args.no_checkpointing, compile_=compile_)
                result = child("--one", spec)
                if result is None:
                    continue
                rows.append(result)
                if args.json:
                    with args.json.open("a") as handle:
                        handle.write(json.dumps(rows[-1]) + "\n")
    print(f"{'level':<12}{'px':>6}{'compile':>8}{'peak GB':>9}{'plan GB':>9}{'error':>7}{'act GB':>8}"
          f"{'plan act':>9}{'error':>7}{'s/step':>8}  device")
    for r in rows:
        act, plan_act = r["saved_activations_gb"], r["plan"]["activations"]
        act_cols = (f"{act:>8.3f}{plan_act:>9.3f}{(plan_act - act) / act:>+7.0%}" if act
                    else f"{'-':>8}{plan_act:>9.3f}{'':>7}")
        print(f"{r['level']:<12}{r['px']:>6}{str(r['compile']):>8}{r['peak_gb']:>9.3f}{r['plan_gb']:>9.3f}"
              f"{(r['plan_gb'] - r['peak_gb']) / r['peak_gb']:>+7.0%}{act_cols}{r['s_per_step']:>8.2f}"
              f"  {r['device']} ({r['scale']})")


def child(flag: str, spec: dict) -> dict | None:
    # Fixed mmap threshold: glibc then returns every freed tensor >= 128 KiB to the OS at once, so peak RSS is
    # peak live memory instead of whatever the heap held on to.
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)], env=env, capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        print(f"{spec} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[0][7:])


def compare_loading(folder: Path, level: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as cache_dir:
        rows = [child("--load-one", dict(mode=m, folder=str(folder), level=level, cache_dir=cache_dir))
                for m in LOADERS]
    print(f"{'loader':<26}{'level':<8}{'peak RAM GB':>12}{'model GB':>10}{'bf16 GB':>9}{'seconds':>9}")
    for r in filter(None, rows):
        print(f"{r['mode']:<26}{r['level']:<8}{r['peak_gb']:>12.2f}{r['quantised_gb']:>10.2f}{r['bf16_gb']:>9.2f}"
              f"{r['seconds']:>9.1f}")


if __name__ == "__main__":
    main()
