"""On-demand text embeddings (`data.text_embeds.text_cache_ondemand`, issue 14): nothing is encoded at startup, a
caption is encoded and written the first time a batch draws it, and what training sees is bit for bit what the
up-front cache gives (either T5 padding, with attention masks), so the losses, a resume included, are the same."""

import logging

import pytest
import torch
from safetensors.torch import load_file

from helpers import CPU, compose, read_metrics, tiny_flux_module

SMALL = ("experiment=demo", CPU, "data.datasets.demo.resolution=64", "validation=off")
ONDEMAND = "data.text_embeds.text_cache_ondemand=true"
CAPTIONS = ["a cat", "", "a red car at night in the snow", "x" * 400, "a cat on the street"]


def train(out, *overrides, cache):
    from simpletuner_pl.train import run

    return run(compose(*SMALL, f"output_dir={out}", f"data.cache_dir={cache}", *overrides))


@pytest.mark.parametrize("padding", ["unmodified", "zero"])
def test_on_demand_entries_equal_the_up_front_ones_bitwise(padding, tmp_path, monkeypatch):
    from simpletuner_pl.data.cache import TensorCache, pad_text, text_key
    from simpletuner_pl.data.caching import texts_on_demand
    from simpletuner_pl.data.dataset import TextSource
    from simpletuner_pl.data.encode import encode_texts

    module = tiny_flux_module(f"model.t5_padding={padding}")
    max_length = module.model_cfg.t5_max_length
    keys = {c: text_key(c, module.cache_identity()["text"], max_length) for c in CAPTIONS}
    up_front = TensorCache(tmp_path / "up_front")
    encode_texts(module, [(keys[c], c) for c in CAPTIONS], up_front, 128)
    source = TextSource(TensorCache(tmp_path / "on_demand"), keys, max_length, ondemand=True)
    for batch in ([CAPTIONS[2], CAPTIONS[0]], [CAPTIONS[0], CAPTIONS[1], CAPTIONS[1]], CAPTIONS[3:]):
        got = texts_on_demand(module, source, batch)
        expected = pad_text([up_front.load(keys[c]) for c in batch], max_length)
        assert got.keys() == expected.keys()
        for name in got:
            assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name
        assert torch.equal(got["attention_mask"], module.encode_prompts(batch)["attention_mask"].cpu())
    for caption in CAPTIONS:  # the files themselves
        a, b = load_file(up_front.path(keys[caption])), load_file(source.cache.path(keys[caption]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if padding == "zero":  # stored trimmed to the real tokens, as up front
        assert source.cache.load(keys["a cat"])["prompt_embeds"].shape[0] < max_length
    calls = []
    monkeypatch.setattr(module, "encode_prompts", lambda prompts: calls.append(prompts))
    texts_on_demand(module, source, CAPTIONS)
    assert calls == [], "a caption already written is read, never encoded again"


def test_a_missing_entry_marks_the_batch_for_encoding_without_a_warning(tmp_path, caplog):
    from simpletuner_pl.data.cache import TensorCache
    from simpletuner_pl.data.dataset import BatchDataset, TextSource

    source = TextSource(TensorCache(tmp_path), {"a cat": "k"}, 8, ondemand=True)
    with caplog.at_level(logging.WARNING):
        assert BatchDataset([], [], [], source, 0)._text(["a cat"]) == {"_text_pending": True}
    assert "unreadable" not in caplog.text


@pytest.mark.parametrize("conditioning", [(), ("model.t5_padding=zero", "model.attention_masked_training=true")],
                         ids=["unmodified", "zero+masked"])
def test_training_with_on_demand_embeds_equals_the_up_front_run_step_for_step(conditioning, tmp_path, caplog):
    """The on-demand run is also interrupted and resumed: it repeats the up-front run exactly all the same."""
    from simpletuner_pl.data.cache import TensorCache

    args = (*conditioning, "data.datasets.demo.caption_dropout_probability=0.3", "train.log_every_n_steps=1",
            "train.checkpoint_every_n_steps=3")
    up_front, on_demand = tmp_path / "up_front", tmp_path / "on_demand"
    train(up_front, "train.max_steps=7", *args, cache=tmp_path / "cache_a")
    caplog.set_level(logging.INFO)
    train(on_demand, "train.max_steps=3", ONDEMAND, *args, cache=tmp_path / "cache_b")
    assert "text cache on demand: 6 captions" in caplog.text  # 5 captions + "" (caption dropout)
    written = TensorCache(tmp_path / "cache_b" / "text").keys()
    assert 1 <= len(written) <= 3, "batch size 1: 3 steps draw at most 3 captions"
    train(on_demand, "train.max_steps=7", ONDEMAND, *args, cache=tmp_path / "cache_b")
    assert read_metrics(on_demand, "train/loss") == read_metrics(up_front, "train/loss")  # exact floats
    assert len(read_metrics(on_demand, "train/loss")) == 7
    a = load_file(up_front / "adapter" / "pytorch_lora_weights.safetensors")
    b = load_file(on_demand / "adapter" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "unreadable" not in caplog.text
