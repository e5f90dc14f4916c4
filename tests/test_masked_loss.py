"""Masked loss: a mask dataset paired by relative path weights each latent element of the loss (white trains,
black is ignored), cropped exactly like its image; every image needs one; TREAD keeps the masked-in tokens."""

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from helpers import CPU, DEMO_DIR, compose, copy_demo_images, make_datamodule, read_metrics, tiny_flux_module, typed


def masks_for(images: Path, target: Path, skip: int = 0) -> Path:
    """A mask per image (left half white), except the first `skip` of them."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(images.glob("*.jpg"))[skip:]:
        with Image.open(path) as image:
            mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).rectangle((0, 0, mask.width // 2, mask.height), fill=255)
        mask.save(target / f"{path.stem}.png")
    return target


def config(images: Path, masks: Path, cache: Path, *overrides: str):
    return typed("experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={images}",
                 "data.datasets.main.resolution=64", "data.datasets.main.crop=true",
                 "data.datasets.main.conditioning_data=masks", "+dataset@data.datasets.masks=conditioning",
                 "data.datasets.masks.conditioning_type=mask", f"data.datasets.masks.instance_data_dir={masks}",
                 f"data.cache_dir={cache}", CPU, *overrides)


def test_black_masks_give_zero_loss_and_half_masks_count_half_the_elements():
    module = tiny_flux_module().eval()
    latents, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    text, sigmas = module.encode_prompts(["a", "b"]), torch.tensor([0.3, 0.8])
    full = module.flow_matching_loss(latents, noise, sigmas, text)
    assert module.flow_matching_loss(latents, noise, sigmas, text, mask=torch.zeros(2, 1, 8, 8)) == 0
    torch.testing.assert_close(module.flow_matching_loss(latents, noise, sigmas, text, mask=torch.ones(2, 1, 8, 8)),
                               full)
    half = torch.zeros(2, 1, 8, 8)
    half[..., :4] = 1
    with torch.no_grad():
        error = (module.predict_velocity((1 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise,
                                         sigmas, text) - (noise - latents)) ** 2
    expected = error[..., :4].sum() / error.numel()  # averaged over every element, not renormalised
    torch.testing.assert_close(module.flow_matching_loss(latents, noise, sigmas, text, mask=half), expected)


def test_batches_carry_masks_cropped_like_their_images(tmp_path):
    from simpletuner_pl.data.images import load_pixels

    images = copy_demo_images(tmp_path / "images")
    cfg = config(images, masks_for(images, tmp_path / "masks"), tmp_path / "cache")
    dm = make_datamodule(cfg, tmp_path)
    dm.build_caches(tiny_flux_module())
    by_bucket = {}
    for sample in dm.samples:
        assert Path(sample.mask).parent == tmp_path / "masks" and sample.reference is None
        by_bucket.setdefault(sample.geometry.bucket, []).append(
            load_pixels(sample.mask, sample.geometry)[:1].float() / 255)
    for batch in dm.train_dataloader():
        mask = batch["loss_mask"]
        assert mask.shape[1] == 1 and tuple(mask.shape[2:]) == tuple(8 * d for d in batch["latents"].shape[2:])
        assert any(torch.equal(mask[0], m) for m in by_bucket[(mask.shape[3], mask.shape[2])])
        assert 0 < mask.mean() < 1  # part of the left half: cropped as its image was


def test_every_image_without_a_mask_is_named_at_startup(tmp_path):
    from simpletuner_pl.data.catalog import discover_all
    from simpletuner_pl.errors import DataError

    images = copy_demo_images(tmp_path / "images")
    missing = sorted(images.glob("*.jpg"))[:2]
    cfg = config(images, masks_for(images, tmp_path / "masks", skip=2), tmp_path / "cache")
    with pytest.raises(DataError, match="2 image\\(s\\) without a usable mask") as error:
        discover_all(cfg.data, cfg.train, cfg.trainer)
    assert all(str(path) in str(error.value) for path in missing)


def test_tread_keeps_the_masked_in_tokens():
    from simpletuner_pl.models.flux_inputs import force_keep

    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1  # the left half of the latent
    keep = force_keep(mask, with_reference=False)
    assert keep.shape == (1, 16) and keep.view(4, 4)[:, :2].all() and not keep.view(4, 4)[:, 2:].any()
    assert force_keep(mask, with_reference=True).shape == (1, 32)
    module = tiny_flux_module("tread.routes=[{selection_ratio:0.75,start_layer_idx:0,end_layer_idx:-1}]")
    batch = {"latents": torch.randn(1, 16, 8, 8), "loss_mask": torch.nn.functional.interpolate(mask, scale_factor=8),
             **module.encode_prompts(["a cat"])}
    seen = []
    hook = module.router.blocks[0].register_forward_pre_hook(
        lambda b, a, kw: seen.append(kw["hidden_states"].shape[1]), with_kwargs=True)
    module.training_loss(batch).backward()
    hook.remove()
    assert seen == [8] and module.router.states[0].keep.tolist() == [0, 1, 4, 5, 8, 9, 12, 13]


def test_the_masked_demo_trains_from_the_cli_and_masks_lower_the_loss(tmp_path):
    from simpletuner_pl.train import run

    losses = {}
    for name, experiment in (("plain", "demo"), ("masked", "demo_masked")):
        run(compose(f"experiment={experiment}", CPU, "train.max_steps=3", "train.log_every_n_steps=1",
                    "data.datasets.demo.resolution=64", "data.datasets.demo.crop_style=center",
                    f"output_dir={tmp_path / name}", f"data.cache_dir={tmp_path / 'cache'}"))
        losses[name] = [value for _, value in read_metrics(tmp_path / name, "train/loss")]
    assert len(losses["masked"]) == 3
    assert losses["masked"][0] < losses["plain"][0]  # the same first batch with its border ignored


def test_masks_are_not_for_the_eval_loss():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import check_config

    held = ("+dataset@data.datasets.held=eval", f"data.datasets.held.instance_data_dir={DEMO_DIR}",
            "data.datasets.held.conditioning_data=demo_masks", "eval=loss")
    with pytest.raises(ConfigError, match="the eval loss is never masked"):
        check_config(typed("experiment=demo_masked", *held))
