"""Invalid combinations fail at startup with the reason and the fix, before any weight is loaded."""

import pytest

from simpletuner_pl.errors import ConfigError
from simpletuner_pl.preflight import check_config

from helpers import CPU, quantise_tiny, typed

CASES = [
    (["adapter.init=loftq", "quant=int8"], r"adapter.init=loftq .* cannot start from a int8-quanto base"),
    (["adapter.init=loftq", "quant=nf4"], r"loftq .* nf4-bnb base. Use quant=none"),
    (["adapter.use_dora=true", "quant=nf4_torchao"], r"use_dora=true cannot read torchao NF4"),
    (["quant=nf4", "train.compile=true"], r"train.compile=true: bitsandbytes NF4 .* quant=nf4_torchao"),
    (["offload=group", "offload.model_cpu_offload=true"], r"group_offload_type and offload.model_cpu_offload"),
    (["quant.base_model_default_dtype=fp16"], r"base_model_default_dtype=fp16 is not supported"),
    (["optimizer=adamw_bf16", "quant.base_model_default_dtype=fp32"], r"optimizer=adamw_bf16 trains bf16"),
    (["optimizer=prodigy", "optimizer.lr_scheduler=cosine"], r"schedule-free .*lr_scheduler=constant"),
    (["train.gradient_checkpointing=false", "train.gradient_checkpointing_interval=2"],
     r"interval needs train.gradient_checkpointing=true"),
    (["offload.use_stream=true"], r"use_stream=true only applies to group offloading"),
    (["model.attention_backend=sage"], r"SageAttention has no backward pass"),
    (["quant.base_model_precision=int3-quanto"], r"valid choices: no_change, int8-quanto"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_invalid_combination_is_rejected_with_its_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(typed("experiment=demo", *overrides))


@pytest.mark.parametrize("overrides", [["quant=int8", "adapter.use_dora=true"], ["quant=nf4", "adapter.use_dora=true"],
                                       ["quant=nf4_torchao", "train.compile=true"],
                                       ["quant=int8", "optimizer=adamw_bf16", "quant.base_model_default_dtype=bf16"],
                                       ["offload=group"], ["offload=encoders"]])
def test_valid_combinations_pass(overrides):
    check_config(typed("experiment=demo", *overrides))


def test_dora_on_quanto_weights_matches_dora_on_float_weights():
    """Why DoRA with quanto is allowed (SimpleTuner disables it): PEFT computes DoRA's weight norms through quanto's
    dequantising ops, so the magnitudes equal the float model's up to int8 rounding, and gradients flow."""
    import torch

    from simpletuner_pl.adapters.lora import attach_lora, resolve_targets
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    magnitudes = {}
    for precision in ("no_change", "int8-quanto"):
        cfg = typed("experiment=demo", f"quant.base_model_precision={precision}", "adapter.use_dora=true", CPU)
        components, _ = quantise_tiny(cfg, build_tiny_flux_components())
        transformer = components["transformer"].requires_grad_(False)
        attach_lora(transformer, cfg.adapter, resolve_targets(transformer, "all", family("flux").targets))
        layer = transformer.transformer_blocks[0].attn.to_q
        magnitudes[precision] = layer.lora_magnitude_vector["default"].weight.detach()
        out = transformer(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=torch.randn(1, 8, 32),
                          pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
                          guidance=torch.tensor([1.0]), txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(16, 3)).sample
        out.square().mean().backward()
        assert layer.lora_magnitude_vector["default"].weight.grad.abs().sum() > 0
    from optimum.quanto import QLinear

    assert isinstance(layer.base_layer, QLinear)
    torch.testing.assert_close(magnitudes["int8-quanto"], magnitudes["no_change"], atol=5e-3, rtol=0)
