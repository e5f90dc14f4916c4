"""Assemble the memory estimate of a run from measured facts about its model (`Facts`, computed once).

`Facts` holds what is expensive to get (meta components, weight bytes per precision, LoRA size, activation profiles
per resolution); `assemble` is plain arithmetic over a config, so the planner can price hundreds of variants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from simpletuner_pl.config.registries import DTYPE_BYTES, OPTIMIZERS, PRECISIONS
from simpletuner_pl.config.schema import RunConfig
from simpletuner_pl.memory.checkpointing import selected_blocks
from simpletuner_pl.models.family import FamilySpec, resolve
from simpletuner_pl.planner.activations import ActivationProfile, profile_activations
from simpletuner_pl.planner.estimate import CUDA_OVERHEAD, PROCESS_BASELINE, Estimate, lora_parameters, weight_bytes


@dataclass
class Facts:
    cfg: RunConfig
    spec: FamilySpec
    components: Dict[str, torch.nn.Module] = field(default_factory=dict)  # given: a custom architecture
    weights: Dict[tuple, int] = field(default_factory=dict)
    profiles: Dict[tuple, ActivationProfile] = field(default_factory=dict)
    lora: int = 0

    def __post_init__(self):
        self.components = self.components or resolve(f"{self.spec.planner}:meta_components")(self.cfg.model)
        denoiser = self.denoiser
        self.block_names = selected_blocks(denoiser)
        self.block_bytes = max(weight_bytes(denoiser.get_submodule(b), "no_change", 2) for b in self.block_names)
        if self.cfg.adapter.type == "full":
            self.lora = sum(p.numel() for p in denoiser.parameters())
        else:
            self.lora = lora_parameters(denoiser, self.cfg.adapter, self.spec.targets)

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.components[self.spec.denoiser_name]

    def weight(self, name: str, precision: str, dtype_bytes: int) -> int:
        key = (name, precision, dtype_bytes)
        if key not in self.weights:
            keep = self.spec.keep_high_precision if name == self.spec.denoiser_name else ()
            self.weights[key] = weight_bytes(self.components[name], precision, dtype_bytes, keep)
        return self.weights[key]

    def profile(self, side: int, batch: int, dtype: torch.dtype, cast_copies: bool,
                inputs_saved: bool) -> ActivationProfile:
        key = (side, batch, dtype, cast_copies, inputs_saved)
        if key not in self.profiles:
            inputs = resolve(f"{self.spec.planner}:profile_inputs")(self.denoiser, side, batch, self.cfg.model,
                                                                    dtype)
            self.profiles[key] = denoiser_profile(self.denoiser, self.block_names, inputs, dtype,
                                                  self.spec.keep_high_precision, cast_copies, inputs_saved)
        return self.profiles[key]


def denoiser_profile(denoiser, blocks, inputs: dict, dtype: torch.dtype, keep=(), cast_copies: bool = False,
                     inputs_saved: bool = False) -> ActivationProfile:
    """Meta forward on `inputs`, emulating two effects measured with real tensors on CPU (bench_memory.py):
    `cast_copies` — fp32 adapter weights under bf16 autocast: each LoRA layer saves its own bf16 cast of its
    input (+15%); `inputs_saved` — optimum-quanto's linear function saves its input whenever that input needs a
    gradient, even for a frozen weight (+18%)."""
    denoiser.to(dtype).train()
    hooks = [m.register_forward_pre_hook(lambda module, args: (args[0].clone(), *args[1:]))
             for n, m in denoiser.named_modules() if cast_copies and n.endswith("lora_A.default")]
    anchor = torch.zeros((), device="meta", dtype=dtype, requires_grad=True)

    def save_input(module, args, output):  # x * anchor saves x itself (same storage) for anchor's gradient
        return output + (args[0] * anchor).sum() * 0 if args[0].requires_grad else output

    hooks += [m.register_forward_hook(save_input) for n, m in denoiser.named_modules()
              if inputs_saved and type(m) is torch.nn.Linear and ".lora_" not in n and n.split(".")[0] not in keep]
    try:
        return profile_activations(denoiser, blocks, **inputs)
    finally:
        for hook in hooks:
            hook.remove()


def assemble(cfg: RunConfig, facts: Facts, gpu: bool = True, side: Optional[int] = None) -> Estimate:
    """Bytes per component and the peaks, for `cfg` (which may differ from `facts.cfg` in the priced options)."""
    quant, train, offload, opt = cfg.quant, cfg.train, cfg.offload, cfg.optimizer
    db = DTYPE_BYTES[quant.base_model_default_dtype]
    side = side or cfg.data.largest_edge()
    est = Estimate()
    parts = est.parts
    name = facts.spec.denoiser_name
    full = cfg.adapter.type == "full"  # the trained copy (fp32) is the denoiser: counted as adapter weights
    parts[f"{name} weights"] = 0 if full else facts.weight(name, quant.base_model_precision, db)
    for encoder, precision in quant.encoder_precisions().items():
        parts[f"{encoder} weights"] = facts.weight(encoder, precision, db)
    parts["vae weights"] = facts.weight("vae", "no_change", db)
    trained_bytes = 2 if OPTIMIZERS[opt.name].bf16_weights else 4
    parts["adapter weights+grads"] = facts.lora * trained_bytes * 2
    parts["optimizer states"] = facts.lora * OPTIMIZERS[opt.name].state_bytes
    compute = torch.float32 if train.mixed_precision == "no" and db == 4 else torch.bfloat16
    cast_copies = compute == torch.bfloat16 and trained_bytes == 4 and train.mixed_precision == "bf16"
    quanto = PRECISIONS[quant.base_model_precision].backend == "quanto"
    profile = facts.profile(side, train.batch_size, compute, cast_copies, quanto)
    ckpt = selected_blocks(facts.denoiser, train.gradient_checkpointing_interval) if train.gradient_checkpointing \
        else []
    parts["activations"] = profile.kept_bytes(ckpt)
    tiles = min(side, 512) if offload.vae_enable_tiling else side
    parts["vae encode (approx.)"] = 4 * 128 * tiles * tiles * db * cfg.data.vae_batch_size
    encoders = [v for k, v in parts.items() if k.startswith(("text_encoder", "vae weights"))]

    denoiser_gpu = parts[f"{name} weights"]
    if offload.grouped:  # the running and the next group of blocks
        denoiser_gpu = denoiser_gpu * min(1.0, 2 * offload.blocks_per_group / len(facts.block_names))
    held_at_startup = 0 if (offload.offload_during_startup or offload.grouped) else denoiser_gpu
    on_gpu_encoders = max(encoders) if offload.model_cpu_offload else sum(encoders)
    overhead = CUDA_OVERHEAD if gpu else 0
    est.gpu_startup = held_at_startup + on_gpu_encoders + parts["vae encode (approx.)"] + overhead
    est.gpu_training = denoiser_gpu + parts["adapter weights+grads"] + parts["optimizer states"] + \
        parts["activations"] + overhead
    if gpu:
        # Quantised: streamed one float block at a time, to the GPU (accelerator) or kept in RAM until the move
        # (cpu); unquantised: one bf16 copy. Measured: bench_memory.py --loading, experiments/RESULTS.md.
        block = facts.block_bytes * db // 2
        streamed = quant.base_model_precision != "no_change"
        loading = (block if quant.quantize_via == "accelerator" else parts[f"{name} weights"] + block) \
            if streamed else parts[f"{name} weights"]
        resident = parts[f"{name} weights"] * (2 if offload.use_stream else 1) if offload.grouped else 0
        est.ram = PROCESS_BASELINE + max(loading, resident) + sum(encoders)
    else:
        est.ram = PROCESS_BASELINE + sum(encoders) + est.gpu_training
    if train.gradient_checkpointing and full:
        est.notes.append("full fine-tune: optimizer states for every weight")
    return est
