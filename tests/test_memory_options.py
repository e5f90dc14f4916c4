"""Memory options on the tiny model, CPU: group offload and encoder CPU offload train; attention backends."""

import math

import pytest
import torch

from simpletuner_pl.errors import ConfigError
from simpletuner_pl.memory.placement import is_self_placing

from helpers import CPU, compose, quantise_tiny, typed

RUN = ("experiment=demo", "train.max_steps=2", "data.datasets.demo.resolution=64", CPU)


def test_group_offload_trains_and_is_left_out_of_lightnings_device_move(tmp_path):
    """On the CPU onload and offload devices coincide, so this checks the wiring and that LoRA still trains
    through diffusers' hooks; the memory saving itself needs a GPU."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    from simpletuner_pl.train import run

    trainer = run(compose(*RUN, "offload=group", "train.gradient_checkpointing=true", f"output_dir={tmp_path}"))
    transformer = trainer.lightning_module.transformer
    assert _is_group_offload_enabled(transformer) and is_self_placing(transformer)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert saved and any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)


def test_encoder_offload_hooks_and_training(tmp_path):
    from simpletuner_pl.callbacks.offload import ComponentOffload
    from simpletuner_pl.train import run

    trainer = run(compose(*RUN, "offload=encoders", f"output_dir={tmp_path}"))
    module = trainer.lightning_module
    assert any(isinstance(c, ComponentOffload) for c in trainer.callbacks)
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert is_self_placing(getattr(module, name))
    assert not module.placed_elsewhere  # the denoiser is back under Lightning once training began
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_missing_attention_backend_is_a_config_error():
    from simpletuner_pl.memory.attention import set_attention_backend
    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"model.attention_backend=flash: .*flash-attn"):  # diffusers' reason
        set_attention_backend(build_tiny_flux_components()["transformer"], "flash")


def test_vae_tiling_and_native_backend():
    from helpers import tiny_module

    module = tiny_module("offload.vae_enable_tiling=true", "model.attention_backend=native_math")
    assert module.vae.use_tiling
    processor = module.transformer.transformer_blocks[0].attn.processor
    try:
        assert processor._attention_backend.value == "_native_math"
    finally:
        module.transformer.set_attention_backend("native")  # process-wide in diffusers: restore it


@pytest.mark.parametrize("precision", ["int8-quanto", "nf4-torchao"])
def test_compiled_blocks_train_on_quantised_weights(precision):
    """train.compile on the quantised paths that support it. aot_eager runs the same Dynamo + AOTAutograd stages
    as inductor (where quantised-weight graphs fail) without code generation, to stay fast; the inductor runs of
    `python -m simpletuner_pl ... train.compile=true` are recorded in experiments/RESULTS.md."""
    from simpletuner_pl.adapters.lora import attach_lora, resolve_targets
    from simpletuner_pl.memory.compile import compile_blocks
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    cfg = typed("experiment=demo", f"quant.base_model_precision={precision}", "adapter.init=gaussian")
    grads = []
    for compiled in (False, True):
        components, _ = quantise_tiny(cfg, build_tiny_flux_components())
        transformer = components["transformer"].requires_grad_(False)
        torch.manual_seed(0)
        attach_lora(transformer, cfg.adapter, resolve_targets(transformer, "all", family("flux").targets))
        if compiled:
            assert compile_blocks(transformer, backend="aot_eager") == 2
        g = torch.Generator().manual_seed(0)
        out = transformer(hidden_states=torch.randn(1, 16, 64, generator=g),
                          encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
                          pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                          guidance=torch.tensor([1.0]), txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(16, 3)).sample
        out.square().mean().backward()
        grads.append({n: p.grad for n, p in transformer.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6)
