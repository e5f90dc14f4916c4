"""Every adapter type really trains: each trainable parameter gets a gradient (a silent no-op adapter would not);
`adapter.init_lora` starts from a file in any layout diffusers reads (or a LoKr file), exactly, and refuses a file
that does not fit the configured adapter, naming the modules."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import CPU, compose, perturb_zero_factors, read_metrics, tiny_module, typed

ADAPTERS = {"lora": (), "dora": ("adapter.use_dora=true",), "lokr": ("adapter=lokr",), "full": ("adapter=full",)}


def flux_batch(module):
    return {"latents": torch.randn(1, 16, 8, 8), **module.encode_prompts(["a red cat"])}


def sdxl_batch(module):
    return {"latents": torch.randn(1, 4, 8, 8), "captions": ["a red cat"],
            **module.text_conditioning(["a red cat"])}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("family", ["flux", "sdxl"])
def test_every_trainable_parameter_gets_a_gradient(family, adapter):
    extra = ADAPTERS[adapter] + (("adapter.lycoris.target_module=[Attention]",) if family == "sdxl" and
                                 adapter == "lokr" else ())
    module = tiny_module(*extra, family=family)
    perturb_zero_factors(module)
    trainable = list(module.named_parameters())
    trainable = [(n, p) for n, p in trainable if p.requires_grad]
    assert trainable
    batch = (flux_batch if family == "flux" else sdxl_batch)(module)
    module.training_loss(batch).backward()
    dead = [n for n, p in trainable if p.grad is None or not p.grad.any()]
    assert dead == []


def test_a_lokr_file_starts_a_lokr_run_exactly(tmp_path):
    module = tiny_module("adapter=lokr")
    perturb_zero_factors(module)
    module.export_adapter(tmp_path / "adapter")
    path = tmp_path / "adapter" / "pytorch_lokr_weights.safetensors"
    again = tiny_module("adapter=lokr", f"adapter.init_lora={path}")
    saved = load_file(path)
    assert all(torch.equal(again.lokr.state_dict()[k], v) for k, v in saved.items())
    other = tiny_module("adapter=lokr", "adapter.lycoris.module_factors.FeedForward=4")
    other.export_adapter(tmp_path / "other")
    from simpletuner_pl.errors import ConfigError

    with pytest.raises(ConfigError, match="does not match the configured LoKr .*another shape"):
        tiny_module("adapter=lokr", f"adapter.init_lora={tmp_path / 'other'}")


def trained_lora(tmp_path, *overrides, family="flux"):
    module = tiny_module(*overrides, family=family)
    perturb_zero_factors(module)
    module.export_adapter(tmp_path)
    return module


@pytest.mark.parametrize("alpha", [None, 2.0])
def test_a_diffusers_file_starts_the_run_with_its_exact_delta(tmp_path, alpha):
    extra = (f"adapter.alpha={alpha}",) if alpha else ()
    source = trained_lora(tmp_path / "source", *extra)
    resumed = tiny_module(f"adapter.init_lora={tmp_path / 'source'}")  # alpha = rank here: B rescaled
    ours, theirs = resumed.adapter_state_dict(), source.adapter_state_dict()
    assert ours.keys() == theirs.keys()
    ratio = (alpha or 4) / 4
    for key in ours:
        expected = theirs[key] * (ratio if ".lora_B." in key else 1)
        torch.testing.assert_close(ours[key], expected, rtol=1e-6, atol=0)


def test_a_kohya_file_starts_an_sdxl_run_exactly(tmp_path):
    source = trained_lora(tmp_path / "source", "adapter.export_format=kohya", family="sdxl")
    kohya = tmp_path / "source" / "pytorch_lora_weights.safetensors"
    resumed = tiny_module(f"adapter.init_lora={kohya}", family="sdxl")
    ours, theirs = resumed.adapter_state_dict(), source.adapter_state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=0)


def test_files_that_do_not_fit_are_refused_with_the_modules(tmp_path):
    from simpletuner_pl.errors import ConfigError

    trained_lora(tmp_path / "wide", "adapter.target=all+ffs")
    with pytest.raises(ConfigError, match="the configured adapter.target does not: .*ff"):
        tiny_module(f"adapter.init_lora={tmp_path / 'wide'}")
    trained_lora(tmp_path / "rank8", "adapter.rank=8")
    with pytest.raises(ConfigError, match="another rank than the adapter: .*file 8, adapter.rank 4"):
        tiny_module(f"adapter.init_lora={tmp_path / 'rank8'}")
    garbage = tmp_path / "garbage.safetensors"
    save_file({"something.weight": torch.zeros(2)}, str(garbage))
    with pytest.raises(ConfigError, match="not transformer LoRA weights .*something.weight"):
        tiny_module(f"adapter.init_lora={garbage}")


def test_a_missing_file_fails_at_startup():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import validate

    with pytest.raises(ConfigError, match="adapter.init_lora=/nope.safetensors: no such file"):
        validate(typed("experiment=demo", "adapter.init_lora=/nope.safetensors"))


def test_a_narrow_lora_continues_on_wider_targets_from_the_cli(tmp_path):
    """SimpleTuner's recipe: train `context` first, then continue on `all` with --init_lora."""
    from simpletuner_pl.train import run

    common = (CPU, "experiment=demo", "train.max_steps=2", "train.log_every_n_steps=1",
              "data.datasets.demo.resolution=64", f"data.cache_dir={tmp_path / 'cache'}")
    run(compose(*common, "adapter.target=context", f"output_dir={tmp_path / 'first'}"))
    run(compose(*common, "adapter.target=all", f"adapter.init_lora={tmp_path / 'first' / 'adapter'}",
                f"output_dir={tmp_path / 'second'}"))
    assert len(read_metrics(tmp_path / "second", "train/loss")) == 2
    first = load_file(Path(tmp_path / "first" / "adapter" / "pytorch_lora_weights.safetensors"))
    second = load_file(Path(tmp_path / "second" / "adapter" / "pytorch_lora_weights.safetensors"))
    assert set(first) < set(second)


def test_lora_keys_are_refused_for_other_adapter_types():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import check_config

    with pytest.raises(ConfigError, match="adapter.type=lokr does not read adapter.use_dora"):
        check_config(typed("experiment=demo", "adapter=lokr", "adapter.use_dora=true"))
    with pytest.raises(ConfigError, match="adapter.type=lora does not read adapter.lycoris.factor"):
        check_config(typed("experiment=demo", "adapter.lycoris.factor=4"))
    with pytest.raises(ConfigError, match="adapter.type=full does not read adapter.rank"):
        check_config(typed("experiment=demo", "adapter=full", "adapter.rank=8"))
