"""LyCORIS LoKr on the tiny Flux and SDXL denoisers: targets, gradients, on/off, exact save → load, quanto, keys."""

import json
import re

import pytest
import torch
from torch import nn

from simpletuner_pl.adapters.lokr import (
    CONFIG_KEY,
    LOKR_FILE,
    LokrSettings,
    attach_lokr,
    load_lokr_weights,
    lokr_disabled,
    lokr_state_dict,
    read_lokr,
    save_lokr,
    set_lokr_enabled,
)

KEEP = ("x_embedder", "context_embedder", "norm_out", "proj_out")
SUFFIXES = {"lokr_w1", "lokr_w2", "alpha"}  # full_matrix: both Kronecker factors whole, plus LyCORIS' alpha buffer


def flux(seed=0, dtype=torch.float32):
    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    return build_tiny_flux_components(seed)["transformer"].to(dtype)


def unet(seed=0):
    from simpletuner_pl.models.tiny_sdxl import build_tiny_sdxl_components

    return build_tiny_sdxl_components(seed)["unet"]


def run_flux(model, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 32,
                  generator=g), pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([3.5]))
    inputs = {k: v.to(dtype) for k, v in inputs.items()}
    return model(**inputs, img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3)).sample


def run_unet(model):
    g = torch.Generator().manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 8, 64, generator=g)
    added = {"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.randn(1, 6, generator=g)}
    return model(sample, torch.tensor([10]), encoder_hidden_states=text, added_cond_kwargs=added).sample


def linears_under(model, classes):
    """Module paths of the Linears inside every module of the given classes."""
    roots = [p for p, m in model.named_modules() if type(m).__name__ in classes]
    return {p for p, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(p.startswith(r + ".") for r in roots)}


def lycoris_name(path):
    return "lycoris_" + path.replace(".", "_")


def train_step(network, loss_fn, lr=1e-2):
    """One AdamW step on the LoKr factors (Adam's first step moves every parameter with a non-zero grad by ~lr)."""
    opt = torch.optim.AdamW(network.parameters(), lr=lr)
    loss_fn().pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attach_wraps_the_linears_of_attention_and_feedforward_and_only_lokr_trains(dtype):
    model = flux(dtype=dtype)
    network = attach_lokr(model, LokrSettings())
    wanted = linears_under(model, {"FluxAttention", "FeedForward"})  # "Attention" resolves to diffusers' Flux class
    assert len(wanted) == 15  # 8 double-block attention + 3 single-block attention + 2×2 feed-forward Linears
    assert {lora.lora_name for lora in network.loras} == {lycoris_name(p) for p in wanted}
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in network.parameters())
    state = lokr_state_dict(network)  # attention 32×32, factor 16: 2×2 ⊗ 16×16; ff 128×32, factor 8: 8×4 ⊗ 16×8
    assert state["lycoris_transformer_blocks_0_attn_to_q.lokr_w1"].shape == (2, 2)
    assert state["lycoris_transformer_blocks_0_attn_to_q.lokr_w2"].shape == (16, 16)
    assert state["lycoris_transformer_blocks_0_ff_net_0_proj.lokr_w1"].shape == (8, 4)
    assert torch.isfinite(run_flux(model, dtype)).all()


def test_every_factor_gets_a_gradient_once_w2_has_left_zero():
    model = flux()
    base = run_flux(model).detach()
    network = attach_lokr(model, LokrSettings())
    w1 = {n: p for n, p in network.named_parameters() if n.endswith("lokr_w1")}
    w2 = {n: p for n, p in network.named_parameters() if n.endswith("lokr_w2")}
    assert len(w1) == len(w2) == 15 and all(torch.count_nonzero(p) == 0 for p in w2.values())
    out = run_flux(model)
    assert torch.equal(out, base)  # ΔW = kron(w1, 0) = 0: the untrained adapter changes nothing
    out.pow(2).mean().backward()
    # dL/dw1 is linear in w2, so w1 gets exactly zero at init; every w2 gets a gradient through the kaiming w1.
    assert all(torch.count_nonzero(p.grad) == 0 for p in w1.values())
    assert all(p.grad.abs().sum() > 0 for p in w2.values())
    train_step(network, lambda: run_flux(model))
    run_flux(model).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


def test_a_step_changes_the_output_and_disabling_restores_the_base_exactly():
    model = flux()
    base = run_flux(model).detach()
    network = attach_lokr(model, LokrSettings())
    train_step(network, lambda: run_flux(model))
    with torch.no_grad():
        trained = run_flux(model)
        assert (trained - base).abs().max() > 1e-3
        set_lokr_enabled(network, False)
        assert torch.equal(run_flux(model), base)
        set_lokr_enabled(network, True)
        assert torch.equal(run_flux(model), trained)
        with lokr_disabled(network):
            assert torch.equal(run_flux(model), base)
        assert torch.equal(run_flux(model), trained)


def test_save_then_load_on_a_fresh_base_reproduces_weights_and_outputs_exactly(tmp_path):
    settings = LokrSettings(multiplier=0.75)
    model = flux()
    network = attach_lokr(model, settings)
    train_step(network, lambda: run_flux(model))
    with torch.no_grad():
        trained = run_flux(model)
    path = save_lokr(network, tmp_path / LOKR_FILE, settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOKR_FILE]  # the temporary was renamed into place
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()[CONFIG_KEY]) == settings.to_config()
    assert read_lokr(path)[1] == settings

    fresh = flux()  # the same seed: the same base weights
    loaded = load_lokr_weights(fresh, str(path))
    assert loaded.multiplier == 0.75 and len(loaded.loras) == 15
    before, after = lokr_state_dict(network), lokr_state_dict(loaded)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(run_flux(fresh), trained)
    resumed_model = flux()  # resuming a checkpoint: a new network of the same settings, its state loaded strictly
    resumed = attach_lokr(resumed_model, settings)
    resumed.load_state_dict(before)
    with torch.no_grad():
        assert torch.equal(run_flux(resumed_model), trained)
    with pytest.raises(ValueError, match="match no layer"):
        load_lokr_weights(unet(), path)


def test_loaded_factors_follow_the_device_of_the_inputs(tmp_path):
    """`pipe.to("cuda")` after loading moves the model, not the network: a pre-hook moves the factors (here to the
    meta device, standing in for a GPU)."""
    model = flux()
    path = save_lokr(attach_lokr(model, LokrSettings()), tmp_path / LOKR_FILE, LokrSettings())
    fresh = flux()
    network = load_lokr_weights(fresh, path)
    (hook,) = fresh._forward_pre_hooks.values()
    hook(fresh, (), {"hidden_states": torch.zeros(1, device="meta")})
    assert {p.device.type for p in network.parameters()} == {"meta"}


def test_int8_quanto_base_trains_through_bypass_and_round_trips(tmp_path):
    from optimum.quanto import QLinear

    from simpletuner_pl.quantization import quantize_model

    model = flux()
    assert quantize_model(model, "int8-quanto", keep=KEEP) > 0
    network = attach_lokr(model, LokrSettings())
    assert len(network.loras) == 15
    assert all(isinstance(lora.org_module[0], QLinear) and lora.bypass_mode for lora in network.loras)
    assert all(p.dtype == torch.float32 for p in network.parameters())
    train_step(network, lambda: run_flux(model))
    run_flux(model).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    # Frozen like the loaded copy: PyTorch's F.linear on the transposed activations of LyCORIS' bypass path takes
    # another (1-ulp different) route when the weight requires grad, even under no_grad.
    network.requires_grad_(False)
    with torch.no_grad():
        trained = run_flux(model)
    fresh = flux()
    quantize_model(fresh, "int8-quanto", keep=KEEP)
    load_lokr_weights(fresh, save_lokr(network, tmp_path / LOKR_FILE, LokrSettings()))
    with torch.no_grad():
        assert torch.equal(run_flux(fresh), trained)


def test_sdxl_unet_attention_only_trains_and_saves(tmp_path):
    model = unet()
    base = run_unet(model).detach()
    settings = LokrSettings(target_module=("Attention",), factor=12)  # SimpleTuner's SDXL example (no FeedForward)
    network = attach_lokr(model, settings)
    wanted = linears_under(model, {"Attention"})
    assert len(wanted) == 32  # 8 attention modules (attn1/attn2 of 4 blocks) × to_q/k/v/out.0
    # FeedForward keeps no LoKr although module_factors names it: factors only apply to targeted classes.
    assert {lora.lora_name for lora in network.loras} == {lycoris_name(p) for p in wanted}
    train_step(network, lambda: run_unet(model))
    with torch.no_grad():
        assert (run_unet(model) - base).abs().max() > 1e-4
    state, saved = read_lokr(save_lokr(network, tmp_path / LOKR_FILE, settings))
    assert saved == settings and state.keys() == lokr_state_dict(network).keys()


# What ComfyUI maps `lycoris_<key>` from (comfy/lora.py `model_lora_keys_unet`): for Flux the diffusers names of
# `comfy.utils.flux_to_diffusers` (per double block / single block, plus top-level layers), for SDXL those of
# `comfy.utils.unet_to_diffusers`, whose transformer blocks cover attn1/attn2 to_q/k/v/to_out.0 and ff.
COMFY_FLUX_DOUBLE = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
                     "attn.to_out.0", "attn.to_add_out", "norm1.linear", "norm1_context.linear", "ff.net.0.proj",
                     "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"}
COMFY_FLUX_SINGLE = {"attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"}
COMFY_SDXL = re.compile(r"lycoris_(down_blocks_\d+_attentions_\d+|mid_block_attentions_0|up_blocks_\d+_attentions_\d+)"
                        r"_transformer_blocks_\d+_(attn[12]_(to_q|to_k|to_v|to_out_0)|ff_net_0_proj|ff_net_2)")


def comfy_flux_names(model):
    names = {lycoris_name(f"transformer_blocks.{i}.{k}") for i in range(len(model.transformer_blocks))
             for k in COMFY_FLUX_DOUBLE}
    return names | {lycoris_name(f"single_transformer_blocks.{i}.{k}")
                    for i in range(len(model.single_transformer_blocks)) for k in COMFY_FLUX_SINGLE}


def test_saved_keys_are_the_lycoris_names_comfyui_maps_and_its_delta_is_ours(tmp_path):
    model = flux()
    network = attach_lokr(model, LokrSettings())
    train_step(network, lambda: run_flux(model))
    state, _ = read_lokr(save_lokr(network, tmp_path / LOKR_FILE, LokrSettings()))
    modules = {key.rsplit(".", 1)[0] for key in state}
    assert {key.rsplit(".", 1)[1] for key in state} == SUFFIXES
    assert modules <= comfy_flux_names(model) and len(modules) == 15
    for lora in network.loras:  # ComfyUI applies kron(w1, w2) (alpha unused without low-rank factors)
        w1, w2 = state[f"{lora.lora_name}.lokr_w1"], state[f"{lora.lora_name}.lokr_w2"]
        torch.testing.assert_close(torch.kron(w1, w2), lora.get_weight(lora.shape).detach(), rtol=0, atol=1e-7)

    sdxl = attach_lokr(unet(), LokrSettings(target_module=("Attention",)))
    assert all(COMFY_SDXL.fullmatch(key.rsplit(".", 1)[0]) for key in lokr_state_dict(sdxl))


def test_bypass_mode_keeps_more_of_a_tiny_delta_on_a_bf16_base():
    """Rebuilding rounds W + ΔW back to bf16 W (ΔW lost for good); bypass adds ΔW·x to the output instead."""
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(256, 256, generator=g) * 0.02, torch.randn(4096, 256, generator=g).bfloat16()
    recovered = {}
    for bypass in (False, True):
        layer = nn.Linear(256, 256, bias=False)
        layer.weight.data = weight.clone()
        model = nn.Sequential(layer.bfloat16())
        network = attach_lokr(model, LokrSettings(target_module=("Linear",), module_factors={}, bypass_mode=bypass))
        lora = network.loras[0]
        assert lora.bypass_mode is bypass
        with torch.no_grad():
            lora.lokr_w2.copy_(torch.randn(lora.lokr_w2.shape, generator=torch.Generator().manual_seed(1)) * 1e-4)
            wanted = x.float() @ lora.get_weight(lora.shape).T
            got = model(x).float() - nn.functional.linear(x, layer.weight).float()
        recovered[bypass] = float((got * wanted).sum() / (wanted * wanted).sum())
    assert recovered[True] > recovered[False] + 0.15  # measured 0.44 vs 0.19 (both ~1 once ΔW/W ≳ 1e-2)


def test_simpletuner_lycoris_config_reads_back_and_unsupported_keys_fail():
    example = {"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 16,
               "full_matrix": True, "apply_preset": {"target_module": ["Attention"],
                                                     "module_algo_map": {"Attention": {"factor": 16},
                                                                         "FeedForward": {"factor": 8}}}}
    settings = LokrSettings.from_config(example)
    assert settings == LokrSettings()  # a module_algo_map class is a target in LyCORIS, so FeedForward is one here
    assert LokrSettings.from_config(settings.to_config()) == settings
    with pytest.raises(ValueError, match="rank_dropout"):
        LokrSettings.from_config({**example, "rank_dropout": 0.1})
    with pytest.raises(ValueError, match="algo"):
        LokrSettings(algo="loha")
