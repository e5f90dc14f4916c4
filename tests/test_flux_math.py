"""The Flux loss and token layout, checked against computations written here without the module's helpers."""

import torch

from helpers import tiny_flux_module


def pack(x):  # [B,C,H,W] -> [B, H/2*W/2, 4C], 2x2 patches, channel-major inside a patch
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, c, h, w):
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h, w):
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def test_loss_matches_independent_flow_matching_computation():
    module = tiny_flux_module().eval()
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 16, 8, 12, generator=g), torch.randn(2, 16, 8, 12, generator=g)
    sigmas = torch.tensor([0.3, 0.8])
    text = module.encode_prompts(["a photo of a cat", "a rocket"])
    with torch.no_grad():
        loss = module.flow_matching_loss(latents, noise, sigmas, text)

        s = sigmas.view(-1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        out = module.transformer(
            hidden_states=pack(noisy), timestep=sigmas, guidance=torch.ones(2),
            pooled_projections=text["pooled_prompt_embeds"], encoder_hidden_states=text["prompt_embeds"],
            txt_ids=torch.zeros(text["prompt_embeds"].shape[1], 3), img_ids=image_ids(8, 12),
        ).sample
        expected = ((unpack(out, 16, 8, 12) - (noise - latents)) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert loss.dtype == torch.float32


def test_guidance_value_reaches_the_transformer():
    module = tiny_flux_module("model.guidance_value=3.5").eval()
    latents, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    text = module.encode_prompts(["x"])
    with torch.no_grad():
        a = module.flow_matching_loss(latents, noise, torch.tensor([0.5]), text)
        module.model_cfg.guidance_value = 1.0
        b = module.flow_matching_loss(latents, noise, torch.tensor([0.5]), text)
    assert a != b


def test_packing_round_trip_and_ids():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 8, 12)
    packed = FluxPipeline._pack_latents(x, 2, 16, 8, 12)
    assert packed.shape == (2, 4 * 6, 64)
    torch.testing.assert_close(packed, pack(x))
    torch.testing.assert_close(FluxPipeline._unpack_latents(packed, 8 * 8, 12 * 8, 8), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32)
    assert ids.shape == (24, 3)
    torch.testing.assert_close(ids, image_ids(8, 12))


def test_vae_latents_are_shifted_and_scaled():
    module = tiny_flux_module()
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.manual_seed(0)
    latents = module.encode_images(pixels)
    torch.manual_seed(0)
    raw = module.vae.encode(pixels).latent_dist.sample()
    torch.testing.assert_close(latents, (raw - 0.1159) * 0.3611)
    assert latents.shape == (1, 16, 8, 8)


def test_text_conditioning_encodes_each_caption_once():
    module = tiny_flux_module()
    calls = []
    original = module.encode_prompts
    module.encode_prompts = lambda prompts: calls.append(list(prompts)) or original(prompts)
    first = module.text_conditioning(["b", "a", "b"])
    second = module.text_conditioning(["a", "b"])
    assert calls == [["a", "b"]]
    torch.testing.assert_close(first["prompt_embeds"][1], second["prompt_embeds"][0])
    assert first["prompt_embeds"].shape == (3, 64, 32) and first["pooled_prompt_embeds"].shape == (3, 32)
