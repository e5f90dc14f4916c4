"""Validation previews: intermediate latents decoded by a Tiny AutoEncoder and POSTed to a webhook as they form.

A full VAE decode per denoising step would double the cost of validation; a Tiny AutoEncoder (TAEF1 for Flux,
TAESD/TAESDXL for SD) decodes in milliseconds. Every `validation.preview_steps` steps the pipeline's latents go to
`module.preview_latents` (family-specific unpacking/unscaling), through the decoder, and to `validation.webhook_url`
as JSON: `{"event": "validation.image", "image": <base64 PNG>, "step", "total_steps", "resolution": [W, H], ...}`.
A webhook that is down costs a logged warning, never the run. Standard library HTTP only (urllib).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Optional

import torch

from simpletuner_pl.config.validation import ValidationConfig

log = logging.getLogger(__name__)


def post_json(url: str, payload: Dict[str, Any], timeout_s: float) -> bool:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError) as err:
        log.warning("validation preview: POST to %s failed (%s)", url, err)
        return False


class PreviewWebhook:
    def __init__(self, validation_cfg: ValidationConfig, decoder: str):
        self.url, self.timeout_s = validation_cfg.webhook_url, validation_cfg.webhook_timeout_s
        self.every = validation_cfg.preview_steps
        self.location = decoder
        self.decoder: Optional[torch.nn.Module] = None
        self.posted = 0

    def _load(self) -> torch.nn.Module:
        if self.decoder is None:
            from diffusers import AutoencoderTiny

            self.decoder = AutoencoderTiny.from_pretrained(self.location).requires_grad_(False).eval()
        return self.decoder

    def attach(self, module) -> None:
        self._load().to(module.device)

    def detach(self) -> None:
        if self.decoder is not None:
            self.decoder.to("cpu")  # off the accelerator between rounds

    def decode(self, module, latents: torch.Tensor, height: int, width: int):
        from PIL import Image

        decoder = self._load()
        raw = module.preview_latents(latents, height, width).to(decoder.device, decoder.dtype)
        pixels = decoder.decode(raw).sample[0].float().clamp(-1, 1).add(1).mul(127.5).round().byte()
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())

    def step_callback(self, module, info: Dict[str, Any], width: int, height: int,
                      total_steps: int) -> Callable[..., Dict[str, torch.Tensor]]:
        """A diffusers `callback_on_step_end` posting every `preview_steps`-th step (and never changing latents)."""

        def on_step_end(pipe, index: int, timestep, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            step = index + 1
            if step % self.every == 0:
                buffer = io.BytesIO()
                self.decode(module, tensors["latents"], height, width).save(buffer, format="PNG")
                payload = {"event": "validation.image", **info, "step": step, "total_steps": total_steps,
                           "timestep": float(timestep), "resolution": [width, height], "mime_type": "image/png",
                           "image": base64.b64encode(buffer.getvalue()).decode("ascii")}
                self.posted += post_json(self.url, payload, self.timeout_s)
            return {}

        return on_step_end
