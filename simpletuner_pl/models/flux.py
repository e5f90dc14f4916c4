"""Flux.1 (Krea [dev], dev, schnell) as a LightningModule: rectified-flow loss on packed 2x2 latent patches.

Per sample: x0 = (VAE(z) - shift) * scale, σ from `simpletuner_pl.schedules`, x_σ = (1-σ)x0 + σε, and the
transformer predicts the velocity ε - x0 (MSE in fp32). Packing, position ids and unpacking are diffusers' own
FluxPipeline helpers, so training sees exactly the token layout inference uses.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.data.batch import Batch
from simpletuner_pl.models.base import CLIP_MAX_LENGTH, DiffusionModule
from simpletuner_pl.models.flux_spec import FLUX
from simpletuner_pl.schedules import flux_mu, sample_sigmas


class FluxModule(DiffusionModule):
    spec = FLUX
    weight_probe = "x_embedder.weight"  # kept in high precision by every quantisation level

    def __init__(self, components: Dict[str, object], *args, **kwargs):
        super().__init__(components, *args, **kwargs)
        self.scheduler_config = dict(components["scheduler"].config)

    # ---- conditioning -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """CLIP-L pooled embedding + T5 sequence (and its attention mask), padded to `model.t5_max_length`."""
        device = self.text_encoder.device
        clip = self.tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                              return_tensors="pt")
        pooled = self.text_encoder(clip.input_ids.to(device), output_hidden_states=False).pooler_output
        t5 = self.tokenizer_2(prompts, padding="max_length", max_length=self.model_cfg.t5_max_length,
                              truncation=True, return_tensors="pt")
        embeds = self.text_encoder_2(t5.input_ids.to(device), output_hidden_states=False)[0]
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "attention_mask": t5.attention_mask.to(device)}

    # ---- denoiser ------------------------------------------------------------------------------------------------
    def predict_velocity(self, noisy: torch.Tensor, sigmas: torch.Tensor, text: Dict[str, torch.Tensor],
                         guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        dtype, device = self.weight_dtype, noisy.device
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w).to(dtype)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        txt_ids = torch.zeros(text["prompt_embeds"].shape[1], 3, device=device, dtype=dtype)
        if guidance is None and self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.model_cfg.guidance_value, device=device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed, timestep=sigmas.to(dtype), guidance=guidance,
            pooled_projections=text["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=text["prompt_embeds"].to(dtype), txt_ids=txt_ids, img_ids=img_ids,
            return_dict=False,
        )[0]
        scale = self.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)

    def flow_matching_loss(self, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                           text: Dict[str, torch.Tensor]) -> torch.Tensor:
        s = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        prediction = self.predict_velocity(noisy, sigmas, text)
        return F.mse_loss(prediction.float(), (noise - latents).float())

    def training_loss(self, batch: Batch) -> torch.Tensor:
        latents, text = self.latents_of(batch), self.text_of(batch)
        b, _, h, w = latents.shape
        sigmas = sample_sigmas(b, self.train_cfg, (h // 2) * (w // 2), self.scheduler_config, latents.device)
        return self.flow_matching_loss(latents, torch.randn_like(latents), sigmas, text)

    # ---- validation / evaluation ----------------------------------------------------------------------------------
    def validation_pipeline(self):
        """FluxPipeline over this module's own (adapter-carrying) components: no weight copies; fresh scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return self.spec.pipeline_cls()(
            transformer=self.transformer, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
        )

    def validation_kwargs(self, validation: ValidationConfig, adapter_strength: float = 1.0) -> Dict[str, object]:
        """Embedded guidance, true CFG with the negative prompt when guidance_real > 1, and the LoRA scale of a
        prompt-library entry."""
        kwargs = dict(guidance_scale=validation.guidance, max_sequence_length=self.model_cfg.t5_max_length)
        if validation.guidance_real > 1:
            kwargs.update(true_cfg_scale=validation.guidance_real, negative_prompt=validation.negative_prompt)
        if adapter_strength != 1.0:
            kwargs["joint_attention_kwargs"] = {"scale": adapter_strength}
        return kwargs

    def preview_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed pipeline latents → unscaled VAE latents, which a Tiny AutoEncoder (TAEF1) decodes."""
        from diffusers import FluxPipeline

        latents = FluxPipeline._unpack_latents(latents, height, width, self.vae_scale_factor)
        return latents / self.vae.config.scaling_factor + (getattr(self.vae.config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def eval_losses(self, batch: Batch, num_timesteps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The inference schedule at this resolution (dynamic shift μ), one noise draw shared by every σ."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        latents, text = self.latents_of(batch), self.text_of(batch)
        noise = torch.randn_like(latents)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        mu = flux_mu((latents.shape[2] // 2) * (latents.shape[3] // 2), scheduler.config)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_timesteps, num_timesteps), mu=mu,
                                device=latents.device)
        sigmas = scheduler.sigmas[:-1]  # the trailing 0 is the clean image
        losses = [self.flow_matching_loss(latents, noise, s.expand(len(latents)), text) for s in sigmas]
        return sigmas.float().cpu(), torch.stack(losses).float().cpu()
