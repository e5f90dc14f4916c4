"""Flux.1 (Krea [dev], dev, schnell) as a LightningModule: rectified-flow loss on packed 2x2 latent patches.

Per sample: x0 = (VAE(z) - shift) * scale, σ from `simpletuner_pl.schedules`, x_σ = (1-σ)x0 + σε, and the
transformer predicts the velocity ε - x0 (MSE in fp32). Packing, position ids and unpacking are diffusers' own
FluxPipeline helpers, so training sees exactly the token layout inference uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from simpletuner_pl.adapters.lora import adapter_metadata
from simpletuner_pl.models.base import DiffusionModule
from simpletuner_pl.schedules import sample_sigmas

CLIP_MAX_LENGTH = 77


class FluxModule(DiffusionModule):
    denoiser_name = "transformer"

    def __init__(self, cfg, components: Dict[str, object]):
        super().__init__(cfg, components)
        self.scheduler_config = dict(components["scheduler"].config)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def weight_dtype(self) -> torch.dtype:
        # Not next(parameters()): quantised layers may store uint8 weights.
        return self.transformer.x_embedder.weight.dtype

    # ---- conditioning -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """CLIP-L pooled embedding + T5 sequence (and its attention mask), padded to `model.t5_max_length`."""
        device = self.text_encoder.device
        clip = self.tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                              return_tensors="pt")
        pooled = self.text_encoder(clip.input_ids.to(device), output_hidden_states=False).pooler_output
        t5 = self.tokenizer_2(prompts, padding="max_length", max_length=self.cfg.model.t5_max_length,
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
            guidance = torch.full((b,), self.cfg.model.guidance_value, device=device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=packed,
            timestep=sigmas.to(dtype),
            guidance=guidance,
            pooled_projections=text["pooled_prompt_embeds"].to(dtype),
            encoder_hidden_states=text["prompt_embeds"].to(dtype),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return FluxPipeline._unpack_latents(out, h * self.vae_scale_factor, w * self.vae_scale_factor,
                                            self.vae_scale_factor)

    def flow_matching_loss(self, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                           text: Dict[str, torch.Tensor]) -> torch.Tensor:
        s = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        prediction = self.predict_velocity(noisy, sigmas, text)
        return F.mse_loss(prediction.float(), (noise - latents).float())

    def training_loss(self, batch) -> torch.Tensor:
        latents = batch["latents"] if "latents" in batch else self.encode_images(batch["pixel_values"])
        latents = latents.float()  # noise and target in fp32 whatever the VAE dtype
        text = batch if "prompt_embeds" in batch else self.text_conditioning(batch["captions"])
        b, _, h, w = latents.shape
        sigmas = sample_sigmas(b, self.cfg.train, (h // 2) * (w // 2), self.scheduler_config, latents.device)
        return self.flow_matching_loss(latents, torch.randn_like(latents), sigmas, text)

    # ---- validation / evaluation interface (simpletuner_pl.callbacks) --------------------------------------------
    preview_decoder = "madebyollin/taef1"  # Tiny AutoEncoder for validation previews

    def validation_pipeline(self):
        """FluxPipeline over this module's own (adapter-carrying) components: no weight copies; fresh scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        return FluxPipeline(
            transformer=self.transformer, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
        )

    def validation_kwargs(self, validation, adapter_strength: float = 1.0) -> Dict[str, object]:
        """Pipeline arguments of `validation.*`: embedded guidance, true CFG with the negative prompt when
        guidance_real > 1, and the LoRA scale of a prompt-library entry."""
        kwargs = dict(guidance_scale=validation.guidance, max_sequence_length=self.cfg.model.t5_max_length)
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

    def eval_losses(self, batch, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ grid, loss at each σ): the inference schedule at this resolution (dynamic shift μ), one noise draw
        shared by every σ. The caller seeds the RNG, so the VAE sample and the noise are the same every time."""
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        latents = (batch["latents"] if "latents" in batch else self.encode_images(batch["pixel_values"])).float()
        text = batch if "prompt_embeds" in batch else self.text_conditioning(batch["captions"])
        noise = torch.randn_like(latents)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        c = scheduler.config
        mu = calculate_shift((latents.shape[2] // 2) * (latents.shape[3] // 2), c.get("base_image_seq_len", 256),
                             c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_timesteps, num_timesteps), mu=mu,
                                device=latents.device)
        sigmas = scheduler.sigmas[:-1]  # the trailing 0 is the clean image
        losses = [self.flow_matching_loss(latents, noise, s.expand(len(latents)), text) for s in sigmas]
        return sigmas.float().cpu(), torch.stack(losses).float().cpu()

    # ---- export --------------------------------------------------------------------------------------------------
    def save_adapter(self, directory: Path) -> None:
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(
            directory,
            transformer_lora_layers=self.adapter_state_dict(),
            transformer_lora_adapter_metadata=adapter_metadata(self.transformer, self.cfg.adapter),
        )
