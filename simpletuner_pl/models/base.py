"""Family-independent LightningModule: frozen base, trainable adapter (`adapted.AdaptedMixin`), optimizer, checkpoint
contents.

A family subclasses `DiffusionModule`, names its `FamilySpec` and implements the abstract methods: how prompts are
encoded, the training loss, and its validation/evaluation hooks. Checkpoints hold only trainable tensors (the base
is re-loaded from its source): megabytes for a LoRA, the whole denoiser for `adapter=full`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from operator import attrgetter
from typing import ClassVar, Dict, Iterable, List, Optional, Set, Tuple

import lightning as L
import torch

from simpletuner_pl.config.schema import AdapterConfig, ModelConfig, OptimizerConfig, TrainConfig
from simpletuner_pl.config.validation import ValidationConfig
from simpletuner_pl.data.batch import TEXT_KEYS, Batch
from simpletuner_pl.inference import InferenceCall
from simpletuner_pl.memory.placement import is_self_placing
from simpletuner_pl.memory.tread import TokenRouter
from simpletuner_pl.models.adapted import AdaptedMixin
from simpletuner_pl.models.family import FamilySpec
from simpletuner_pl.models.fingerprint import describe
from simpletuner_pl.optimizers import build_optimizer, set_mode

CLIP_MAX_LENGTH = 77


class DiffusionModule(AdaptedMixin, L.LightningModule, ABC):
    spec: ClassVar[FamilySpec]
    weight_probe: ClassVar[str]  # a parameter never stored as integers: its dtype is the compute dtype
    router: Optional[TokenRouter] = None  # TREAD (build.assemble_module), for families with routed blocks

    def __init__(self, components: Dict[str, object], model: ModelConfig, adapter: AdapterConfig,
                 train: TrainConfig, optimizer: OptimizerConfig, quantised: Optional[Dict[str, str]] = None):
        super().__init__()
        self.model_cfg, self.adapter_cfg, self.train_cfg, self.optimizer_cfg = model, adapter, train, optimizer
        self.quantised = dict(quantised or {})  # component → precision it was quantised to
        self.strict_loading = False  # checkpoints carry the adapter only
        self.frozen_names = [n for n, c in components.items() if isinstance(c, torch.nn.Module)]
        for name, component in components.items():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False).eval()
            setattr(self, name, component)
        self.placed_elsewhere: Set[str] = set()  # components Lightning must not move (offload_during_startup)
        self._text_cache: Dict[str, Dict[str, torch.Tensor]] = {}
        self.lora_init_state = self.attach_adapter()
        # Lightning keeps each submodule's mode through fit, so the denoiser must be put in train mode here
        # (adapter dropout, bitsandbytes' training path); the frozen encoders stay in eval.
        self.denoiser.train()

    # ---- the family's part -------------------------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(self, prompts: List[str]) -> Dict[str, torch.Tensor]:
        """Text conditioning of each prompt (`prompt_embeds`, `pooled_prompt_embeds`, `attention_mask`)."""

    @abstractmethod
    def training_loss(self, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def validation_pipeline(self):
        """The family's diffusers pipeline over this module's own (adapter-carrying) components."""

    @abstractmethod
    def validation_call(self, validation: ValidationConfig, prompt: str, width: int, height: int,
                        adapter_strength: float = 1.0) -> InferenceCall:
        """How one validation image is made (`validation.*`, a prompt-library entry's adapter strength): rendered by
        the validation callback and written into the model card's snippet from this one record."""

    @abstractmethod
    def pipeline_loading_code(self, adapter_dir: str, strength: float = 1.0) -> List[str]:
        """Python lines that load the base pipeline exactly as validation builds it (scheduler, precision, component
        overrides) plus the adapter in `adapter_dir` (at a prompt's `strength` where that is not a pipeline
        argument), ending with a `pipe` variable."""

    @abstractmethod
    def preview_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The pipeline's intermediate latents as a Tiny AutoEncoder decodes them."""

    @abstractmethod
    def eval_losses(self, batch: Batch, num_timesteps: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(σ grid, loss at each σ) of one batch, deterministic for a seeded RNG."""

    # ---- components --------------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.spec.denoiser_name)

    @property
    def text_encoder_names(self) -> Tuple[str, ...]:
        return self.spec.text_encoders

    @property
    def weight_dtype(self) -> torch.dtype:
        return attrgetter(self.weight_probe)(self.denoiser).dtype  # not next(parameters()): may be uint8

    @property
    def dtype_name(self) -> str:
        """The denoiser's compute dtype as `torch.<name>` spells it (model card snippets)."""
        return str(self.weight_dtype).removeprefix("torch.")

    @property
    def component_dtype(self) -> str:
        """The dtype the pipeline's components were loaded in (a fully trained denoiser is fp32 whatever it)."""
        return str(self.vae.dtype).removeprefix("torch.")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _apply(self, fn, recurse: bool = True):
        """Lightning's `.to(device)` skips components that place themselves (group offload, model CPU offload) or
        wait elsewhere: moving them whole onto the GPU is exactly the peak those options avoid."""
        placed = {n: m for n, m in self._modules.items()
                  if m is not None and (n in getattr(self, "placed_elsewhere", ()) or is_self_placing(m))}
        self._modules.update(dict.fromkeys(placed))
        try:
            return super()._apply(fn, recurse)
        finally:
            self._modules.update(placed)

    def train(self, mode: bool = True):
        """`module.train()` (e.g. after a validation round) must not turn on dropout in the frozen encoders."""
        super().train(mode)
        for name in self.frozen_names:
            if name != self.spec.denoiser_name:
                getattr(self, name).eval()
        return self

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- training ----------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int):
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=self.train_cfg.batch_size)
        if batch.get("is_regularisation"):  # towards the base model's own prediction: a curve of its own
            self.log_this_step("train/regularisation_loss", loss)
        self.log("lr", self.lr_schedulers().get_last_lr()[0], on_step=True, batch_size=self.train_cfg.batch_size)
        return loss

    def log_this_step(self, name: str, value: torch.Tensor) -> None:
        """A metric of some steps only, at the trainer's logging cadence: Lightning's `self.log` would repeat its
        last value on the steps that do not log it."""
        trainer = self.trainer
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            for logger in trainer.loggers:
                logger.log_metrics({name: float(value)}, step=trainer.global_step)

    def configure_model(self) -> None:
        """Lightning's hook for sharding strategies: one that shards (`strategy=fsdp`) knows which blocks to wrap
        (`simpletuner_pl.strategies`); the others have no `shard` and leave the model whole."""
        shard = getattr(self.trainer.strategy, "shard", None)
        if shard is not None:
            shard(self.denoiser)

    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        opt = self.optimizer_cfg
        optimizer = build_optimizer(self.trainable_parameters(), opt)
        scheduler = get_scheduler(opt.lr_scheduler, optimizer, num_warmup_steps=opt.warmup_steps,
                                  num_training_steps=self.train_cfg.max_steps, power=opt.lr_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        set_mode(self.optimizers(), train=True)  # schedule-free optimizers: forward on the training sequence

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        set_mode(self.optimizers(), train=False)  # between steps the weights are the averaged (exported) ones

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    # ---- encoding (shared by the families and by the data caches) ----------------------------------------------
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, mode: bool = False) -> torch.Tensor:
        """Pixels in [-1, 1] → one posterior sample (`mode=True`: the posterior mode, as pipelines encode an input
        image), shifted (if the VAE has a shift) and scaled."""
        vae = self.vae
        posterior = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
        latents = posterior.mode() if mode else posterior.sample()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    @staticmethod
    def mask_of(batch: Batch, latents: torch.Tensor) -> Optional[torch.Tensor]:
        """The batch's loss mask at the latents' resolution ([B, 1, h, w] in [0, 1], area-averaged), or None."""
        mask = batch.get("loss_mask")
        if mask is None:
            return None
        return torch.nn.functional.interpolate(mask.to(latents.device, torch.float32), size=latents.shape[-2:],
                                               mode="area")

    def latents_of(self, batch: Batch) -> torch.Tensor:
        """The batch's latents in fp32 (noise and targets in fp32 whatever the VAE dtype), encoded if uncached."""
        latents = batch["latents"] if "latents" in batch else self.encode_images(batch["pixel_values"])
        return latents.float()

    def text_of(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """The batch's cached text conditioning, or its captions encoded (once per distinct caption)."""
        if "prompt_embeds" in batch:
            return {k: batch[k] for k in TEXT_KEYS if k in batch}
        return self.text_conditioning(batch["captions"])

    def cache_identity(self) -> Dict[str, str]:
        """Strings that change whenever the VAE or the text encoders would encode differently; the data caches key
        their entries on them."""
        texts = [describe(getattr(self, n), self.quantised.get(n, "no_change")) for n in self.text_encoder_names]
        tokenizers = [str(len(getattr(self, n))) for n in self.spec.tokenizers]
        return {"vae": describe(self.vae), "text": "|".join(texts + tokenizers)}

    def text_conditioning(self, captions: List[str]) -> Dict[str, torch.Tensor]:
        """Encode each distinct caption once per run (captions repeat every epoch)."""
        missing = sorted({c for c in captions if c not in self._text_cache})
        if missing:
            encoded = self.encode_prompts(missing)
            for i, caption in enumerate(missing):
                self._text_cache[caption] = {k: v[i] for k, v in encoded.items()}
        return {k: torch.stack([self._text_cache[c][k] for c in captions]) for k in self._text_cache[captions[0]]}
