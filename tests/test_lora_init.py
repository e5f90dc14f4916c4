"""LoRA init schemes: PiSSA/OLoRA rewrite the base, yet the exported adapter must work on the original base."""

import pytest
import torch

from simpletuner_pl.errors import ConfigError

from helpers import tiny_flux_module


def forward(transformer, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    hidden = torch.randn(1, 16, 64, generator=g)
    text = torch.randn(1, 8, 32, generator=g)
    with torch.no_grad():
        return transformer(hidden_states=hidden, encoder_hidden_states=text,
                           pooled_projections=torch.randn(1, 32, generator=g),
                           timestep=torch.tensor([0.5]), guidance=torch.ones(1), img_ids=torch.zeros(16, 3),
                           txt_ids=torch.zeros(8, 3)).sample


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_exported_adapter_reproduces_the_trained_model_on_the_original_base(init, tmp_path):

    from simpletuner_pl.models.tiny_flux import build_tiny_flux_pipeline

    module = tiny_flux_module(f"adapter.init={init}").eval()
    with torch.no_grad():  # stand-in for training: move every adapter weight
        for p in module.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    trained = forward(module.transformer)
    module.export_adapter(tmp_path / "adapter")

    pipe = build_tiny_flux_pipeline()  # the stock (unmodified) base weights
    plain = forward(pipe.transformer)
    pipe.load_lora_weights(tmp_path / "adapter")
    assert (trained - plain).abs().max() > 1e-3
    torch.testing.assert_close(forward(pipe.transformer), trained, atol=1e-4, rtol=1e-4)
    config = pipe.transformer.peft_config[next(iter(pipe.transformer.peft_config))]
    assert config.r == 2 * module.adapter_cfg.rank


def test_gaussian_init_starts_as_identity():
    module = tiny_flux_module("adapter.init=gaussian").eval()
    layer = module.transformer.transformer_blocks[0].attn.to_q
    assert layer.lora_B["default"].weight.abs().sum() == 0 and layer.lora_A["default"].weight.std() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal is what is tested here")
def test_loftq_without_cuda_is_refused_at_startup():
    from simpletuner_pl.preflight import validate

    from helpers import typed

    with pytest.raises(ConfigError, match="loftq needs a CUDA GPU"):
        validate(typed("experiment=demo", "adapter.init=loftq"))
