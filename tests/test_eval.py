"""CLIP score (tiny transformers CLIP and tiny open_clip) and the stable eval loss, through the real trainer."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import CPU, DEMO_DIR, compose, read_metrics

HELD_OUT = ("chelsea-the-cat", "coffee-cup")


def tiny_transformers_clip(directory: Path) -> str:
    """Random CLIPModel (cpu_environment.md §7 recipe) with the vendored tiny CLIP tokenizer, as a local folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from simpletuner_pl.models.tiny import load_tiny_tokenizers

    tokenizer, _ = load_tiny_tokenizers()
    v = len(tokenizer)
    config = CLIPConfig(
        text_config=dict(vocab_size=v, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=v - 2, eos_token_id=v - 1,
                         pad_token_id=v - 1),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(directory)
    return str(directory)


def tiny_open_clip(directory: Path) -> str:
    """A 1.6M-parameter open_clip model: a model-config .json plus a weights file, as users pass local models."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "tiny-clip-test.json"
    config.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                  "patch_size": 8, "head_width": 16},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                               "layers": 1}}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip-test").state_dict(), directory / "weights.pt")
    return f"open_clip:{config}:{directory / 'weights.pt'}"


@pytest.mark.parametrize("kind", ["transformers", "open_clip"])
def test_clip_score_is_finite_and_logged(kind, tmp_path):
    from simpletuner_pl.train import run

    spec = (tiny_transformers_clip if kind == "transformers" else tiny_open_clip)(tmp_path / "clip")
    run(compose("experiment=demo", "validation=on", "validation.prompt=a photo of a cat",
                "validation.resolutions=[64x64,64x32]", "validation.num_inference_steps=2", "eval=clip",
                f"eval.clip_score.model={spec}", "train.max_steps=1", "data.datasets.demo.resolution=64",
                f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}", CPU))
    stats = {key: read_metrics(tmp_path / "run", f"eval/clip_score{key}") for key in ("", "_min", "_max", "_std")}
    assert [step for step, _ in stats[""]] == [0, 1]  # the step-0 benchmark and the end
    for i in range(2):
        mean, low, high, std = (stats[k][i][1] for k in ("", "_min", "_max", "_std"))
        assert all(math.isfinite(v) for v in (mean, low, high, std))
        assert 0 <= low <= mean <= high <= 100 and std >= 0
    per_image = json.loads((tmp_path / "run/validation/step_1/clip_scores.json").read_text())
    assert set(per_image) == {"validation-64x64.png", "validation-64x32.png"}


def test_clip_score_matches_torchmetrics_definition(tmp_path):
    """Same number as torchmetrics' clip_score (max(100 cos, 0)) given the same model and processor."""
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPModel, CLIPProcessor

    from simpletuner_pl.callbacks.clip_score import clip_scores, load_encoder

    directory = tiny_transformers_clip(tmp_path / "clip")

    class TensorFeatures(CLIPModel):  # torchmetrics 1.9 expects tensors from get_*_features (transformers 4)
        def get_image_features(self, *a, **k):
            return super().get_image_features(*a, **k).pooler_output

        def get_text_features(self, *a, **k):
            return super().get_text_features(*a, **k).pooler_output

    reference_model = (TensorFeatures.from_pretrained(directory), CLIPProcessor.from_pretrained(directory))
    images = [Image.open(DEMO_DIR / f"{name}.jpg").convert("RGB").resize((64, 64)) for name in HELD_OUT]
    prompts = ["a cat on a sofa", "a cup of coffee"]
    ours = clip_scores(load_encoder(directory), images, prompts)
    for image, prompt, score in zip(images, prompts, ours):
        pixels = torch.from_numpy(__import__("numpy").asarray(image).copy()).permute(2, 0, 1)
        expected = clip_score(pixels, prompt, model_name_or_path=lambda: reference_model)
        assert score.item() == pytest.approx(expected.item(), abs=1e-3)


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    """Run A without eval; run B with eval loss (and validation) every 2 steps. Same seed, same data."""
    from simpletuner_pl.train import run

    tmp = tmp_path_factory.mktemp("eval")
    train, held_out = tmp / "train", tmp / "held_out"
    for image in DEMO_DIR.glob("*.jpg"):
        target = held_out if image.stem in HELD_OUT else train
        target.mkdir(exist_ok=True)
        shutil.copy(image, target / image.name)
        shutil.copy(image.with_suffix(".txt"), target / f"{image.stem}.txt")
    common = ["experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={train}",
              "data.datasets.main.resolution=64", "data.num_workers=0", "train.max_steps=4",
              "train.log_every_n_steps=1", CPU]
    plain = run(compose(*common, f"data.cache_dir={tmp / 'cache_a'}", f"output_dir={tmp / 'a'}"))
    evaluated = run(compose(*common, f"data.cache_dir={tmp / 'cache_b'}", f"output_dir={tmp / 'b'}", "eval=loss",
                            f"eval.eval_loss.instance_data_dir={held_out}", "eval.eval_loss.every_n_steps=2",
                            "validation=on", "validation.prompt=a cat", "validation.resolutions=64",
                            "validation.num_inference_steps=2", "validation.every_n_steps=3"))
    return tmp, plain, evaluated


def test_training_loss_sequence_is_unchanged_by_eval_and_validation(eval_runs):
    tmp, _, _ = eval_runs
    plain, evaluated = read_metrics(tmp / "a", "train/loss"), read_metrics(tmp / "b", "train/loss")
    assert len(plain) == 4 and plain == evaluated  # exact floats, step by step


def test_eval_loss_is_bit_identical_for_the_same_weights(eval_runs):
    from simpletuner_pl.callbacks.eval_loss import EvalLoss
    from simpletuner_pl.callbacks.rounds import isolated

    tmp, _, trainer = eval_runs
    callback = next(cb for cb in trainer.callbacks if isinstance(cb, EvalLoss))
    module = trainer.lightning_module
    with isolated(trainer, module):
        sigmas, first = callback.evaluate(module)
    with isolated(trainer, module):
        _, second = callback.evaluate(module)
    assert torch.equal(first, second)
    logged = read_metrics(tmp / "b", "eval/loss")
    assert [step for step, _ in logged] == [0, 2, 4]
    assert logged[-1][1] == first.mean().item()  # the step-4 round saw exactly these weights
    assert logged[0][1] != logged[-1][1]  # and the adapter did move the loss
    per_sigma = read_metrics(tmp / "b", "eval/loss_t27")
    assert len(sigmas) == 28 and per_sigma[-1][1] == first[27].item()
    assert sigmas[0] == 1.0 and bool((sigmas[:-1] > sigmas[1:]).all())


def test_eval_loss_writes_plot_history_and_best_adapter(eval_runs):
    tmp, _, _ = eval_runs
    history = [json.loads(line) for line in (tmp / "b/eval/losses.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 4] and all(len(h["losses"]) == 28 for h in history)
    with Image.open(tmp / "b/eval/loss_vs_sigma.png") as plot:
        assert plot.size == (720, 440) and len(plot.getcolors(1 << 16)) > 2
    best = json.loads((tmp / "b/adapter/best/best.json").read_text())
    lowest = min(history, key=lambda h: h["eval_loss"])
    assert best == {"step": lowest["step"], "eval_loss": lowest["eval_loss"]}
    assert (tmp / "b/adapter/best/pytorch_lora_weights.safetensors").is_file()
    assert f"lowest eval loss {lowest['eval_loss']:.6g} at step {lowest['step']}" in (
        tmp / "b/adapter/README.md").read_text()


def test_resume_keeps_eval_history_and_best_and_skips_the_startup_round(eval_runs, tmp_path):
    from simpletuner_pl.train import run

    tmp, _, _ = eval_runs
    args = ["experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={tmp / 'train'}",
            "data.datasets.main.resolution=64", "train.checkpoint_every_n_steps=2", CPU,
            f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}", "eval=loss",
            f"eval.eval_loss.instance_data_dir={tmp / 'held_out'}", "eval.eval_loss.every_n_steps=2",
            "eval.eval_loss.timesteps=4"]
    run(compose(*args, "train.max_steps=2"))
    first = (tmp_path / "run/eval/losses.jsonl").read_text().splitlines()
    run(compose(*args, "train.max_steps=4"))  # resumes from checkpoints/last.ckpt (step 2)
    history = [json.loads(line) for line in (tmp_path / "run/eval/losses.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 2, 4]  # step 0 is not evaluated again, step 2 not repeated
    assert [json.dumps(h) for h in history[:2]] == first
    best = json.loads((tmp_path / "run/adapter/best/best.json").read_text())
    assert best["eval_loss"] == min(h["eval_loss"] for h in history)


def test_dataset_type_eval_is_held_out_and_feeds_the_eval_loss(eval_runs, tmp_path):
    """A `dataset_type: eval` dataset in the data config: never trained on, evaluated like the folder option."""
    from omegaconf import OmegaConf

    from simpletuner_pl.config import DatasetConfig
    from simpletuner_pl.train import run

    tmp, _, evaluated = eval_runs
    cfg = OmegaConf.to_object(compose(
        "experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={tmp / 'train'}",
        "data.datasets.main.resolution=64", "data.num_workers=0", "train.max_steps=4", "train.log_every_n_steps=1",
        CPU, f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}",
        "eval=loss", "eval.eval_loss.every_n_steps=2"))
    cfg.data.datasets["held_out"] = DatasetConfig(dataset_type="eval", instance_data_dir=str(tmp / "held_out"),
                                                  caption_strategy="textfile", resolution=64)
    run(cfg)
    buckets = json.loads((tmp_path / "run" / "data" / "buckets.json").read_text())
    assert "held_out" not in buckets and "main" in buckets  # the eval images were not indexed for training
    ours = read_metrics(tmp_path / "run", "eval/loss")
    folder_option = read_metrics(tmp / "b", "eval/loss")
    assert [step for step, _ in ours] == [step for step, _ in folder_option]
    # same held-out images, same training: the same eval losses
    assert [loss for _, loss in ours] == pytest.approx([loss for _, loss in folder_option], abs=1e-6)
