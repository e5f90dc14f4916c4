"""Closed sets of option values, each in one table with the facts the implementation needs about every entry.

Torch-free on purpose: config validation reads these before anything heavy is imported, and the implementation
modules (quantisation backends, optimizers, attention, LoRA targets, the planner) read the same tables instead of
keeping copies. Adding a precision, an optimizer or a preset is one row here plus its implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Precision:
    """`quant.*_precision` values. `group` is the `quant=<group>` option that selects it."""

    backend: str  # none | quanto | bnb | torchao
    bits: int
    group: str
    quanto_type: Optional[str] = None  # optimum.quanto attribute
    compiles: bool = True  # torch.compile of the blocks gives a speed-up (bnb graph-breaks on every layer)
    dora: bool = True  # PEFT can read the base weight for DoRA's norm
    convolutions: bool = True  # can quantise a UNet's Conv2d layers too


PRECISIONS: Dict[str, Precision] = {
    "no_change": Precision("none", 16, "none"),
    "int8-quanto": Precision("quanto", 8, "int8", "qint8"),
    "int4-quanto": Precision("quanto", 4, "int4", "qint4"),
    "int2-quanto": Precision("quanto", 2, "int2", "qint2"),
    "fp8-quanto": Precision("quanto", 8, "fp8", "qfloat8", convolutions=False),
    "nf4-bnb": Precision("bnb", 4, "nf4", compiles=False),
    "nf4-torchao": Precision("torchao", 4, "nf4_torchao", dora=False),
}


@dataclass(frozen=True)
class Optimizer:
    """`optimizer.name` values and how each treats the trained weights."""

    state_bytes: int  # optimizer state per trained weight (weights and gradients are counted apart)
    bf16_weights: bool = False  # trains bf16 weights in place
    self_clipping: bool = False  # bounds its own update size: train.max_grad_norm is not applied
    schedule_free: bool = False  # needs train()/eval() mode switches, a constant schedule and no warmup


OPTIMIZERS: Dict[str, Optimizer] = {
    "adamw": Optimizer(8),
    "adamw_bf16": Optimizer(6, bf16_weights=True),
    "optimi_lion": Optimizer(4),
    "optimi_stableadamw": Optimizer(8, self_clipping=True),
    "bnb_adamw8bit": Optimizer(2),
    "bnb_lion8bit_paged": Optimizer(1),
    "prodigy": Optimizer(12, self_clipping=True, schedule_free=True),
}


@dataclass(frozen=True)
class AttentionBackend:
    dispatcher: str  # diffusers' attention-dispatcher name
    trains: bool = True  # has a backward pass
    masks: bool = True  # takes an attention mask (model.attention_masked_training)


ATTENTION_BACKENDS: Dict[str, AttentionBackend] = {
    "sdpa": AttentionBackend("native"), "flash": AttentionBackend("flash", masks=False),
    "flash_varlen": AttentionBackend("flash_varlen"), "flex": AttentionBackend("flex"),
    "xformers": AttentionBackend("xformers"), "sage": AttentionBackend("sage", trains=False, masks=False),
    "native_flash": AttentionBackend("_native_flash", masks=False),
    "native_efficient": AttentionBackend("_native_efficient"),
    "native_cudnn": AttentionBackend("_native_cudnn"), "native_math": AttentionBackend("_native_math"),
}

MIXED_PRECISION: Dict[str, str] = {"bf16": "bf16-mixed", "fp16": "16-mixed", "no": "32-true"}  # → Lightning
DTYPES: Dict[str, str] = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}  # → torch.<name>
DTYPE_BYTES: Dict[str, int] = {"bf16": 2, "fp32": 4, "fp16": 2}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear", "polynomial")  # diffusers' get_scheduler
SIGMA_SAMPLING = ("logit_normal", "uniform", "beta", "fast")
LORA_INITS: Dict[str, object] = {"default": True, "gaussian": "gaussian", "olora": "olora", "pissa": "pissa",
                                 "loftq": "loftq"}  # → peft.LoraConfig(init_lora_weights=...)
REWRITES_BASE = ("pissa", "olora")  # inits that rewrite the base weights (exported as a rank-2r LoRA)


@dataclass(frozen=True)
class LoraTargets:
    """What `adapter.target` may be for a family: a preset name, or (free_form) comma-separated module names."""

    presets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    default: str = ""
    free_form: bool = False
    exact: Tuple[str, ...] = ()  # presets naming full module paths (the model must have them)

    def modules(self, value: Optional[str]) -> Tuple[str, ...]:
        value = value or self.default
        if value in self.presets:
            return tuple(self.presets[value])
        return tuple(t.strip() for t in value.split(",") if t.strip())


_FLUX_ALL = ("to_k", "to_q", "to_v", "to_qkv", "add_qkv_proj", "add_k_proj", "add_q_proj", "add_v_proj",
             "to_out.0", "to_add_out")
_FLUX_CONTEXT = ("add_k_proj", "add_q_proj", "add_v_proj", "add_qkv_proj", "to_add_out")
_FLUX_FFS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")

# SimpleTuner's Flux presets. PEFT matches a name against the end of each module path, so `to_q` hits double- and
# single-stream attention alike and `proj_out` also the final output projection, exactly as SimpleTuner's do.
FLUX_TARGETS = LoraTargets(
    presets={
        "mmdit": ("to_k", "to_q", "to_v", "to_out.0", "to_qkv"),
        "all": _FLUX_ALL,
        "all+ffs": _FLUX_ALL + _FLUX_FFS,
        "context": _FLUX_CONTEXT,
        "context+ffs": _FLUX_CONTEXT + ("ff_context.net.0.proj", "ff_context.net.2"),
        # TheLastBen's one/two-layer recipes name exact modules; they need a full-depth (38 single block) model.
        "tiny": ("single_transformer_blocks.7.proj_out", "single_transformer_blocks.20.proj_out"),
        "nano": ("single_transformer_blocks.7.proj_out",),
    },
    default="all",
    exact=("tiny", "nano"),
)
# SDXL: every self- (attn1) and cross-attention (attn2) projection of the UNet's transformer blocks (SimpleTuner's
# DEFAULT_LORA_TARGET); any comma-separated list of module names is allowed.
SDXL_TARGETS = LoraTargets(default="to_k,to_q,to_v,to_out.0", free_form=True)
