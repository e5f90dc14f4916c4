"""FLUX.1 Kontext: reference images paired by relative path, their latents as FluxKontextPipeline encodes them, and
reference tokens laid out exactly as the pipeline lays them out."""

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from helpers import CPU, DEMO_DIR, make_datamodule, tiny_flux_module, typed

KONTEXT = ("model.flavour=kontext",)


@pytest.fixture(scope="module")
def module():
    return tiny_flux_module(*KONTEXT).eval()


def pairs(root: Path) -> tuple:
    """Targets (colour photos, one in a subfolder) and their greyscale references (one as PNG), plus one target
    without a reference and one whose reference has another aspect ratio."""
    targets, references = root / "targets", root / "references"
    for folder in (targets / "sub", references / "sub"):
        folder.mkdir(parents=True)
    photos = sorted(DEMO_DIR.glob("*.jpg"))
    for i, photo in enumerate(photos):
        relative = Path("sub" if i == 0 else ".") / photo.name
        with Image.open(photo) as image:
            image.save(targets / relative)
            grey = ImageOps.grayscale(image)
            if i == 1:
                grey.save((references / relative).with_suffix(".png"))
            elif i == 2:
                grey.crop((0, 0, grey.width // 2, grey.height)).save(references / relative)
            elif i != 3:
                grey.save(references / relative)
    return targets, references, photos


def kontext_config(targets: Path, references: Path, cache: Path, *overrides: str):
    return typed("experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={targets}",
                 "data.datasets.main.resolution=64", "data.datasets.main.conditioning_data=refs",
                 "+dataset@data.datasets.refs=conditioning", f"data.datasets.refs.instance_data_dir={references}",
                 f"data.cache_dir={cache}", CPU, *KONTEXT, *overrides)


def test_references_pair_by_relative_path_and_unusable_ones_are_skipped(tmp_path):
    from simpletuner_pl.data.catalog import discover_all

    targets, references, photos = pairs(tmp_path)
    cfg = kontext_config(targets, references, tmp_path / "cache")
    index = discover_all(cfg.data, cfg.train, cfg.trainer)["main"]
    paired = {Path(s.path).name: Path(s.reference).relative_to(references).as_posix() for s in index.samples}
    assert paired == {photos[0].name: f"sub/{photos[0].name}", photos[1].name: photos[1].with_suffix(".png").name,
                      photos[4].name: photos[4].name}
    reasons = {Path(e["path"]).name: e["reason"] for e in index.skipped}
    assert reasons[photos[2].name].startswith("its reference") and "another aspect ratio" in reasons[photos[2].name]
    assert reasons[photos[3].name].startswith("no reference image of the same relative path in data.datasets.refs")


def test_a_dataset_with_no_reference_at_all_is_an_error_naming_the_fix(tmp_path):
    from simpletuner_pl.data.catalog import discover_all
    from simpletuner_pl.errors import DataError

    targets, _, _ = pairs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.new("RGB", (32, 32)).save(empty / "unrelated.png")
    cfg = kontext_config(targets, empty, tmp_path / "cache")
    with pytest.raises(DataError, match="put each image's reference under the same relative path in "
                                        "data.datasets.refs.instance_data_dir"):
        discover_all(cfg.data, cfg.train, cfg.trainer)


@pytest.mark.parametrize("cached", [True, False])
def test_batches_carry_the_reference_latents_the_pipeline_would_encode(tmp_path, module, cached):
    """Cached (the default) or encoded per batch (`vae_cache_disable`): each batch's reference latents are the
    posterior mode of one paired reference, cropped like its target."""
    from simpletuner_pl.data.cache import TensorCache
    from simpletuner_pl.data.images import load_pixels, normalise

    targets, references, _ = pairs(tmp_path)
    extra = () if cached else ("data.datasets.main.vae_cache_disable=true",)
    cfg = kontext_config(targets, references, tmp_path / "cache", *extra)
    dm = make_datamodule(cfg, tmp_path)
    dm.build_caches(module)
    expected = [module.encode_images(normalise(load_pixels(s.reference, s.geometry))[None], mode=True)
                for s in dm.samples]
    assert len(TensorCache(cfg.data.vae_cache_dir("refs")).keys()) == (3 if cached else 0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert ("reference_latents" in batch) == cached and ("reference_pixel_values" in batch) != cached
        reference = module.reference_of(batch)
        matches = [e for e in expected if e.shape == reference.shape and torch.allclose(e, reference, atol=1e-5)]
        assert len(matches) == 1 and not torch.allclose(reference, module.latents_of(batch), atol=1e-2)


def test_reference_latents_are_the_posterior_mode(module):
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(module.encode_images(pixels, mode=True), module.encode_images(pixels, mode=True))
    torch.manual_seed(0)
    assert not torch.equal(module.encode_images(pixels), module.encode_images(pixels, mode=True))


def test_the_reference_changes_the_loss(module):
    latents, reference = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    text = module.encode_prompts(["an edit"])
    noise, sigmas = torch.randn_like(latents), torch.tensor([0.5])
    with_reference = module.flow_matching_loss(latents, noise, sigmas, text, reference)
    assert with_reference != module.flow_matching_loss(latents, noise, sigmas, text)


def test_token_layout_equals_the_kontext_pipelines(module, tmp_path):
    """The transformer call of FluxKontextPipeline, rebuilt from its latents by the training code, is identical."""
    from diffusers import FluxPipeline

    from simpletuner_pl.models.flux_inputs import transformer_inputs

    pipe = module.validation_pipeline()
    assert type(pipe).__name__ == "FluxKontextPipeline"
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    hook = module.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.setdefault("kwargs", kwargs) and None, with_kwargs=True)
    photo = ImageOps.fit(Image.open(DEMO_DIR / "chelsea-the-cat.jpg").convert("RGB"), (64, 48))
    try:
        pipe(image=photo, prompt="make it snow", width=64, height=48, max_area=64 * 48, _auto_resize=False,
             num_inference_steps=1, max_sequence_length=64, generator=torch.Generator().manual_seed(0),
             guidance_scale=module.model_cfg.guidance_value,
             output_type="latent")
    finally:
        hook.remove()
    theirs = seen["kwargs"]
    tokens = theirs["hidden_states"]
    assert tokens.shape == (1, 2 * 12, 64)  # 4x3 patches of the output, then 4x3 of the reference
    noisy = FluxPipeline._unpack_latents(tokens[:, :12], 48, 64, 8)
    reference = FluxPipeline._unpack_latents(tokens[:, 12:], 48, 64, 8)
    text = {"prompt_embeds": theirs["encoder_hidden_states"], "pooled_prompt_embeds": theirs["pooled_projections"]}
    ours, keep = transformer_inputs(noisy, text, torch.float32, module.model_cfg, True, False, reference)
    assert keep == 12
    for key in ("hidden_states", "img_ids", "txt_ids", "guidance", "encoder_hidden_states"):
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(ours["img_ids"][12:, 0], torch.ones(12))
    assert torch.equal(ours["img_ids"][:12, 0], torch.zeros(12))
    # the reference part is the pipeline's VAE encoding of the image: the posterior mode, shifted and scaled
    pixels = pipe.image_processor.preprocess(photo, 48, 64)
    torch.testing.assert_close(module.encode_images(pixels, mode=True), reference, rtol=0, atol=0)


def test_the_eval_loss_scores_edits_of_held_out_references(tmp_path, module):
    from simpletuner_pl.callbacks.eval_loss import batches
    from simpletuner_pl.data.held_out import discover_held_out, held_out_source
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import check_config

    targets, references, photos = pairs(tmp_path)
    held = ("+dataset@data.datasets.held=eval", f"data.datasets.held.instance_data_dir={targets}",
            "data.datasets.held.conditioning_data=held_refs", "+dataset@data.datasets.held_refs=conditioning",
            f"data.datasets.held_refs.instance_data_dir={references}", "eval=loss", "eval.eval_loss.resolution=64")
    cfg = typed("experiment=demo_kontext", *held, CPU)
    check_config(cfg)
    images = discover_held_out(held_out_source(cfg.data, cfg.eval.eval_loss), tmp_path / "cache", 10)
    assert sorted(Path(i.path).name for i in images) == sorted(p.name for p in (photos[0], photos[1], photos[4]))
    batch = next(batches(images, torch.device("cpu")))
    assert batch["reference_pixel_values"].shape == batch["pixel_values"].shape == (1, 3, 64, 64)
    torch.manual_seed(0)
    with_reference = module.eval_losses(batch, 3)[1]
    torch.manual_seed(0)
    without = module.eval_losses({k: v for k, v in batch.items() if k != "reference_pixel_values"}, 3)[1]
    assert not torch.equal(with_reference, without)
    with pytest.raises(ConfigError, match="its eval loss needs a dataset_type: eval dataset with a conditioning_data"):
        check_config(typed("experiment=demo_kontext", "eval=loss", f"eval.eval_loss.instance_data_dir={targets}"))
