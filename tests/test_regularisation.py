"""Regularisation data: the target is the base model's own prediction (adapter off, no gradient) on the same noisy
input and conditioning, for Flux and SDXL (ε and Diff2Flow), logged as train/regularisation_loss."""

import pytest
import torch

from helpers import CPU, compose, read_metrics, tiny_module, typed


def perturbed(module):
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(4)
        for name, param in module.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return module


def batch_for(module, regularisation: bool):
    channels = module.denoiser.config.in_channels // (4 if module.spec.name == "flux" else 1)
    batch = {"latents": torch.randn(2, channels, 8, 8), "captions": ["a cat", "a dog"],
             "is_regularisation": regularisation}
    return {**batch, **module.text_conditioning(batch["captions"])}


@pytest.mark.parametrize("family, extra", [("flux", ()), ("sdxl", ()), ("sdxl", ("train.diff2flow=true",))])
def test_the_target_is_the_adapter_disabled_prediction(family, extra):
    module = perturbed(tiny_module(*extra, family=family))
    batch = batch_for(module, regularisation=True)
    captured = {}
    original = module.predict_velocity if family == "flux" else module.predict

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        captured.setdefault("calls", []).append((torch.is_grad_enabled(), out.detach().clone()))
        return out

    setattr(module, "predict_velocity" if family == "flux" else "predict", spy)
    torch.manual_seed(0)
    loss = module.training_loss(batch)
    (teacher_grad, teacher), (student_grad, student) = captured["calls"]
    assert not teacher_grad and student_grad
    with torch.no_grad():  # the teacher is what the denoiser predicts with PEFT's adapters switched off
        module.denoiser.disable_adapters()
        torch.manual_seed(0)
        module.training_loss({**batch, "is_regularisation": False})
        module.denoiser.enable_adapters()
    assert torch.equal(captured["calls"][2][1], teacher)  # same noisy input, conditioning and σ/t draw
    if family == "sdxl" and extra:  # Diff2Flow: both predictions become flow velocities before the MSE
        assert loss > 0
    else:
        torch.testing.assert_close(loss, torch.nn.functional.mse_loss(student.float(), teacher.float()))
    assert all(p.requires_grad for p in module.trainable_parameters())  # PEFT's switch flipped, then restored
    loss.backward()
    assert all(p.grad is not None for p in module.trainable_parameters())


def test_the_assistant_stays_in_the_base_model_of_schnell(tiny_assistant_lora):
    schnell = perturbed(tiny_module("model=tiny_flux_schnell", f"model.assistant_lora_path={tiny_assistant_lora}",
                                    guidance_embeds=False))
    with schnell.base_model():
        assert schnell.transformer.active_adapters() == ["assistant"]
    assert sorted(schnell.transformer.active_adapters()) == ["assistant", "default"]
    assert not any(p.requires_grad for n, p in schnell.transformer.named_parameters() if ".assistant." in n)


def test_a_regularisation_only_run_leaves_a_zero_initialised_adapter_unchanged(tmp_path):
    """B = 0: the adapter-on prediction equals the base one, so the loss and every gradient are exactly zero and
    the exported LoRA still adds nothing (its B is zero)."""
    from safetensors.torch import load_file

    from simpletuner_pl.train import run

    run(compose("experiment=demo", CPU, "train.max_steps=4", "train.log_every_n_steps=1",
                "data.datasets.demo.resolution=64", "data.datasets.demo.is_regularisation_data=true",
                f"output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"))
    losses = read_metrics(tmp_path / "run", "train/regularisation_loss")
    assert [step for step, _ in losses] == [0, 1, 2, 3] and all(value == 0.0 for _, value in losses)
    lora = load_file(tmp_path / "run" / "adapter" / "pytorch_lora_weights.safetensors")
    assert all(v.abs().sum() == 0 for k, v in lora.items() if "lora_B" in k)


def test_regularisation_batches_are_whole_datasets_and_logged_apart(tmp_path):
    from simpletuner_pl.train import run

    run(compose("experiment=demo_regularisation", CPU, "train.max_steps=10", "train.log_every_n_steps=1",
                "data.datasets.demo.resolution=64", "data.datasets.regularisation.resolution=64",
                f"output_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"))
    regularisation = dict(read_metrics(tmp_path / "run", "train/regularisation_loss"))
    everything = dict(read_metrics(tmp_path / "run", "train/loss"))
    assert 0 < len(regularisation) < len(everything) == 10  # both datasets were drawn
    assert all(everything[step] == value for step, value in regularisation.items())


def test_a_full_fine_tune_has_no_base_model_to_regularise_towards():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import check_config

    with pytest.raises(ConfigError, match="which adapter=full overwrites"):
        check_config(typed("experiment=demo_regularisation", "adapter=full"))
