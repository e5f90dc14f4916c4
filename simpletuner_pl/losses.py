"""DDPM training objectives (SDXL): timesteps, offset noise, ε/v targets, min-SNR weights, and Diff2Flow.

Noising and v-targets are diffusers' own `DDPMScheduler.add_noise/get_velocity` and SNR is `compute_snr`, so
training uses exactly the schedule the model's scheduler config describes. Notation: ᾱ_t = alphas_cumprod[t],
a = √ᾱ, s = √(1-ᾱ), x_t = a·x0 + s·ε.

Diff2Flow (Schusterbauer et al. 2025) trains the ε/v UNet with a flow-matching objective. A flow sample at noise
level σ ∈ [0, 1], x_σ = (1-σ)·x0 + σ·ε, is the DDPM sample x_t = (a+s)·x_σ for the t whose σ(t) = s/(a+s); so
ᾱ(σ) = (1-σ)² / ((1-σ)² + σ²), a = (1-σ)/n, s = σ/n with n = √((1-σ)² + σ²), and the UNet is called at the
(fractional) timestep where the schedule's σ(t) equals σ. Its prediction becomes a flow velocity:
    ε-model: x̂0 = (x_t - s·ε̂)/a;          v-model: x̂0 = a·x_t - s·v̂,  ε̂ = s·x_t + a·v̂;
    velocity = ε̂ - x̂0, trained with MSE against ε - x0 (no SNR weighting).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction")


def sample_timesteps(batch_size: int, num_train_timesteps: int, device: torch.device | str = "cpu",
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Integer t per sample. For a batch > 1, stratified (SimpleTuner's segmented sampling): [0, T) is split into
    `batch_size` equal segments and one t is drawn from each, so every batch spans low to high noise."""
    if batch_size == 1:
        return torch.randint(0, num_train_timesteps, (1,), generator=generator).to(device)
    width = num_train_timesteps / batch_size
    offsets = torch.rand(batch_size, generator=generator) * width
    t = (torch.arange(batch_size) * width + offsets).long().clamp_(0, num_train_timesteps - 1)
    return t[torch.randperm(batch_size, generator=generator)].to(device)


def offset_noise(noise: torch.Tensor, strength: float, probability: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add `strength`·N(0,1) per (sample, channel) to a `probability` share of samples: lets the model shift the
    mean brightness, which plain ε never teaches it (Guttenberg 2023)."""
    if strength == 0 or probability == 0:
        return noise
    b, c = noise.shape[:2]
    shift = torch.randn(b, c, 1, 1, generator=generator).to(noise)
    chosen = (torch.rand(b, 1, 1, 1, generator=generator) < probability).to(noise)
    return noise + strength * shift * chosen


def ddpm_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                prediction_type: str) -> torch.Tensor:
    """What the UNet should output: the noise (ε) or the velocity a·ε - s·x0 (v)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR+1) for v; SNR = ᾱ/(1-ᾱ)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error in fp32: each element's error times `mask` (masked loss: [B, 1, h, w] in [0, 1]), averaged
    over all elements (as SimpleTuner: a masked-out region lowers the loss, it is not renormalised by the mask's
    area), each sample's mean scaled by its `weights` (min-SNR)."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if mask is not None:
        error = error * mask.to(error)
    if weights is None:
        return error.mean()
    return (error.flatten(1).mean(1) * weights.float()).mean()


# ---- Diff2Flow ------------------------------------------------------------------------------------------------
def schedule_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Flow-equivalent σ(t) = s/(a+s) of every DDPM timestep (increasing in t)."""
    a, s = alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()
    return s / (a + s)


def flow_coefficients(sigmas: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, s) = (√ᾱ, √(1-ᾱ)) of the DDPM sample equivalent to flow level σ."""
    norm = ((1 - sigmas) ** 2 + sigmas**2).sqrt()
    return (1 - sigmas) / norm, sigmas / norm


def sigma_to_timestep(sigmas: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Fractional DDPM timestep whose σ(t) equals each σ (linear interpolation between integer steps)."""
    table = schedule_sigmas(alphas_cumprod.to(sigmas.device, torch.float64))
    sigmas = sigmas.to(torch.float64).clamp(table[0], table[-1])
    upper = torch.searchsorted(table, sigmas).clamp(1, len(table) - 1)
    lower = upper - 1
    fraction = (sigmas - table[lower]) / (table[upper] - table[lower])
    return (lower + fraction).float()


def clamp_to_schedule(sigmas: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ outside [σ(0), σ(T-1)] has no DDPM timestep the UNet was trained at; clamp it into that range."""
    table = schedule_sigmas(alphas_cumprod.to(sigmas.device, torch.float32))
    return sigmas.clamp(table[0].item(), table[-1].item())


def prediction_to_flow(prediction: torch.Tensor, noisy: torch.Tensor, a: torch.Tensor, s: torch.Tensor,
                       prediction_type: str) -> torch.Tensor:
    """Flow velocity ε̂ - x̂0 implied by an ε or v prediction at x_t = a·x0 + s·ε (a, s broadcast per sample)."""
    a, s = a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        eps = prediction
        x0 = (noisy - s * eps) / a
    elif prediction_type == "v_prediction":
        x0 = a * noisy - s * prediction
        eps = s * noisy + a * prediction
    else:
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    return eps - x0
