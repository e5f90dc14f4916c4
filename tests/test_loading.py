"""Loading a Flux pipeline folder with SimpleTuner's per-component overrides, and the pre-load source checks."""

import pytest
import torch

from simpletuner_pl.errors import ModelSourceError
from simpletuner_pl.models.loading_flux import load_components as load_flux_components
from simpletuner_pl.preflight import check_config, check_model_sources

from helpers import typed


@pytest.fixture(scope="module")
def other_flux_dir(tmp_path_factory):
    from simpletuner_pl.models.tiny_flux import save_tiny_flux_pipeline

    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("other_flux"), seed=1)


def first_weight(module):
    return next(module.parameters()).detach().clone()


def test_loads_every_component_from_a_pipeline_folder(tiny_flux_dir):
    cfg = typed("model=flux", f"model.pretrained_model_name_or_path={tiny_flux_dir}")
    check_model_sources(cfg, check_config(cfg))
    components = load_flux_components(cfg.model, torch.bfloat16)
    assert set(components) == {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                               "scheduler"}
    assert components["transformer"].x_embedder.weight.dtype == torch.bfloat16
    assert components["scheduler"].config.base_image_seq_len == 256


def test_transformer_and_vae_overrides(tiny_flux_dir, other_flux_dir):
    cfg = typed("model=flux", f"model.pretrained_model_name_or_path={tiny_flux_dir}",
                f"model.pretrained_transformer_model_name_or_path={other_flux_dir / 'transformer'}",
                "model.pretrained_transformer_subfolder=none",
                f"model.pretrained_vae_model_name_or_path={other_flux_dir}")
    check_model_sources(cfg, check_config(cfg))
    mixed = load_flux_components(cfg.model, torch.float32)
    base = load_flux_components(typed("model=flux", f"model.pretrained_model_name_or_path={tiny_flux_dir}").model,
                                torch.float32)
    other = load_flux_components(typed("model=flux", f"model.pretrained_model_name_or_path={other_flux_dir}").model,
                                 torch.float32)
    assert torch.equal(first_weight(mixed["transformer"]), first_weight(other["transformer"]))
    assert torch.equal(first_weight(mixed["vae"]), first_weight(other["vae"]))
    assert torch.equal(first_weight(mixed["text_encoder_2"]), first_weight(base["text_encoder_2"]))
    assert not torch.equal(first_weight(base["transformer"]), first_weight(other["transformer"]))


@pytest.mark.parametrize("override, message", [
    ("model.pretrained_transformer_model_name_or_path={base}", "has no transformer/config.json"),
    ("model.pretrained_vae_model_name_or_path=/no/such/vae", "does not exist"),
    ("model.pretrained_vae_model_name_or_path=someone/private-vae", "cannot reach the Hugging Face Hub"),
])
def test_bad_override_sources_are_named(override, message, tiny_flux_dir, tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    cfg = typed("model=flux", f"model.pretrained_model_name_or_path={tiny_flux_dir}",
                override.format(base=tmp_path), "model.pretrained_transformer_subfolder=transformer")
    with pytest.raises(ModelSourceError, match=message):
        check_model_sources(cfg, check_config(cfg))


@pytest.mark.parametrize("error, message", [
    ("GatedRepoError", "is gated: accept its license at https://huggingface.co/black-forest-labs/FLUX.1-dev"),
    ("RepositoryNotFoundError", "neither a local folder nor a hub repo you can see"),
    ("RevisionNotFoundError", "has no revision"),
])
def test_hub_answers_become_instructions(error, message, monkeypatch):
    """What the hub answers for gated/missing repos (no network here, so the answer is simulated)."""
    import httpx2
    import huggingface_hub
    from huggingface_hub import errors

    response = httpx2.Response(403, request=httpx2.Request("GET", "https://huggingface.co/api"))

    def refuse(*args, **kwargs):
        raise getattr(errors, error)("refused", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    cfg = typed("model=flux_dev")
    with pytest.raises(ModelSourceError, match=message):
        check_model_sources(cfg, check_config(cfg))
