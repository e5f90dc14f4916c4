"""Assemble the memory estimate of a run from measured facts about its model (`Facts`, computed once).

`Facts` holds what is expensive to get (meta components, weight bytes per precision, LoRA size, activation profiles
per resolution); `assemble` is plain arithmetic over a config, so the planner can price hundreds of variants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from simpletuner_pl.memory.activations import ActivationProfile, profile_activations
from simpletuner_pl.memory.estimate import (CUDA_OVERHEAD, PROCESS_BASELINE, STATE_BYTES, Estimate, lora_parameters,
                                            meta_components, weight_bytes)

QUANTO = ("int8-quanto", "int4-quanto", "int2-quanto", "fp8-quanto")
ENCODERS = {"text_encoder": "text_encoder_1_precision", "text_encoder_2": "text_encoder_2_precision"}


def run_resolution(cfg) -> int:
    """Edge of the largest square training image, in pixels, over the enabled datasets."""
    sides = []
    for ds in cfg.data.training().values():
        r = ds.resolution
        side = math.sqrt(r * 1e6) if ds.resolution_type == "area" else r
        sides.append(int(ds.maximum_image_size or side) if ds.resolution_type == "pixel" else int(side))
    return max(sides) if sides else 1024


@dataclass
class Facts:
    cfg: object
    components: Dict[str, torch.nn.Module] = field(default_factory=dict)
    weights: Dict[tuple, int] = field(default_factory=dict)
    profiles: Dict[tuple, ActivationProfile] = field(default_factory=dict)
    lora: int = 0

    def __post_init__(self):
        from simpletuner_pl.callbacks.checkpointing_interval import selected_blocks

        self.components = self.components or meta_components(self.cfg.model)  # given: a custom architecture
        transformer = self.components["transformer"]
        self.block_names = selected_blocks(transformer, 1)
        self.block_bytes = max(weight_bytes(transformer.get_submodule(b), "no_change", 2) for b in self.block_names)
        if self.cfg.adapter.type == "full":
            self.lora = sum(p.numel() for p in transformer.parameters())
        else:
            self.lora = lora_parameters(transformer, self.cfg.adapter, self.cfg.model.family)

    def weight(self, name: str, precision: str, dtype_bytes: int) -> int:
        from simpletuner_pl.quantization import KEEP

        key = (name, precision, dtype_bytes)
        if key not in self.weights:
            model = self.components[name]
            keep = KEEP["flux"] if name == "transformer" else ()
            self.weights[key] = weight_bytes(model, precision, dtype_bytes, keep)
        return self.weights[key]

    def profile(self, side: int, batch: int, dtype: torch.dtype, cast_copies: bool,
                inputs_saved: bool) -> ActivationProfile:
        key = (side, batch, dtype, cast_copies, inputs_saved)
        if key not in self.profiles:
            self.profiles[key] = flux_profile(self.components["transformer"], self.block_names, side, batch, dtype,
                                              self.cfg.model.t5_max_length, cast_copies, inputs_saved)
        return self.profiles[key]


def flux_profile(transformer, blocks, side: int, batch: int, dtype: torch.dtype, text_tokens: int,
                 cast_copies: bool = False, inputs_saved: bool = False):
    """Meta forward at `side` px, emulating two effects measured with real tensors on CPU (bench_memory.py):
    `cast_copies` — fp32 adapter weights under bf16 autocast: each LoRA layer saves its own bf16 cast of its
    input (+15%); `inputs_saved` — optimum-quanto's linear function saves its input whenever that input needs a
    gradient, even for a frozen weight (+18%)."""
    from simpletuner_pl.quantization import KEEP

    config = transformer.config
    tokens = (side // 16) ** 2
    meta = dict(device="meta", dtype=dtype)
    transformer.to(dtype).train()
    hooks = [m.register_forward_pre_hook(lambda module, args: (args[0].clone(), *args[1:]))
             for n, m in transformer.named_modules() if cast_copies and n.endswith("lora_A.default")]
    anchor = torch.zeros((), device="meta", dtype=dtype, requires_grad=True)

    def save_input(module, args, output):  # x * anchor saves x itself (same storage) for anchor's gradient
        return output + (args[0] * anchor).sum() * 0 if args[0].requires_grad else output

    hooks += [m.register_forward_hook(save_input) for n, m in transformer.named_modules()
              if inputs_saved and type(m) is torch.nn.Linear and ".lora_" not in n
              and n.split(".")[0] not in KEEP["flux"]]
    inputs = dict(hidden_states=torch.empty(batch, tokens, config.in_channels, **meta),
                  encoder_hidden_states=torch.empty(batch, text_tokens, config.joint_attention_dim, **meta),
                  pooled_projections=torch.empty(batch, config.pooled_projection_dim, **meta),
                  timestep=torch.empty(batch, **meta), txt_ids=torch.empty(text_tokens, 3, **meta),
                  img_ids=torch.empty(tokens, 3, **meta), return_dict=False)
    if config.guidance_embeds:
        inputs["guidance"] = torch.empty(batch, device="meta", dtype=torch.float32)
    try:
        return profile_activations(transformer, blocks, **inputs)
    finally:
        for hook in hooks:
            hook.remove()


def assemble(cfg, facts: Facts, gpu: bool = True, side: Optional[int] = None) -> Estimate:
    """Bytes per component and the peaks, for `cfg` (which may differ from `facts.cfg` in the priced options)."""
    from simpletuner_pl.callbacks.checkpointing_interval import selected_blocks
    from simpletuner_pl.optimizers import BF16_WEIGHTS

    quant, train, offload, opt = cfg.quant, cfg.train, cfg.offload, cfg.optimizer
    db = 4 if quant.base_model_default_dtype == "fp32" else 2
    side = side or run_resolution(cfg)
    est = Estimate()
    parts = est.parts
    full = cfg.adapter.type == "full"  # the trained copy (fp32) is the transformer: counted as adapter weights
    parts["transformer weights"] = 0 if full else facts.weight("transformer", quant.base_model_precision, db)
    for name, key in ENCODERS.items():
        parts[f"{name} weights"] = facts.weight(name, getattr(quant, key), db)
    parts["vae weights"] = facts.weight("vae", "no_change", db)
    trained_bytes = 2 if opt.name in BF16_WEIGHTS else 4
    parts["adapter weights+grads"] = facts.lora * trained_bytes * 2
    parts["optimizer states"] = facts.lora * STATE_BYTES[opt.name]
    compute = torch.float32 if train.mixed_precision == "no" and db == 4 else torch.bfloat16
    cast_copies = compute == torch.bfloat16 and trained_bytes == 4 and train.mixed_precision == "bf16"
    profile = facts.profile(side, train.batch_size, compute, cast_copies, quant.base_model_precision in QUANTO)
    ckpt = selected_blocks(facts.components["transformer"], train.gradient_checkpointing_interval or 1) \
        if train.gradient_checkpointing else []
    parts["activations"] = profile.kept_bytes(ckpt)
    tiles = min(side, 512) if offload.vae_enable_tiling else side
    parts["vae encode (approx.)"] = 4 * 128 * tiles * tiles * db * cfg.data.vae_batch_size
    encoders = [parts["text_encoder weights"], parts["text_encoder_2 weights"], parts["vae weights"]]

    transformer_gpu = parts["transformer weights"]
    grouped = offload.group_offload_type != "none"
    if grouped:  # the running and the next group of blocks
        transformer_gpu = transformer_gpu * min(1.0, 2 * offload.blocks_per_group / len(facts.block_names))
    held_at_startup = 0 if (offload.offload_during_startup or grouped) else transformer_gpu
    on_gpu_encoders = max(encoders) if offload.model_cpu_offload else sum(encoders)
    overhead = CUDA_OVERHEAD if gpu else 0
    est.gpu_startup = held_at_startup + on_gpu_encoders + parts["vae encode (approx.)"] + overhead
    est.gpu_training = transformer_gpu + parts["adapter weights+grads"] + parts["optimizer states"] + \
        parts["activations"] + overhead
    if gpu:
        # Quantised: streamed one float block at a time, to the GPU (accelerator) or kept in RAM until the move
        # (cpu); unquantised: one bf16 copy. Measured: bench_memory.py --loading, experiments/RESULTS.md.
        block = facts.block_bytes * db // 2
        streamed = quant.base_model_precision != "no_change"
        loading = (block if quant.quantize_via == "accelerator" else parts["transformer weights"] + block) \
            if streamed else parts["transformer weights"]
        resident = parts["transformer weights"] * (2 if offload.use_stream else 1) if grouped else 0
        est.ram = PROCESS_BASELINE + max(loading, resident) + sum(encoders)
    else:
        est.ram = PROCESS_BASELINE + sum(encoders) + est.gpu_training
    if train.gradient_checkpointing and cfg.adapter.type == "full":
        est.notes.append("full fine-tune: optimizer states for every weight")
    return est
