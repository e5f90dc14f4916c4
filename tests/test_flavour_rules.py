"""Each flavour's rules, and the settings that would silently do nothing, fail at startup with the fix."""

import pytest

from helpers import DEMO_DIR, typed

REFS = ("+dataset@data.datasets.refs=conditioning", f"data.datasets.refs.instance_data_dir={DEMO_DIR}")
VALIDATE = ("validation=on", "validation.prompt=a cat")


@pytest.mark.parametrize("overrides, message", [
    (["model=tiny_flux_schnell", "train.flow_sigma_sampling=logit_normal"], "needs train.flow_sigma_sampling=fast"),
    (["model=tiny_flux_schnell", "model.assistant_lora_path=/x", "adapter=full"], "which needs adapter=lora"),
    (["model=tiny_flux_schnell", "model.guidance_value=3.5"], "has no guidance embedding, so model.guidance_value"),
    (["model=tiny_flux_libreflux", *VALIDATE, "validation.guidance=3.5", "validation.guidance_real=6"],
     "has no guidance embedding, so validation.guidance would do nothing"),
    (["model=tiny_flux_libreflux", "model.attention_masked_training=false"], "keep model.attention_masked_training"),
    (["model=tiny_flux_fluxbooru", "model.attention_masked_training=true"], "trained without T5 attention masking"),
    (["model.attention_masked_training=true", "model.attention_backend=flash"], "needs an attention backend that"),
    (["model=tiny_flux_fluxbooru", *VALIDATE, "validation.guidance_real=1"], "is de-distilled: its images need real"),
    ([*VALIDATE, "validation.guidance_real=2", "validation.num_inference_steps=2"], "true CFG .* would never run"),
    ([*VALIDATE, "validation.reference_image=/x.png"], "does not take one"),
    ([*REFS, "data.datasets.demo.conditioning_data=refs"], "feed FLUX.1 Kontext; model.flavour=krea does not"),
    (["model=tiny_flux_kontext"], "give dataset\\(s\\) demo a data.datasets.<id>.conditioning_data"),
    (["model=tiny_flux_kontext", "data=demo_kontext", *VALIDATE], "set validation.reference_image"),
    (["model=tiny_flux_kontext", "data=demo_kontext", "data.datasets.demo_references.resolution=512"],
     "data.datasets.demo_references.resolution would do nothing"),
    ([*REFS], "a conditioning dataset that no image dataset pairs with"),
    (["data.datasets.demo.conditioning_data=nope"], "no enabled dataset of that id"),
    (["data.datasets.demo.conditioning_type=reference_strict"], "belongs to conditioning datasets"),
    (["+dataset@data.datasets.refs=image", "data.datasets.refs.instance_data_dir=/x",
      "data.datasets.refs.dataset_type=conditioning"], "set data.datasets.refs.conditioning_type"),
    (["model.guidance_mode=random-range", "model.guidance_min=5"], "model.guidance_min=5 is above"),
    (["model.pretrained_model_name_or_path=/x"], "model.tiny=true builds a random-init model"),
    (["model.pretrained_vae_model_name_or_path=/v"], "model.pretrained_vae_model_name_or_path would do nothing"),
    (["model=tiny_sdxl", "model.attention_backend=flex"], "would do nothing for SDXL"),
    (["model.flavour=tiny"], "is not a flux flavour"),
    (["model.t5_padding=half"], "valid choices"),
])
def test_bad_flavour_settings_fail_at_startup(overrides, message):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(typed("experiment=demo", *overrides))


def test_a_missing_reference_image_fails_before_training():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import validate

    with pytest.raises(ConfigError, match="validation.reference_image=/nope.png is not an image file"):
        validate(typed("experiment=demo_kontext", "validation.reference_image=/nope.png"))


@pytest.mark.parametrize("model", ["tiny_flux", "tiny_flux_dev", "tiny_flux_schnell", "tiny_flux_kontext",
                                   "tiny_flux_fluxbooru", "tiny_flux_libreflux", "tiny_sdxl", "flux", "flux_dev",
                                   "flux_schnell", "flux_kontext", "flux_fluxbooru", "flux_libreflux", "sdxl"])
def test_every_model_file_passes_its_own_rules(model):
    from simpletuner_pl.preflight import check_config

    data = ["data=demo_kontext", "validation=off"] if "kontext" in model else []  # demo's prompts have no image
    check_config(typed("experiment=demo", f"model={model}", *data))
