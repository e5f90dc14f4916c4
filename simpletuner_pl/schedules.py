"""Flow-matching noise levels: how σ is drawn for each training sample, and the resolution-dependent shift.

σ = 1 is pure noise. The formulas are the SD3/Flux ones; diffusers supplies the logit-normal density and the μ
line (`calculate_shift`), so only the choice between them lives here.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from simpletuner_pl.config.schema import TrainConfig

# Schnell's distillation concentrates on pure noise: P(σ=1)=0.7, 0.1 each for 0.75/0.5/0.25
# (SimpleTuner's fast schedule).
FAST_SCHEDULE_SIGMAS = (1.0,) * 7 + (0.75, 0.5, 0.25)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 §5.3.2 time shift σ' = sσ / (1 + (s-1)σ); s > 1 moves training towards noisier σ."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flux_mu(image_seq_len: int, scheduler_config: Mapping[str, Any]) -> float:
    """μ of Flux's dynamic shifting: linear in the packed image token count, between the scheduler config's
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) (the pipeline's own `calculate_shift`)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(
        image_seq_len,
        scheduler_config.get("base_image_seq_len", 256),
        scheduler_config.get("max_image_seq_len", 4096),
        scheduler_config.get("base_shift", 0.5),
        scheduler_config.get("max_shift", 1.15),
    )


def auto_shift(image_seq_len: int, scheduler_config: Mapping[str, Any]) -> float:
    """Resolution-dependent shift s = exp(μ) (Flux's dynamic shifting)."""
    return math.exp(flux_mu(image_seq_len, scheduler_config))


def sample_sigmas(
    batch_size: int,
    train_cfg: TrainConfig,
    image_seq_len: int,
    scheduler_config: Mapping[str, Any],
    device: torch.device | str = "cpu",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw one σ per sample according to `train.flow_sigma_sampling`, then apply the configured shift."""
    mode = train_cfg.flow_sigma_sampling
    if mode == "fast":
        table = torch.tensor(FAST_SCHEDULE_SIGMAS, device=device)
        return table[torch.randint(len(table), (batch_size,), device=device, generator=generator)]
    if mode == "logit_normal":
        from diffusers.training_utils import compute_density_for_timestep_sampling

        sigmas = compute_density_for_timestep_sampling(
            "logit_normal", batch_size, logit_mean=0.0, logit_std=train_cfg.flow_sigmoid_scale,
            device=device, generator=generator,
        )
    elif mode == "uniform":
        sigmas = torch.rand(batch_size, device=device, generator=generator)
    elif mode == "beta":
        beta = torch.distributions.Beta(train_cfg.flow_beta_alpha, train_cfg.flow_beta_beta)
        sigmas = beta.sample((batch_size,)).to(device)
    else:
        raise ValueError(f"unknown flow_sigma_sampling {mode!r}")
    if train_cfg.flow_schedule_auto_shift:
        sigmas = shift_sigmas(sigmas, auto_shift(image_seq_len, scheduler_config))
    elif train_cfg.flow_schedule_shift is not None:
        sigmas = shift_sigmas(sigmas, train_cfg.flow_schedule_shift)
    return sigmas
