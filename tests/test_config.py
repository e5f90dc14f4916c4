"""Config composition: groups, experiments, typed keys, choices and option combinations."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError

from simpletuner_pl.errors import ConfigError
from simpletuner_pl.preflight import check_config

from helpers import compose, typed

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment):
    cfg = typed(f"experiment={experiment}")
    assert check_config(cfg).name == cfg.model.family  # values, combinations and the family's own rules


@pytest.mark.parametrize("model, flavour, repo, t5", [
    ("flux", "krea", "black-forest-labs/FLUX.1-Krea-dev", 512),
    ("flux_krea", "krea", "black-forest-labs/FLUX.1-Krea-dev", 512),
    ("flux_dev", "dev", "black-forest-labs/FLUX.1-dev", 512),
    ("flux_schnell", "schnell", "black-forest-labs/FLUX.1-schnell", 256),
])
def test_flux_flavours(model, flavour, repo, t5):
    cfg = typed(f"model={model}")
    assert (cfg.model.flavour, cfg.model.pretrained_model_name_or_path, cfg.model.t5_max_length) == (flavour, repo, t5)
    assert cfg.train.flow_sigma_sampling == ("fast" if flavour == "schnell" else "logit_normal")


def test_quickstart_defaults():
    from simpletuner_pl.models.registry import family

    cfg = typed()
    assert cfg.adapter.target is None and family("flux").targets.default == "all"  # null = the family's default
    assert cfg.adapter.alpha is None and cfg.adapter.rank == 16
    assert cfg.model.guidance_value == 1.0
    assert cfg.train.flow_schedule_shift is None and not cfg.train.flow_schedule_auto_shift


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose("adapter.rnak=4")
    assert isinstance(err.value.__cause__, ConfigAttributeError)
    assert "Key 'rnak' not in 'AdapterConfig'" in str(err.value.__cause__)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose("train.max_steps=many")
    assert isinstance(err.value.__cause__, ValidationError)


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException, match="flux_dev"):
        compose("model=flux_pro")


@pytest.mark.parametrize("override, message", [
    ("adapter.init=lora_magic", "valid choices: default, gaussian, olora, pissa, loftq"),
    ("train.mixed_precision=fp8", "valid choices: bf16, fp16, no"),
    ("data.datasets.demo.caption_strategy=guess", "valid choices"),
    ("quant.base_model_default_dtype=fp16", "overflows in fp16"),
    ("train.flow_sigma_sampling=uniform", "schnell"),
])
def test_invalid_values_and_combinations(override, message):
    extra = ["model=flux_schnell"] if "sampling" in override else ["experiment=demo"]
    with pytest.raises(ConfigError, match=message):
        check_config(typed(*extra, override))
