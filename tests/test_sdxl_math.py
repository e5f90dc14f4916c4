"""SDXL objectives and conditioning, checked against diffusers' pipeline/scheduler and against formulas written here."""

import numpy as np
import pytest
import torch

from simpletuner_pl.losses import prediction_to_flow, sample_timesteps, sigma_to_timestep

from helpers import typed

PROMPTS = ["a photo of a cat", "a rocket"]


@pytest.fixture(scope="module")
def module():
    from simpletuner_pl.models.build import build_module

    cfg = typed("model=tiny_sdxl", "quant.base_model_default_dtype=fp32", "adapter.rank=4")
    return build_module(cfg).eval()


@pytest.fixture(scope="module")
def pipe(module):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(vae=module.vae, text_encoder=module.text_encoder,
                                     text_encoder_2=module.text_encoder_2, tokenizer=module.tokenizer,
                                     tokenizer_2=module.tokenizer_2, unet=module.unet, scheduler=module.scheduler)


def alphas_cumprod():
    """SDXL's schedule from its published config (scaled_linear, 0.00085 → 0.012, 1000 steps), without diffusers."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


def time_ids(pipe, original, crop, target, n):
    ids = pipe._get_add_time_ids(original, crop, target, torch.float32, text_encoder_projection_dim=32)
    return ids.repeat(n, 1)


def unet(module, noisy, t, embeds, pooled, ids):
    return module.unet(noisy, t, encoder_hidden_states=embeds,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample


def test_prompt_encoding_is_the_pipelines(module, pipe):
    ours = module.encode_prompts(PROMPTS)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    assert ours["prompt_embeds"].shape == (2, 77, 64)  # CLIP-L ⊕ CLIP-G penultimate states
    torch.testing.assert_close(ours["prompt_embeds"], embeds)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_ddpm_loss_matches_diffusers_noising_and_targets(module, pipe, prediction_type, gamma):
    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    module.prediction_type, module.train_cfg.snr_gamma = prediction_type, gamma
    text = module.encode_prompts(PROMPTS + ["x"])
    ids = time_ids(pipe, (64, 64), (0, 0), (64, 64), 3)
    with torch.no_grad():
        cond = {"prompt_embeds": text["prompt_embeds"], "pooled_prompt_embeds": text["pooled_prompt_embeds"],
                "time_ids": ids}
        loss = module.ddpm_loss(latents, noise, t, cond)

        scheduler = DDPMScheduler.from_config(module.scheduler.config)
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        out = unet(module, noisy, t, text["prompt_embeds"], text["pooled_prompt_embeds"], ids)
        per_sample = ((out - target) ** 2).mean(dim=(1, 2, 3))
        if gamma is not None:
            ab = torch.tensor(alphas_cumprod()[t.numpy()], dtype=torch.float32)
            snr = ab / (1 - ab)
            per_sample = per_sample * (torch.clamp(snr, max=gamma) / (snr if prediction_type == "epsilon" else snr + 1))
    module.train_cfg.snr_gamma = None
    torch.testing.assert_close(loss, per_sample.mean())


def test_min_snr_weights_for_known_timesteps(module):
    from simpletuner_pl.losses import min_snr_weights

    t = torch.tensor([0, 100, 500, 999])
    ab = alphas_cumprod()[t.numpy()]
    snr = ab / (1 - ab)  # ≈ [1175, 20.1, 0.216, 0.00468]
    assert snr[0] > 1000 and 5 < snr[1] < 50 and snr[2] < 1 and snr[3] < 0.01
    eps = min_snr_weights(module.scheduler, t, 5.0, "epsilon")
    v = min_snr_weights(module.scheduler, t, 5.0, "v_prediction")
    torch.testing.assert_close(eps, torch.tensor(np.minimum(snr, 5) / snr, dtype=torch.float32), rtol=1e-4, atol=0)
    torch.testing.assert_close(v, torch.tensor(np.minimum(snr, 5) / (snr + 1), dtype=torch.float32), rtol=1e-4,
                               atol=0)
    assert eps[2:].tolist() == [1.0, 1.0]  # below γ the ε weight is 1: noisy steps keep full weight


def capture_unet_inputs(module):
    seen = {}

    def hook(_, args, kwargs):
        seen.update(kwargs, sample=args[0])

    return seen, module.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_time_ids_of_a_cropped_sample_reach_the_unet(module, pipe):
    batch = {"latents": torch.randn(2, 4, 12, 8), "captions": PROMPTS,
             "original_size": torch.tensor([[1200, 900], [96, 64]]),  # (h, w) before the crop
             "crop_top_left": torch.tensor([[64, 32], [0, 0]]), "target_size": torch.tensor([[96, 64], [96, 64]])}
    seen, handle = capture_unet_inputs(module)
    with torch.no_grad():
        module.training_loss(batch)
    handle.remove()
    expected = torch.cat([time_ids(pipe, (1200, 900), (64, 32), (96, 64), 1),
                          time_ids(pipe, (96, 64), (0, 0), (96, 64), 1)])
    torch.testing.assert_close(seen["added_cond_kwargs"]["time_ids"], expected)
    assert expected[0].tolist() == [1200, 900, 64, 32, 96, 64]


def test_time_ids_default_to_the_uncropped_batch_size(module):
    ids = module.time_ids({}, torch.zeros(1, 4, 8, 12))
    assert ids.tolist() == [[64, 96, 0, 0, 64, 96]]


@pytest.mark.parametrize("drop_key", [False, True])
def test_dropped_captions_zero_text_and_time_ids(module, drop_key):
    batch = {"latents": torch.randn(2, 4, 8, 8), "captions": ["a cat", "" if not drop_key else "a dog"]}
    if drop_key:  # the batch's own flag wins over the caption text
        batch["drop_conditioning"] = torch.tensor([False, True])
    seen, handle = capture_unet_inputs(module)
    with torch.no_grad():
        module.training_loss(batch)
    handle.remove()
    added = seen["added_cond_kwargs"]
    for tensor in (seen["encoder_hidden_states"], added["text_embeds"], added["time_ids"]):
        assert tensor[1].abs().sum() == 0 and tensor[0].abs().sum() > 0


def test_stratified_timesteps_cover_every_segment():
    for seed in range(50):
        t = sample_timesteps(4, 1000, generator=torch.Generator().manual_seed(seed))
        assert [int(x) // 250 for x in sorted(t)] == [0, 1, 2, 3]
    single = torch.cat([sample_timesteps(1, 1000) for _ in range(200)])
    assert single.min() >= 0 and single.max() <= 999 and len(set(single.tolist())) > 100


def test_offset_noise_shifts_whole_channels():
    from simpletuner_pl.losses import offset_noise

    noise = torch.randn(2, 4, 8, 8)
    shifted = offset_noise(noise, 0.1, 1.0) - noise
    assert shifted.abs().sum() > 0
    torch.testing.assert_close(shifted, shifted[..., :1, :1].expand_as(shifted))
    assert torch.equal(offset_noise(noise, 0.0, 1.0), noise) and torch.equal(offset_noise(noise, 0.1, 0.0), noise)


def test_diff2flow_hand_computed_case():
    # σ = 0.5 ⇒ ᾱ = 0.5, a = s = √½. x0 = 2, ε = -1 ⇒ x_t = √½·2 - √½ = √½; flow target ε - x0 = -3.
    a = s = torch.tensor([0.5**0.5])
    x_t, target = torch.full((1, 1, 1, 1), 0.5**0.5), -3.0
    perfect_eps, perfect_v = torch.full_like(x_t, -1.0), torch.full_like(x_t, -3 * 0.5**0.5)  # v = a·ε - s·x0
    assert prediction_to_flow(perfect_eps, x_t, a, s, "epsilon").item() == pytest.approx(target)
    assert prediction_to_flow(perfect_v, x_t, a, s, "v_prediction").item() == pytest.approx(target)
    # A zero prediction: ε-model ⇒ x̂0 = x_t/a = 1, flow -1, loss 4; v-model ⇒ x̂0 = ε̂ = ½, flow 0, loss 9.
    zero = torch.zeros_like(x_t)
    assert (prediction_to_flow(zero, x_t, a, s, "epsilon").item() - target) ** 2 == pytest.approx(4.0)
    assert (prediction_to_flow(zero, x_t, a, s, "v_prediction").item() - target) ** 2 == pytest.approx(9.0)


def test_sigma_maps_to_the_ddpm_timestep(module):
    ab = alphas_cumprod()
    table = np.sqrt(1 - ab) / (np.sqrt(ab) + np.sqrt(1 - ab))
    steps = [0, 10, 500, 999]
    t = sigma_to_timestep(torch.tensor(table[steps]), module.scheduler.alphas_cumprod)
    torch.testing.assert_close(t, torch.tensor(steps, dtype=torch.float32), atol=1e-3, rtol=0)
    mid = sigma_to_timestep(torch.tensor([(table[500] + table[501]) / 2]), module.scheduler.alphas_cumprod)
    assert 500 < mid.item() < 501


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diff2flow_loss_matches_independent_computation(module, pipe, prediction_type):
    g = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sigmas = torch.tensor([0.3, 0.7])
    module.prediction_type = prediction_type
    text = module.encode_prompts(PROMPTS)
    ids = time_ids(pipe, (64, 64), (0, 0), (64, 64), 2)
    cond = {"prompt_embeds": text["prompt_embeds"], "pooled_prompt_embeds": text["pooled_prompt_embeds"],
            "time_ids": ids}
    with torch.no_grad():
        loss = module.diff2flow_loss(latents, noise, sigmas, cond)

        ab = (1 - sigmas) ** 2 / ((1 - sigmas) ** 2 + sigmas**2)
        a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
        x_t = a * latents + s * noise
        table = np.sqrt(1 - alphas_cumprod()) / (np.sqrt(alphas_cumprod()) + np.sqrt(1 - alphas_cumprod()))
        t = torch.tensor(np.interp(sigmas.numpy(), table, np.arange(1000)), dtype=torch.float32)
        out = unet(module, x_t, t, text["prompt_embeds"], text["pooled_prompt_embeds"], ids)
        if prediction_type == "epsilon":
            x0_hat, eps_hat = (x_t - s * out) / a, out
        else:
            x0_hat, eps_hat = a * x_t - s * out, s * x_t + a * out
        expected = ((eps_hat - x0_hat - (noise - latents)) ** 2).mean()
    module.prediction_type = "epsilon"
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_validation_pipeline_renders_with_the_trained_adapter_and_its_strength(module):
    from types import SimpleNamespace

    from simpletuner_pl.inference import run

    validation = SimpleNamespace(guidance=5.0, negative_prompt="blurry", num_inference_steps=2)
    pipe = module.validation_pipeline()
    assert pipe.unet is module.unet and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    lora_b = [p for n, p in module.unet.named_parameters() if ".lora_B." in n]

    def render(strength):
        call = module.validation_call(validation, "a cat", 64, 64, strength)
        assert call.kwargs["negative_prompt"] == "blurry"
        return run(pipe, call, 0, output_type="pt")

    base = render(1.0)  # B = 0: the adapter is still a no-op
    with torch.no_grad():
        for p in lora_b:
            p.normal_(std=0.5)
    try:
        assert module.validation_call(validation, "a", 64, 64, 0.5).kwargs["cross_attention_kwargs"] == {"scale": 0.5}
        assert (render(1.0) - base).abs().max() > 1e-3
        torch.testing.assert_close(render(0.0), base)
    finally:
        with torch.no_grad():
            for p in lora_b:
                p.zero_()


def test_eval_losses_sweep_the_schedule_with_one_noise_draw(module):
    batch = {"latents": torch.randn(2, 4, 8, 8), "captions": PROMPTS}
    torch.manual_seed(0)
    sigmas, losses = module.eval_losses(batch, 4)
    assert sigmas.shape == losses.shape == (4,) and torch.isfinite(losses).all()
    assert sigmas[0] > 0.9 and sigmas[-1] < 0.05 and (sigmas.diff() < 0).all()  # pure noise → nearly clean
    torch.manual_seed(0)
    noise = torch.randn_like(batch["latents"])
    with torch.no_grad():
        last = module.ddpm_loss(batch["latents"], noise, torch.zeros(2, dtype=torch.long),
                                module.conditioning(batch, batch["latents"]), weighted=False)
    torch.testing.assert_close(losses[-1], last)
