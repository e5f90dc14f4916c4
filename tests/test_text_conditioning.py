"""What the transformer is conditioned on: the pipeline's own T5 sequence, the attention mask of masked training
(in training, evaluation and inference alike) and the embedded guidance value."""

import pytest
import torch

from helpers import tiny_flux_module

CAPTIONS = ["a photo of a red cat", "a blue house on the street at night in snow"]


@pytest.fixture(scope="module")
def modules():
    """The same tiny weights (seeded) with and without attention-masked training, the LoRA made non-trivial."""
    built = {"plain": tiny_flux_module(), "masked": tiny_flux_module("model.attention_masked_training=true")}
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(3)
        for name, param in built["plain"].transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    built["masked"].transformer.load_state_dict(built["plain"].transformer.state_dict())
    for module in built.values():
        module.eval()
    return built


def velocity(module, text, seed=0):
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn(len(text["prompt_embeds"]), 16, 8, 8, generator=generator)
    return module.predict_velocity(noisy, torch.full((len(noisy),), 0.6), text)


def scrambled_padding(text):
    """The same conditioning with random values at every pad position."""
    pads = ~text["attention_mask"].bool()[..., None]
    noise = torch.randn_like(text["prompt_embeds"]) * 5
    return {**text, "prompt_embeds": torch.where(pads, noise, text["prompt_embeds"])}


def test_default_conditioning_is_the_pipelines_encode_prompt(modules):
    module = modules["plain"]
    pipe = module.validation_pipeline()
    embeds, pooled, _ = pipe.encode_prompt(CAPTIONS, None, max_sequence_length=module.model_cfg.t5_max_length)
    ours = module.encode_prompts(CAPTIONS)
    assert torch.equal(ours["prompt_embeds"], embeds) and torch.equal(ours["pooled_prompt_embeds"], pooled)


def test_zero_padding_zeroes_the_pad_outputs_and_changes_what_the_transformer_sees(modules):
    zero = tiny_flux_module("model.t5_padding=zero")
    unmodified, zeroed = modules["plain"].encode_prompts(CAPTIONS), zero.encode_prompts(CAPTIONS)
    mask = unmodified["attention_mask"].bool()
    assert torch.equal(zeroed["prompt_embeds"][mask], unmodified["prompt_embeds"][mask])
    assert zeroed["prompt_embeds"][~mask].abs().sum() == 0 and unmodified["prompt_embeds"][~mask].abs().sum() > 0
    zero.eval()
    a, b = velocity(zero, unmodified), velocity(zero, zeroed)
    assert ((a - b).norm() / a.norm()).item() > 0.01  # the reason `unmodified` is the default


def test_masked_training_output_ignores_the_pad_positions(modules):
    text = modules["masked"].encode_prompts(CAPTIONS)
    assert (~text["attention_mask"].bool()).any()
    scrambled = scrambled_padding(text)
    assert torch.equal(velocity(modules["masked"], text), velocity(modules["masked"], scrambled))
    assert not torch.allclose(velocity(modules["plain"], text), velocity(modules["plain"], scrambled))


def test_masked_training_equals_attending_only_the_real_tokens(modules):
    """A key mask over the pads is the same as cutting the sequence to its real tokens (text ids are all zero)."""
    masked, plain = modules["masked"], modules["plain"]
    text = masked.encode_prompts(CAPTIONS[:1])
    length = int(text["attention_mask"].sum())
    cut = {"prompt_embeds": text["prompt_embeds"][:, :length], "pooled_prompt_embeds": text["pooled_prompt_embeds"],
           "attention_mask": text["attention_mask"][:, :length]}
    torch.testing.assert_close(velocity(masked, text), velocity(plain, cut), rtol=1e-5, atol=1e-6)


def test_the_eval_loss_is_masked_too(modules):
    masked = modules["masked"]
    text = masked.encode_prompts(CAPTIONS)
    latents = torch.randn(2, 16, 8, 8)
    losses = []
    for conditioning in (text, scrambled_padding(text)):
        torch.manual_seed(0)
        losses.append(masked.eval_losses({"latents": latents, **conditioning}, 4)[1])
    assert torch.equal(*losses)


def test_validation_masks_each_pass_with_its_own_prompt(modules):
    """Validation's transformer calls carry the key mask of the prompt, then of the negative prompt (true CFG)."""
    from simpletuner_pl.config.validation import ValidationConfig
    from simpletuner_pl.inference import run

    masked = modules["masked"]
    validation = ValidationConfig(num_inference_steps=2, guidance_real=3.0, no_cfg_until_timestep=0,
                                  negative_prompt="blurry")
    call = masked.validation_call(validation, CAPTIONS[1], 64, 64)
    seen = []
    hook = masked.transformer.register_forward_hook(  # sees the arguments after the pipeline's pre-hooks
        lambda m, args, kwargs, out: seen.append(kwargs["joint_attention_kwargs"]["attention_mask"]), with_kwargs=True)
    try:
        pipe = masked.validation_pipeline()
        pipe.set_progress_bar_config(disable=True)
        run(pipe, call, 0)
    finally:
        hook.remove()
    tokens = [masked.tokenizer_2(t, padding="max_length", max_length=64, truncation=True).attention_mask
              for t in (CAPTIONS[1], "blurry")]
    assert len(seen) == 4 and all(m.shape == (1, 1, 1, 64 + 16) for m in seen)
    for index, mask in enumerate(seen):
        assert mask[0, 0, 0, :64].long().tolist() == tokens[index % 2] and mask[0, 0, 0, 64:].all()


@pytest.mark.parametrize("mode, constant", [("constant", True), ("random-range", False)])
def test_guidance_modes(mode, constant):
    from simpletuner_pl.models.flux_inputs import guidance

    module = tiny_flux_module(f"model.guidance_mode={mode}", "model.guidance_min=1.0", "model.guidance_max=3.0",
                              "model.guidance_value=2.5")
    drawn = guidance(module.model_cfg, 256, torch.device("cpu"), training=True)
    if constant:
        assert torch.equal(drawn, torch.full((256,), 2.5))
    else:
        assert drawn.min() >= 1.0 and drawn.max() <= 3.0 and drawn.std() > 0.4
    # evaluation and validation use the constant value whatever the training mode
    assert torch.equal(guidance(module.model_cfg, 4, torch.device("cpu"), training=False), torch.full((4,), 2.5))
