"""`train.gradient_checkpointing_interval`: exactly every n-th block is checkpointed, gradients are unchanged."""

import pytest
import torch

import simpletuner_pl.memory.checkpointing as ckpt

from helpers import tiny_flux_module

DEPTH = dict(num_layers=4, num_single_layers=5)


def batch():
    g = torch.Generator().manual_seed(0)
    return dict(latents=torch.randn(2, 16, 8, 8, generator=g), noise=torch.randn(2, 16, 8, 8, generator=g),
                sigmas=torch.tensor([0.3, 0.7]))


def lora_grads(*overrides):
    torch.manual_seed(0)
    module = tiny_flux_module("adapter.init=gaussian", *overrides, **DEPTH)
    module.transformer.train()
    b = batch()
    text = module.encode_prompts(["a photo of a cat", "a rocket"])
    module.flow_matching_loss(b["latents"], b["noise"], b["sigmas"], text).backward()
    return module, {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("interval, double, single", [
    (None, [0, 1, 2, 3], [0, 1, 2, 3, 4]),
    (2, [0, 2], [0, 2, 4]),
    (3, [0, 3], [0, 3]),
])
def test_exactly_every_nth_block_is_checkpointed(monkeypatch, interval, double, single):
    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda fn, *a, **k: calls.append(fn.__self__) or real(fn, *a, **k))
    overrides = ["train.gradient_checkpointing=true"]
    if interval:
        overrides.append(f"train.gradient_checkpointing_interval={interval}")
    module, _ = lora_grads(*overrides)
    transformer = module.transformer
    names = {id(m): n for n, m in transformer.named_modules()}
    expected = [f"transformer_blocks.{i}" for i in double] + [f"single_transformer_blocks.{i}" for i in single]
    assert [names[id(block)] for block in calls] == expected  # forward order, once each
    assert ckpt.selected_blocks(transformer, interval) == expected


def test_gradients_equal_with_and_without_checkpointing():
    _, plain = lora_grads("train.gradient_checkpointing=false")
    for interval in ("null", "2"):
        _, grads = lora_grads("train.gradient_checkpointing=true", f"train.gradient_checkpointing_interval={interval}")
        assert grads.keys() == plain.keys() and len(grads) > 20
        for name, grad in grads.items():
            assert grad.abs().sum() > 0 or plain[name].abs().sum() == 0
            torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_no_checkpointing_when_off():
    module, _ = lora_grads("train.gradient_checkpointing=false")
    assert not any(getattr(m, "gradient_checkpointing", False) for m in module.transformer.modules())
