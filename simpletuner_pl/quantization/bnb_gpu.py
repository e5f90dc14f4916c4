"""`nf4-bnb` on a CUDA GPU: diffusers' own BitsAndBytesConfig quantises while loading.

diffusers refuses this path without a GPU ("No GPU found. A GPU is needed for quantization."), so elsewhere the
same NF4 `Linear4bit` layers are swapped in by `simpletuner_pl.quantization.backends.bnb_nf4_converter`. Settings
match that converter: NF4, double quantisation, compute in the model dtype, the kept modules left alone.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def nf4_config(dtype: torch.dtype, keep: Sequence[str]):
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=list(keep))


def load_nf4_with_diffusers(model_cls, location: str, sub: Optional[str], revision: Optional[str],
                            dtype: torch.dtype, keep: Sequence[str]) -> torch.nn.Module:
    if not torch.cuda.is_available():  # guarded by the caller; kept for direct use
        raise RuntimeError("diffusers' BitsAndBytesConfig needs a CUDA GPU; use quantize_via=cpu")
    return model_cls.from_pretrained(location, subfolder=sub, revision=revision, dtype=dtype,
                                     quantization_config=nf4_config(dtype, keep))
