"""End to end on CPU: the issue's exact command line and its output layout, `trainer.*` pass-through, and bad input
failing before anything loads. (The LoRA round trip and resume run for every family in test_families.py.)"""

from pathlib import Path

import pytest
import torch

from helpers import CPU, compose, copy_demo_images, read_metrics, run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_flux_dir, tmp_path_factory):
    """The issue's command, verbatim but for the paths."""
    images = copy_demo_images(tmp_path_factory.mktemp("images"))
    out = tmp_path_factory.mktemp("run")
    result = run_cli(
        "model=flux", f"model.pretrained_model_name_or_path={tiny_flux_dir}", "data=local",
        f"data.datasets.main.instance_data_dir={images}", "data.datasets.main.resolution=64", "train.max_steps=20",
        "train.batch_size=1", "adapter.rank=4", "optimizer.lr=1e-3", "validation=off", "trainer.accelerator=cpu",
        f"output_dir={out}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_command_writes_the_output_layout(trained):
    assert (trained / ".hydra" / "config.yaml").is_file()
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "lr", "step"} <= set(header)
    losses = [loss for _, loss in read_metrics(trained, "train/loss")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])  # adapter only, not the base


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.datasets.main.instance_data_dir=/nonexistent/images"], "does not exist"),
        (["data.datasets.main.instance_data_dir={empty}"], "no images"),
        (["model=flux", "model.pretrained_model_name_or_path=/nonexistent/model"], "does not exist"),
        (["model=flux", "model.pretrained_model_name_or_path=black-forest-labs/FLUX.1-dev"], "hf download"),
        (["model=flux", "model.pretrained_model_name_or_path={images}"], "model_index.json"),
        (["train.batch_size=9"], "no images detected in dataset main"),
        (["adapter.target=everything"], "valid choices: mmdit, all, all+ffs"),
        (["train.flow_schedule_shift=3", "train.flow_schedule_auto_shift=true"], "auto-shift"),
    ],
)
def test_bad_input_fails_fast_with_a_clear_message(overrides, message, images_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [o.format(empty=empty, images=images_dir) for o in overrides]
    result = run_cli("experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={images_dir}",
                     f"output_dir={tmp_path / 'out'}", CPU, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_unknown_key_is_rejected_by_hydra(tmp_path):
    result = run_cli("experiment=demo", "train.batch_sise=2", f"output_dir={tmp_path}")
    assert result.returncode != 0
    assert "Key 'batch_sise' not in 'TrainConfig'" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("trainer.max_stepz=3", "trainer.max_stepz is not a lightning.Trainer argument (did you mean max_steps"),
    ("trainer.max_steps=3", "trainer.max_steps is set from train.max_steps"),
    ("trainer.devices=[0,1,2]", "lightning.Trainer refused the arguments"),
])
def test_trainer_arguments_are_checked_against_lightnings_signature(override, message, tmp_path):
    result = run_cli("experiment=demo", CPU, override, f"output_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_any_trainer_argument_passes_through(tmp_path):
    """`trainer.*` reaches lightning.Trainer as given (here two Trainer arguments no config key of ours names)."""
    from simpletuner_pl.train import run

    trainer = run(compose("experiment=demo", CPU, "train.max_steps=3", "data.datasets.demo.resolution=64",
                          "trainer.limit_train_batches=2", "trainer.max_epochs=1", f"output_dir={tmp_path}"))
    assert trainer.limit_train_batches == 2 and trainer.max_epochs == 1
    assert trainer.global_step == 2  # one epoch of two batches, before train.max_steps=3
