"""CLIP score of each validation image against its own prompt: `eval/clip_score` (mean) and its min/max/std.

Score = max(100 · cos(image embedding, text embedding), 0), torchmetrics' definition, so values compare with
published CLIP scores (SimpleTuner's docs quote the same metric divided by 100). It is computed here rather than
with torchmetrics' `CLIPScore`, which breaks on transformers 5 (`get_*_features` return model outputs now) and
accepts no local folders. Models: a transformers CLIP folder or hub id (default openai/clip-vit-large-patch14-336),
or `open_clip:<arch>[:<pretrained tag | weights file | random>]` (`<arch>` may be a model-config .json file, or
`hf-hub:org/repo`). Loaded once, on first use, on rank 0; kept on the CPU between rounds.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

import lightning as L
import torch

from simpletuner_pl.callbacks.model_sources import OPEN_CLIP, parse_open_clip
from simpletuner_pl.callbacks.rounds import log_metrics
from simpletuner_pl.config.validation import ClipScoreConfig
from simpletuner_pl.io import write_json

log = logging.getLogger(__name__)
Encoder = Tuple[torch.nn.Module, Callable, Callable]  # model, images -> features, texts -> features


def _features(output) -> torch.Tensor:
    return output if torch.is_tensor(output) else output.pooler_output  # transformers 5 returns model outputs


def load_encoder(spec: str) -> Encoder:
    if spec.startswith(OPEN_CLIP):
        import open_clip

        arch, pretrained = parse_open_clip(spec)
        if pretrained is None and not arch.startswith("hf-hub:"):
            log.warning("CLIP score with randomly initialised %s weights: scores are meaningless", arch)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
        tokenizer = open_clip.get_tokenizer(arch)
        device = lambda: next(model.parameters()).device
        return (model, lambda images: model.encode_image(torch.stack([preprocess(i) for i in images]).to(device())),
                lambda texts: model.encode_text(tokenizer(texts).to(device())))
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(spec), CLIPProcessor.from_pretrained(spec)
    max_length = model.config.text_config.max_position_embeddings
    return (model, lambda images: _features(model.get_image_features(
                **processor(images=images, return_tensors="pt").to(model.device))),
            lambda texts: _features(model.get_text_features(**processor.tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(model.device))))


def clip_scores(encoder: Encoder, images: List, prompts: List[str]) -> torch.Tensor:
    _, encode_images, encode_texts = encoder
    image = torch.nn.functional.normalize(encode_images(images).float(), dim=-1)
    text = torch.nn.functional.normalize(encode_texts(prompts).float(), dim=-1)
    return (100 * (image * text).sum(-1)).clamp(min=0).cpu()


class ClipScore(L.Callback):
    def __init__(self, clip_cfg: ClipScoreConfig):
        self.spec = clip_cfg.model  # checked at startup (model_sources.check_clip_source)
        self.encoder: Optional[Encoder] = None

    def on_validation_images(self, trainer: L.Trainer, module: L.LightningModule, step: int,
                             samples: List[Dict]) -> None:
        started = time.perf_counter()
        if self.encoder is None:
            self.encoder = load_encoder(self.spec)
            self.encoder[0].requires_grad_(False).eval()
        model = self.encoder[0].to(module.device)
        try:
            scores = clip_scores(self.encoder, [s["image"] for s in samples], [s["prompt"] for s in samples])
        finally:
            model.to("cpu")  # off the accelerator between rounds
        log_metrics(trainer, {"eval/clip_score": scores.mean().item(), "eval/clip_score_min": scores.min().item(),
                              "eval/clip_score_max": scores.max().item(),
                              "eval/clip_score_std": scores.std(unbiased=False).item(),
                              "eval/clip_score_seconds": time.perf_counter() - started}, step)
        per_image = {s["path"].name: round(v, 4) for s, v in zip(samples, scores.tolist())}
        write_json(samples[0]["path"].parent / "clip_scores.json", per_image)
