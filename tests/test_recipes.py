"""Recipes (conf/experiment/): each composes and passes the startup checks, sets what its README row promises,
states only what differs from the composition it builds on, and its distinctive choices train on a tiny model."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from simpletuner_pl.preflight import validate

from helpers import CPU, ROOT, compose, copy_demo_images, read_metrics, typed

EXPERIMENTS = ROOT / "conf" / "experiment"
RECIPES = {  # recipe → what it must set (the README's Recipes table)
    "flux_krea_lora_int8": {"model.flavour": "krea", "quant.base_model_precision": "int8-quanto",
                            "quant.text_encoder_2_precision": "no_change", "quant.base_model_default_dtype": "bf16",
                            "optimizer.name": "adamw_bf16", "adapter.type": "lora", "adapter.rank": 16,
                            "adapter.target": None, "train.mixed_precision": "bf16", "train.max_grad_norm": 1.0,
                            "train.gradient_checkpointing": True, "train.batch_size": 1,
                            "data.datasets.pseudo-camera-10k-flux.is_regularisation_data": True,
                            "data.datasets.dreambooth-subject.resolution": 1024,
                            "data.datasets.dreambooth-subject-512.resolution": 512},
    "flux_lowest_vram": {"model.flavour": "krea", "quant.base_model_precision": "nf4-bnb", "quant.quantize_via": "cpu",
                         "optimizer.name": "bnb_lion8bit_paged", "data.datasets.subject.resolution": 512,
                         "train.batch_size": 1, "train.gradient_accumulation_steps": 1,
                         "train.gradient_checkpointing": True, "offload.vae_enable_tiling": True,
                         "offload.offload_during_startup": True},
    "flux_lokr": {"model.flavour": "krea", "adapter.type": "lokr", "optimizer.name": "adamw", "optimizer.lr": 1e-3},
    "flux_schnell_lora": {"model.flavour": "schnell", "train.flow_sigma_sampling": "fast", "model.t5_max_length": 256,
                          "model.assistant_lora_path": "ostris/FLUX.1-schnell-training-adapter",
                          "quant.base_model_precision": "int8-quanto", "adapter.type": "lora"},
    "sdxl_lora": {"model.family": "sdxl", "adapter.type": "lora", "adapter.rank": 16, "optimizer.lr": 1e-4,
                  "train.gradient_checkpointing": True, "data.datasets.main.resolution": 1.0,
                  "data.datasets.main.resolution_type": "area", "validation.guidance": 3.4},
    "sdxl_full": {"model.family": "sdxl", "adapter.type": "full", "quant.base_model_precision": "no_change",
                  "optimizer.name": "bnb_adamw8bit", "optimizer.lr": 1e-6, "train.gradient_checkpointing": True,
                  "data.datasets.main.resolution": 1.0},
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_composes_passes_the_startup_checks_and_sets_what_it_promises(recipe):
    composed = compose(f"experiment={recipe}")
    settings = validate(typed(f"experiment={recipe}"))  # values, combinations, family rules, trainer.*, files
    assert settings.spec.name == composed.model.family
    assert {key: OmegaConf.select(composed, key) for key in RECIPES[recipe]} == RECIPES[recipe]


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_states_only_what_differs(recipe):
    """Every key the file sets changes the config its defaults list composes (dataset entries excepted: they copy
    SimpleTuner's multidatabackend.json field for field, as the data group does)."""
    doc = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS / f"{recipe}.yaml"))
    base = []
    for entry in doc.pop("defaults", []):
        if isinstance(entry, str):
            base.append(f"experiment={entry}")  # the preset it builds on
        else:
            ((group, option),) = entry.items()
            base.append(f"{group.removeprefix('override /')}={option}")
    baseline = compose(*base)
    same = {key: value for key, value in _flatten(doc)
            if not key.startswith("data.datasets.") and OmegaConf.select(baseline, key) == value}
    assert same == {}


def test_every_recipe_has_its_readme_row():
    readme = (ROOT / "README.md").read_text()
    recipes_section = readme[readme.index("### Recipes"):readme.index("## Architecture")]
    assert [name for name in RECIPES if f"`{name}`" not in recipes_section] == []


@pytest.fixture(scope="module")
def subject_dir(tmp_path_factory) -> Path:
    return copy_demo_images(tmp_path_factory.mktemp("subject") / "images")


def _tiny(recipe, subject_dir, assistant, tmp_path):
    """The recipe on its family's tiny model, with its dataset pointed at the bundled photos at 64 px."""
    if recipe.startswith("sdxl"):
        dataset = "data.datasets.main"
        return ["model=tiny_sdxl", f"{dataset}.instance_data_dir={subject_dir}", f"{dataset}.resolution=64",
                f"{dataset}.resolution_type=pixel_area", f"{dataset}.minimum_image_size=null",
                f"{dataset}.maximum_image_size=null", f"{dataset}.target_downsample_size=null",
                f"{dataset}.cache_dir_vae={tmp_path / 'vae'}", f"data.text_embeds.cache_dir={tmp_path / 'text'}"]
    model = ["model=tiny_flux_schnell", f"model.assistant_lora_path={assistant}"] if "schnell" in recipe else \
        ["model=tiny_flux"]
    return [*model, f"data.datasets.subject.instance_data_dir={subject_dir}", "data.datasets.subject.resolution=64"]


@pytest.mark.parametrize("recipe", ["flux_lowest_vram", "flux_schnell_lora", "sdxl_full"])
def test_recipe_trains_on_the_tiny_model(recipe, subject_dir, tiny_assistant_lora, tmp_path):
    """NF4 + paged 8-bit Lion + encoder offload; int8 + schnell's assistant; a full UNet with 8-bit AdamW."""
    from simpletuner_pl.train import run

    trainer = run(compose(f"experiment={recipe}", *_tiny(recipe, subject_dir, tiny_assistant_lora, tmp_path), CPU,
                          "train.max_steps=2", "train.log_every_n_steps=1", f"output_dir={tmp_path / 'run'}",
                          f"data.cache_dir={tmp_path / 'cache'}", "train.checkpoint_every_n_steps=2"))
    assert trainer.global_step == 2
    losses = [loss for _, loss in read_metrics(tmp_path / "run", "train/loss")]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    exported = "unet" if recipe == "sdxl_full" else "pytorch_lora_weights.safetensors"
    assert (tmp_path / "run" / "adapter" / exported).exists()
