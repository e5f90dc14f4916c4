"""Flux.1 (Krea [dev], dev, schnell, Kontext, FluxBooru, LibreFlux) as a LightningModule: rectified-flow loss on
packed 2x2 latent patches.

Per sample: x0 = (VAE(z) - shift) * scale, σ from `simpletuner_pl.schedules`, x_σ = (1-σ)x0 + σε, and the
transformer predicts the velocity ε - x0 (MSE in fp32). The conditioning is the pipeline's own: CLIP-L pooled and
the T5 sequence padded to `model.t5_max_length` with T5's outputs at the pad tokens (`model.t5_padding=unmodified`,
bit-identical to `FluxPipeline.encode_prompt`), or zeros there (`zero`); the token layout is `flux_inputs`'.
"""

from __future__ import annotations

import warnings
from typing import ContextManager, Dict, List, Optional, Tuple

import numpy as np
import torch

from simpletuner_pl.adapters import assistant
from simpletuner_pl.adapters.switch import adapter_disabled
from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.data.batch import Batch
from simpletuner_pl.inference import InferenceCall
from simpletuner_pl.losses import weighted_mse
from simpletuner_pl.models.base import CLIP_MAX_LENGTH, DiffusionModule
from simpletuner_pl.models.flux_inputs import force_keep, transformer_inputs
from simpletuner_pl.models.flux_spec import FLUX, loading_code
from simpletuner_pl.schedules import flux_mu, sample_sigmas


class FluxModule(DiffusionModule):
    spec = FLUX
    weight_probe = "x_embedder.weight"  # kept in high precision by every quantisation level

    def __init__(self, components: Dict[str, object], *args, **kwargs):
        super().__init__(components, *args, **kwargs)
        self.scheduler_config = dict(components["scheduler"].config)

    def attach_adapter(self):
        if self.model_cfg.assistant_lora_path:  # loaded first, frozen; the trained adapter goes on top
            assistant.load_assistant(self.transformer, self.spec.pipeline_cls(), self.model_cfg.assistant_lora_path)
        with warnings.catch_warnings():  # PEFT warns that a second adapter joins the assistant: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            init_state = super().attach_adapter()
        if self.model_cfg.assistant_lora_path:
            assistant.activate(self.transformer, with_assistant=True)
        return init_state

    def inference_adapters(self) -> ContextManager:
        if self.model_cfg.assistant_lora_path:  # the trained LoRA alone, as it is used on stock schnell
            return assistant.without_assistant(self.transformer)
        return super().inference_adapters()

    def cache_identity(self) -> Dict[str, str]:
        identity = super().cache_identity()
        identity["text"] += f"|t5_padding={self.model_cfg.t5_padding}"
        return identity

    # ---- conditioning -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """CLIP-L pooled embedding + the T5 sequence (and its attention mask), as `FluxPipeline.encode_prompt`."""
        device = self.text_encoder.device
        clip = self.tokenizer(prompts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                              return_tensors="pt")
        pooled = self.text_encoder(clip.input_ids.to(device), output_hidden_states=False).pooler_output
        t5 = self.tokenizer_2(prompts, padding="max_length", max_length=self.model_cfg.t5_max_length,
                              truncation=True, return_tensors="pt")
        embeds = self.text_encoder_2(t5.input_ids.to(device), output_hidden_states=False)[0]
        mask = t5.attention_mask.to(device)
        if self.model_cfg.t5_padding == "zero":
            embeds = embeds * mask[..., None].to(embeds.dtype)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "attention_mask": mask}

    def reference_of(self, batch: Batch) -> Optional[torch.Tensor]:
        """Kontext's reference latents (the posterior mode, as `FluxKontextPipeline` encodes its input image)."""
        if "reference_latents" in batch:
            return batch["reference_latents"].float()
        if "reference_pixel_values" in batch:
            return self.encode_images(batch["reference_pixel_values"], mode=True).float()
        return None

    # ---- denoiser ------------------------------------------------------------------------------------------------
    def predict_velocity(self, noisy: torch.Tensor, sigmas: torch.Tensor, text: Dict[str, torch.Tensor],
                         reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        from diffusers import FluxPipeline

        dtype = self.weight_dtype
        kwargs, keep = transformer_inputs(noisy, text, dtype, self.model_cfg, self.transformer.config.guidance_embeds,
                                          self.training, reference)
        out = self.transformer(timestep=sigmas.to(dtype), **kwargs)[0][:, :keep]
        scale, (h, w) = self.vae_scale_factor, noisy.shape[2:]
        return FluxPipeline._unpack_latents(out, h * scale, w * scale, scale)

    def flow_matching_loss(self, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                           text: Dict[str, torch.Tensor], reference: Optional[torch.Tensor] = None,
                           mask: Optional[torch.Tensor] = None, regularisation: bool = False) -> torch.Tensor:
        """MSE to the velocity ε - x0, or, for regularisation data, to the base model's own prediction on the same
        input (adapter off, no gradient); `mask` ([B, 1, h, w]) weights each latent element."""
        s = sigmas.view(-1, 1, 1, 1).to(latents.dtype)
        noisy = (1 - s) * latents + s * noise
        if regularisation:
            with torch.no_grad(), self.base_model():
                target = self.predict_velocity(noisy, sigmas, text, reference)
        else:
            target = noise - latents
        return weighted_mse(self.predict_velocity(noisy, sigmas, text, reference), target, mask=mask)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        latents, text, reference = self.latents_of(batch), self.text_of(batch), self.reference_of(batch)
        mask = self.mask_of(batch, latents)
        b, _, h, w = latents.shape
        sigmas = sample_sigmas(b, self.train_cfg, (h // 2) * (w // 2), self.scheduler_config, latents.device)
        if self.router is not None:  # TREAD keeps the masked regions' tokens
            self.router.force_keep = None if mask is None else force_keep(mask, reference is not None)
        return self.flow_matching_loss(latents, torch.randn_like(latents), sigmas, text, reference, mask,
                                       bool(batch.get("is_regularisation")))

    def base_model(self) -> ContextManager:
        if self.model_cfg.assistant_lora_path:  # the base the LoRA trains on is schnell with its assistant
            return adapter_disabled(self.transformer, keep=[assistant.NAME], active=[assistant.NAME,
                                                                                    assistant.TRAINED])
        return super().base_model()

    # ---- validation / evaluation ----------------------------------------------------------------------------------
    def validation_pipeline(self):
        """The flavour's pipeline over this module's own (adapter-carrying) components; a fresh scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return self.spec.pipeline_for(self.model_cfg.flavour)(
            transformer=self.transformer, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config),
        )

    def validation_call(self, validation: ValidationConfig, prompt: str, width: int, height: int,
                        adapter_strength: float = 1.0) -> InferenceCall:
        """Embedded guidance (where the checkpoint has it); true CFG with the negative prompt when guidance_real > 1
        (from step `no_cfg_until_timestep` on); the T5 key mask of masked training; Kontext's reference image."""
        kwargs = dict(prompt=prompt, width=width, height=height, num_inference_steps=validation.num_inference_steps,
                      max_sequence_length=self.model_cfg.t5_max_length)
        if self.transformer.config.guidance_embeds:  # schnell-like checkpoints embed no guidance value
            kwargs["guidance_scale"] = validation.guidance
        real_cfg = validation.guidance_real > 1
        if real_cfg:
            kwargs.update(true_cfg_scale=validation.guidance_real, negative_prompt=validation.negative_prompt)
        kwargs.update(self.lora_scale_kwargs("joint_attention_kwargs", adapter_strength))
        reference = validation.reference_image if self.model_cfg.flavour == "kontext" else None
        if reference is not None:
            kwargs["max_area"] = width * height  # Kontext's pipeline resizes its output to this area
        return InferenceCall(kwargs, masked=self.model_cfg.attention_masked_training,
                             cfg_delay=validation.no_cfg_until_timestep if real_cfg else 0, reference_image=reference)

    def pipeline_loading_code(self, adapter_dir: str, strength: float = 1.0) -> List[str]:
        return loading_code(self.model_cfg, self.adapter_cfg.type, self.component_dtype, self.dtype_name,
                            adapter_dir, strength, self.quantised)

    def preview_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed pipeline latents → unscaled VAE latents, which a Tiny AutoEncoder (TAEF1) decodes."""
        from diffusers import FluxPipeline

        latents = FluxPipeline._unpack_latents(latents, height, width, self.vae_scale_factor)
        return latents / self.vae.config.scaling_factor + (getattr(self.vae.config, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def eval_losses(self, batch: Batch, num_timesteps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The inference schedule at this resolution (dynamic shift μ), one noise draw shared by every σ."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        latents, text, reference = self.latents_of(batch), self.text_of(batch), self.reference_of(batch)
        noise = torch.randn_like(latents)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        mu = flux_mu((latents.shape[2] // 2) * (latents.shape[3] // 2), scheduler.config)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_timesteps, num_timesteps), mu=mu,
                                device=latents.device)
        sigmas = scheduler.sigmas[:-1]  # the trailing 0 is the clean image
        losses = [self.flow_matching_loss(latents, noise, s.expand(len(latents)), text, reference) for s in sigmas]
        return sigmas.float().cpu(), torch.stack(losses).float().cpu()
