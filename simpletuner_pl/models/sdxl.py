"""Stable Diffusion XL as a LightningModule: DDPM ε/v objective (or Diff2Flow) on the UNet.

Conditioning is what `StableDiffusionXLPipeline` feeds the UNet at inference: the penultimate hidden states of
CLIP-L and CLIP-G concatenated ([B, 77, 2048]), CLIP-G's projected pooled output, and six time ids
(original size, crop top-left, target size) per sample. Dropped captions (caption dropout) train the
unconditional branch exactly as the pipeline runs it for CFG with `force_zeros_for_empty_prompt`: zero text
embeddings, and, as in SimpleTuner, zero time ids. The math of the objectives lives in `simpletuner_pl.losses`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.data.batch import TIME_ID_KEYS, Batch
from simpletuner_pl.errors import ConfigError
from simpletuner_pl.inference import InferenceCall
from simpletuner_pl.losses import (
    PREDICTION_TYPES,
    clamp_to_schedule,
    ddpm_target,
    flow_coefficients,
    min_snr_weights,
    offset_noise,
    prediction_to_flow,
    sample_timesteps,
    schedule_sigmas,
    sigma_to_timestep,
    weighted_mse,
)
from simpletuner_pl.models.base import CLIP_MAX_LENGTH, DiffusionModule
from simpletuner_pl.models.sdxl_spec import SDXL, loading_code
from simpletuner_pl.schedules import sample_sigmas


def clip_context(text: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The 77-token context the UNet attends; embeddings of another length (a text cache written for another
    model family) would be silently misread, so they are refused."""
    embeds = text["prompt_embeds"]
    if embeds.shape[1] != CLIP_MAX_LENGTH:
        raise ValueError(f"SDXL conditions on {CLIP_MAX_LENGTH} CLIP tokens; got prompt embeddings of "
                         f"{embeds.shape[1]} tokens (is the text cache from another model family?)")
    return embeds


class SDXLModule(DiffusionModule):
    spec = SDXL
    weight_probe = "conv_in.weight"  # reports the compute dtype under every quantisation level

    def __init__(self, components: Dict[str, object], *args, **kwargs):
        super().__init__(components, *args, **kwargs)
        self.prediction_type = self.model_cfg.prediction_type or self.scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"the scheduler config predicts {self.prediction_type!r}; training supports "
                              f"{', '.join(PREDICTION_TYPES)}: set model.prediction_type")

    # ---- conditioning -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """Penultimate hidden states of both CLIPs, concatenated; CLIP-G's projected pooled output. All 77 tokens
        (padding included) are attended by the UNet, hence an all-ones attention mask."""
        hidden = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                            return_tensors="pt").input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled_prompt_embeds": out[0],
                "attention_mask": torch.ones(ids.shape, dtype=torch.long, device=ids.device)}

    def time_ids(self, batch: Batch, latents: torch.Tensor) -> torch.Tensor:
        """[B, 6] = (orig h, orig w, crop top, crop left, target h, target w); without the data pipeline's record,
        the uncropped batch size: ((H, W), (0, 0), (H, W))."""
        b, _, h, w = latents.shape
        size = (h * self.vae_scale_factor, w * self.vae_scale_factor)
        defaults = {"original_size": size, "crop_top_left": (0, 0), "target_size": size}
        parts = [torch.as_tensor(batch[k]) if batch.get(k) is not None else torch.tensor([defaults[k]] * b)
                 for k in TIME_ID_KEYS]
        return torch.cat([p.reshape(b, 2) for p in parts], dim=1).to(latents.device, torch.float32)

    def dropped(self, batch: Batch, b: int, device: torch.device) -> Optional[torch.Tensor]:
        """Per-sample bool: conditioning dropped (the batch's `drop_conditioning`, else an empty caption)."""
        if batch.get("drop_conditioning") is not None:
            return torch.as_tensor(batch["drop_conditioning"], dtype=torch.bool, device=device).reshape(b)
        if batch.get("captions") is not None:
            return torch.tensor([c == "" for c in batch["captions"]], dtype=torch.bool, device=device)
        return None

    def conditioning(self, batch: Batch, latents: torch.Tensor) -> Dict[str, torch.Tensor]:
        text = self.text_of(batch)
        cond = {"prompt_embeds": clip_context(text), "pooled_prompt_embeds": text["pooled_prompt_embeds"],
                "time_ids": self.time_ids(batch, latents)}
        drop = self.dropped(batch, latents.shape[0], latents.device)
        if drop is not None and drop.any():
            cond = {k: v * (~drop.to(v.device)).view(-1, *[1] * (v.dim() - 1)).to(v.dtype) for k, v in cond.items()}
        return cond

    # ---- denoiser ------------------------------------------------------------------------------------------------
    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self.weight_dtype
        added = {"text_embeds": cond["pooled_prompt_embeds"].to(dtype), "time_ids": cond["time_ids"].to(dtype)}
        return self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond["prompt_embeds"].to(dtype),
                         added_cond_kwargs=added, return_dict=False)[0]

    def ddpm_loss(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                  cond: Dict[str, torch.Tensor], weighted: bool = True, mask: Optional[torch.Tensor] = None,
                  regularisation: bool = False) -> torch.Tensor:
        """MSE to ε or v at x_t = scheduler.add_noise(x0, ε, t) (regularisation data: to the base model's own
        prediction there), min-SNR weighted when `train.snr_gamma` is set, `mask` weighting each latent element."""
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if regularisation:
            with torch.no_grad(), self.base_model():
                target = self.predict(noisy, timesteps, cond)
        else:
            target = ddpm_target(self.scheduler, latents, noise, timesteps, self.prediction_type)
        gamma = self.train_cfg.snr_gamma if weighted else None
        weights = None if gamma is None else min_snr_weights(self.scheduler, timesteps, gamma, self.prediction_type)
        return weighted_mse(self.predict(noisy, timesteps, cond), target, weights, mask)

    def diff2flow_loss(self, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                       cond: Dict[str, torch.Tensor], mask: Optional[torch.Tensor] = None,
                       regularisation: bool = False) -> torch.Tensor:
        """Flow matching through the DDPM UNet (see `simpletuner_pl.losses`): MSE(ε̂ - x̂0, ε - x0), or to the base
        model's own velocity for regularisation data."""
        alphas_cumprod = self.scheduler.alphas_cumprod
        sigmas = clamp_to_schedule(sigmas.float(), alphas_cumprod)
        a, s = flow_coefficients(sigmas)
        noisy = a.view(-1, 1, 1, 1) * latents + s.view(-1, 1, 1, 1) * noise
        timesteps = sigma_to_timestep(sigmas, alphas_cumprod)
        if regularisation:
            with torch.no_grad(), self.base_model():
                target = prediction_to_flow(self.predict(noisy, timesteps, cond).float(), noisy, a, s,
                                            self.prediction_type)
        else:
            target = noise - latents
        velocity = prediction_to_flow(self.predict(noisy, timesteps, cond).float(), noisy, a, s, self.prediction_type)
        return weighted_mse(velocity, target, mask=mask)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        latents = self.latents_of(batch)
        cond, mask = self.conditioning(batch, latents), self.mask_of(batch, latents)
        train, regularisation = self.train_cfg, bool(batch.get("is_regularisation"))
        noise = offset_noise(torch.randn_like(latents), train.noise_offset, train.noise_offset_probability)
        b, _, h, w = latents.shape
        if train.diff2flow:
            sigmas = sample_sigmas(b, train, (h // 2) * (w // 2), dict(self.scheduler.config), latents.device)
            return self.diff2flow_loss(latents, noise, sigmas, cond, mask, regularisation)
        timesteps = sample_timesteps(b, self.scheduler.config.num_train_timesteps, latents.device)
        return self.ddpm_loss(latents, noise, timesteps, cond, mask=mask, regularisation=regularisation)

    # ---- validation / evaluation ----------------------------------------------------------------------------------
    def validation_pipeline(self):
        """StableDiffusionXLPipeline over this module's own (adapter-carrying) components, sampling with DDIM and
        trailing timestep spacing as SimpleTuner validates SDXL (the model card's snippet swaps it in alike)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing="trailing",
                                              prediction_type=self.prediction_type)
        return self.spec.pipeline_cls()(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                         text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                                         unet=self.unet, scheduler=scheduler, force_zeros_for_empty_prompt=True)

    def validation_call(self, validation: ValidationConfig, prompt: str, width: int, height: int,
                        adapter_strength: float = 1.0) -> InferenceCall:
        """Classifier-free guidance at `validation.guidance`, with the negative prompt when CFG is on (> 1); the
        LoRA scale of a prompt-library entry."""
        kwargs: Dict[str, object] = dict(prompt=prompt, width=width, height=height,
                                         num_inference_steps=validation.num_inference_steps,
                                         guidance_scale=validation.guidance)
        if validation.guidance > 1 and validation.negative_prompt:
            kwargs["negative_prompt"] = validation.negative_prompt
        kwargs.update(self.lora_scale_kwargs("cross_attention_kwargs", adapter_strength))
        return InferenceCall(kwargs)

    def pipeline_loading_code(self, adapter_dir: str, strength: float = 1.0) -> List[str]:
        return loading_code(self.model_cfg, self.adapter_cfg.type, self.component_dtype, self.dtype_name,
                            adapter_dir, self.prediction_type, strength, self.quantised)

    def preview_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """TAESD/TAESDXL decode the pipeline's (scaled) latents as they are: nothing to unpack."""
        return latents

    @torch.no_grad()
    def eval_losses(self, batch: Batch, num_timesteps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(σ grid, loss at each σ): evenly spaced DDPM timesteps from pure noise down, reported as their
        flow-equivalent σ(t) ∈ (0, 1); one noise draw shared by every step and no SNR weighting (a stable MSE).
        With `train.diff2flow` the loss is the flow objective at those σ."""
        latents = self.latents_of(batch)
        cond, noise, b = self.conditioning(batch, latents), torch.randn_like(latents), latents.shape[0]
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.linspace(steps - 1, 0, num_timesteps).round().long()
        sigmas = schedule_sigmas(self.scheduler.alphas_cumprod)[timesteps].float()
        if self.train_cfg.diff2flow:
            losses = [self.diff2flow_loss(latents, noise, s.expand(b), cond) for s in sigmas.to(latents.device)]
        else:
            losses = [self.ddpm_loss(latents, noise, t.expand(b).to(latents.device), cond, weighted=False)
                      for t in timesteps]
        return sigmas.cpu(), torch.stack(losses).float().cpu()
