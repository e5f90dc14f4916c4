"""Each `adapter.target` preset wraps exactly SimpleTuner's module list (diffusers Flux module names)."""

import pytest
import torch

from simpletuner_pl.errors import ConfigError

from helpers import tiny_flux_module

D = "transformer_blocks.0."
S = "single_transformer_blocks.0."
ATTN_IMG = [D + "attn.to_q", D + "attn.to_k", D + "attn.to_v", D + "attn.to_out.0",
            S + "attn.to_q", S + "attn.to_k", S + "attn.to_v"]
ATTN_TXT = [D + "attn.add_q_proj", D + "attn.add_k_proj", D + "attn.add_v_proj", D + "attn.to_add_out"]
FF_TXT = [D + "ff_context.net.0.proj", D + "ff_context.net.2"]
FFS = [D + "ff.net.0.proj", D + "ff.net.2", *FF_TXT, S + "proj_mlp", S + "proj_out", "proj_out"]

EXPECTED = {
    "mmdit": ATTN_IMG,
    "all": ATTN_IMG + ATTN_TXT,
    "all+ffs": ATTN_IMG + ATTN_TXT + FFS,
    "context": ATTN_TXT,
    "context+ffs": ATTN_TXT + FF_TXT,
}


def wrapped(module):
    return sorted(name.removeprefix("transformer.") for name, m in module.named_modules()
                  if hasattr(m, "lora_A") and name.startswith("transformer."))


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_wraps_exactly_the_listed_modules(preset):
    module = tiny_flux_module(f"adapter.target={preset}")
    assert wrapped(module) == sorted(EXPECTED[preset])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in module.trainable_parameters())


@pytest.mark.parametrize("preset, blocks", [("tiny", ["7", "20"]), ("nano", ["7"])])
def test_single_layer_presets_on_a_deep_transformer(preset, blocks):
    module = tiny_flux_module(f"adapter.target={preset}", num_single_layers=21)
    assert wrapped(module) == sorted(f"single_transformer_blocks.{b}.proj_out" for b in blocks)


def test_single_layer_preset_on_a_shallow_transformer_explains_itself():
    with pytest.raises(ConfigError, match="single_transformer_blocks.7.proj_out"):
        tiny_flux_module("adapter.target=nano")


def test_rank_alpha_dropout_and_dora_reach_peft():
    module = tiny_flux_module("adapter.rank=8", "adapter.alpha=4", "adapter.dropout=0.2", "adapter.use_dora=true")
    config = module.transformer.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_dora) == (8, 4, 0.2, True)
    layer = module.transformer.transformer_blocks[0].attn.to_q
    assert layer.scaling["default"] == 0.5 and layer.lora_A["default"].weight.shape[0] == 8
    assert "default" in layer.lora_magnitude_vector


def test_alpha_defaults_to_rank():
    module = tiny_flux_module("adapter.rank=6")
    assert module.transformer.peft_config["default"].lora_alpha == 6


def test_denoiser_trains_in_train_mode_and_encoders_stay_in_eval():
    module = tiny_flux_module()
    assert module.transformer.training
    module.train()
    assert module.transformer.training and not module.text_encoder_2.training and not module.vae.training
