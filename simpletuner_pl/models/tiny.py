"""What the tiny random-init pipelines share: the vendored tokenizers, a tiny CLIP text config, the dtype cast.

The tokenizers come from `simpletuner_pl/assets/tiny_tokenizers` (built by `experiments/make_tiny_tokenizers.py`):
a 2,000-merge prefix of CLIP's BPE and a small T5 unigram vocabulary, so the tiny models need no network.
"""

from __future__ import annotations

from typing import Any, Dict

from simpletuner_pl.paths import TINY_TOKENIZER_DIR


def load_tiny_tokenizers() -> tuple[Any, Any]:
    """`(clip_tokenizer, t5_tokenizer)` from the vendored asset folders (offline)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    return CLIPTokenizer.from_pretrained(TINY_TOKENIZER_DIR / "clip"), T5TokenizerFast.from_pretrained(
        TINY_TOKENIZER_DIR / "t5")


def clip_config(vocab_size: int, hidden_size: int):
    """A 2-layer CLIP text config (SDXL reads hidden_states[-2], so at least two layers)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden_size, hidden_act="quick_gelu",
        # The pooled output is read at the eos position, so eos must be the real <|endoftext|> id.
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )


def tiny_vae(latent_channels: int, **config: Any):
    """A 4-block AutoencoderKL (vae_scale_factor 8, like the real ones) with 8-16 channels per block."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4,
                         sample_size=64, **config)


def cast_modules(components: Dict[str, Any], dtype) -> Dict[str, Any]:
    """Random-init tiny components are built in fp32; cast the weighted ones to the run's dtype."""
    import torch

    if dtype != torch.float32:
        for component in components.values():
            if isinstance(component, torch.nn.Module):
                component.to(dtype)
    return components
