"""Tests for the tiny offline Flux pipeline, the vendored tokenizers and the demo dataset."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simpletuner_pl.models.tiny import load_tiny_tokenizers
from simpletuner_pl.models.tiny_flux import (
    TINY_FLUX_TRANSFORMER,
    build_tiny_flux_components,
    build_tiny_flux_pipeline,
    save_tiny_flux_pipeline,
)
from simpletuner_pl.paths import ASSETS_DIR, TINY_TOKENIZER_DIR

MODEL_KEYS = ("transformer", "vae", "text_encoder", "text_encoder_2")


def _state(components: dict) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t for k in MODEL_KEYS for n, t in components[k].state_dict().items()}


@pytest.fixture(scope="module")
def components() -> dict:
    return build_tiny_flux_components(seed=0)


def test_components_match_flux_pipeline_signature(components):
    import inspect

    from diffusers import FluxPipeline

    params = inspect.signature(FluxPipeline.__init__).parameters
    required = {n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty}
    assert set(components) == required
    assert components["transformer"].config.num_layers == TINY_FLUX_TRANSFORMER["num_layers"]


def test_same_seed_is_deterministic_and_seed_matters(components):
    a, b, c = _state(components), _state(build_tiny_flux_components(seed=0)), _state(build_tiny_flux_components(seed=1))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_flux_components(seed=7)
    assert torch.equal(torch.rand(4), expected)


def test_transformer_overrides():
    c = build_tiny_flux_components(num_single_layers=2, guidance_embeds=False)
    assert c["transformer"].config.num_single_layers == 2
    assert c["transformer"].config.guidance_embeds is False
    assert TINY_FLUX_TRANSFORMER["num_single_layers"] == 1  # constant not mutated


def test_save_reload_and_infer(tmp_path: Path):
    from diffusers import FluxPipeline

    out = save_tiny_flux_pipeline(tmp_path / "tiny_flux", seed=0)
    assert (out / "model_index.json").is_file()
    pipe = FluxPipeline.from_pretrained(out)
    ref = build_tiny_flux_pipeline(seed=0)
    w, w_ref = pipe.transformer.state_dict(), ref.transformer.state_dict()
    assert all(torch.equal(w[k], w_ref[k]) for k in w_ref)
    image = pipe(
        "a photo of a cat",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=3.5,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    arr = np.asarray(image, dtype=np.float32)
    assert image.size == (64, 64) and arr.shape == (64, 64, 3)
    assert np.isfinite(arr).all() and arr.std() > 5.0


def test_tokenizers_load_offline():
    from transformers import AutoTokenizer, T5TokenizerFast

    clip, t5 = load_tiny_tokenizers()
    assert len(clip) == 2514 and clip.model_max_length == 77
    assert (clip.bos_token, clip.eos_token, clip.pad_token) == ("<|startoftext|>", "<|endoftext|>", "<|endoftext|>")
    ids = clip("a photo of a cat").input_ids
    # Real CLIP ids for the words; bos/eos sit at the end of the truncated vocab.
    assert ids == [clip.bos_token_id, 320, 1125, 539, 320, 2368, clip.eos_token_id]
    assert (clip.bos_token_id, clip.eos_token_id) == (2512, 2513)

    auto_t5 = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR / "t5")
    fast_t5 = T5TokenizerFast.from_pretrained(TINY_TOKENIZER_DIR / "t5")
    assert 256 <= len(t5) <= 512
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    for text in ("a photo of an astronaut in an orange spacesuit, with the American flag behind her",
                 "Hello World! 42 (f/2.8) ~`@#$%^&*_+={}[]|\\:;\"'<>?"):
        ids = t5(text).input_ids
        assert ids[-1] == t5.eos_token_id and t5.unk_token_id not in ids
        assert auto_t5(text).input_ids == fast_t5(text).input_ids == ids
        assert t5.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_assets_small():
    size = sum(f.stat().st_size for f in TINY_TOKENIZER_DIR.rglob("*") if f.is_file())
    assert size < 400_000


def test_demo_dataset():
    demo = ASSETS_DIR / "demo"
    images = sorted(demo.glob("*.jpg"))
    assert len(images) >= 5
    for path in images:
        caption = path.with_suffix(".txt").read_text().strip()
        assert len(caption.split()) >= 5, path
        with Image.open(path) as im:
            assert im.mode == "RGB" and max(im.size) <= 640 and min(im.size) >= 256
            im.load()
        assert path.name in (demo / "LICENSE.md").read_text()
    assert sum(f.stat().st_size for f in demo.iterdir()) < 600_000
