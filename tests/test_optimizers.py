"""Optimizers: adamw_bf16 tracks fp32 AdamW on bf16 weights, every optimizer trains, schedule-free modes,
clipping policy, LR schedules."""

import math

import pytest
import torch

from simpletuner_pl.config.registries import OPTIMIZERS
from simpletuner_pl.optimizers import BUILDERS, build_optimizer, clip_value, set_mode

from helpers import compose, typed


def regression(dtype, seed=0):
    """A least-squares problem whose weights sit near 1: bf16's spacing there (2^-7) dwarfs lr-sized updates."""
    g = torch.Generator().manual_seed(seed)
    x, w_true = torch.randn(256, 32, generator=g), 1 + 0.05 * torch.randn(32, 8, generator=g)
    y = x @ w_true
    w = torch.nn.Parameter((1 + 0.05 * torch.randn(32, 8, generator=g)).to(dtype))
    return x, y, w


def train(opt_cfg, dtype, steps=300, optimizer=None):
    x, y, w = regression(dtype)
    optimizer = optimizer(w) if optimizer else build_optimizer([w], opt_cfg)
    losses = []
    for _ in range(steps):
        loss = ((x.to(dtype) @ w).float() - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return w, losses


def test_adamw_bf16_matches_fp32_adamw_and_keeps_bf16_weights():
    cfg = typed("optimizer=adamw_bf16", "optimizer.lr=1e-3", "optimizer.weight_decay=0.01").optimizer
    reference, _ = train(None, torch.float32, optimizer=lambda w: torch.optim.AdamW(
        [w], lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01))
    bf16, losses = train(cfg, torch.bfloat16)
    naive, _ = train(None, torch.bfloat16, optimizer=lambda w: torch.optim.AdamW(
        [w], lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01))
    assert bf16.dtype == torch.bfloat16
    start = regression(torch.float32)[2].detach()
    moved = (reference.detach() - start).abs().mean()
    err = (bf16.detach().float() - reference.detach()).abs().mean()
    naive_err = (naive.detach().float() - reference.detach()).abs().mean()
    half_step = 2.0**-8  # half of bf16's spacing for weights in [1, 2): the best a bf16 weight can do
    assert err < half_step and err < 0.05 * moved
    assert naive_err > 0.9 * moved  # plain bf16 AdamW rounds every update away and never leaves the start
    assert losses[-1] < 0.01 * losses[0]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_the_loss(name):
    cfg = typed(f"optimizer={name}").optimizer
    cfg.lr = 1.0 if name == "prodigy" else 1e-2
    dtype = torch.bfloat16 if name == "adamw_bf16" else torch.float32
    _, losses = train(cfg, dtype, steps=60, optimizer=lambda w: build_optimizer([w], cfg))
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])


def test_schedule_free_modes_swap_the_weights():
    cfg = typed("optimizer=prodigy").optimizer
    x, y, w = regression(torch.float32)
    optimizer = build_optimizer([w], cfg)
    set_mode(optimizer, train=True)
    for _ in range(5):
        optimizer.zero_grad()
        ((x @ w) - y).pow(2).mean().backward()
        optimizer.step()
    train_weights = w.detach().clone()
    set_mode(optimizer, train=False)
    assert not torch.equal(train_weights, w.detach())  # eval mode exposes the averaged sequence
    set_mode(optimizer, train=True)
    assert torch.allclose(train_weights, w.detach(), atol=1e-6)


def test_every_registered_optimizer_has_a_builder():
    assert set(BUILDERS) == set(OPTIMIZERS)


def test_self_clipping_optimizers_skip_max_grad_norm():
    def clipped(*overrides):
        cfg = typed(*overrides)
        return clip_value(cfg.train, cfg.optimizer)

    assert clipped("optimizer=adamw", "train.max_grad_norm=0.5") == 0.5
    assert clipped("optimizer=optimi_stableadamw") is None
    assert clipped("optimizer=prodigy") is None


@pytest.mark.parametrize("schedule, expected", [
    ("constant_with_warmup", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]),
    ("cosine", [0.25, 0.5, 0.75, 1.0, 0.5 * (1 + math.cos(math.pi / 6)), 0.5 * (1 + math.cos(math.pi / 3))]),
    ("linear", [0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6]),
    ("polynomial", [0.25, 0.5, 0.75, 1.0] + [(1 - 1e-7) * (1 - k / 6) ** 0.8 + 1e-7 for k in (1, 2)]),
])
def test_lr_schedules_with_warmup(schedule, expected):
    from helpers import tiny_flux_module

    module = tiny_flux_module(f"optimizer.lr_scheduler={schedule}", "optimizer.warmup_steps=4", "train.max_steps=10",
                              "optimizer.lr=1.0")
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(6):
        scheduler.optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs == pytest.approx(expected)


def test_adamw_bf16_run_keeps_the_lora_in_bf16(tmp_path):
    from simpletuner_pl.train import run

    trainer = run(compose("experiment=demo", "optimizer=adamw_bf16", "quant.base_model_default_dtype=bf16",
                          "train.max_steps=2", "data.datasets.demo.resolution=64", f"output_dir={tmp_path}",
                          "trainer.accelerator=cpu"))
    lora = [p for p in trainer.lightning_module.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.bfloat16 for p in lora)
    assert type(trainer.optimizers[0]).__name__ == "AdamW" and trainer.optimizers[0].__module__.startswith("optimi")
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
