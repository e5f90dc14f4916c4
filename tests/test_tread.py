"""TREAD token routing on a 4-block tiny Flux: exact when it routes nothing, shapes and kept tokens as promised,
gradients everywhere, training only, and the same under gradient checkpointing, compile, masking and quantisation."""

import pytest
import torch

from helpers import tiny_flux_module, typed

DEEPER = dict(num_layers=2, num_single_layers=2)  # blocks 0, 1 (double) and 2, 3 (single)


def routes(ratio: float, start: int = 1, end: int = -2) -> str:
    return f"tread.routes=[{{selection_ratio:{ratio},start_layer_idx:{start},end_layer_idx:{end}}}]"


def module_with(*overrides: str):
    return tiny_flux_module("adapter.init=gaussian", *overrides, **DEEPER)


def inputs(module, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(batch, 16, 8, 8, generator=generator)
    text = module.encode_prompts(["a red cat", "a blue car on a street"][:batch])
    return noisy, torch.full((batch,), 0.7), text


def perturb_lora_b(module) -> None:
    """Zero-initialised LoRA B blocks A's gradient by construction; give it values so every factor is reachable."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(5)
        for name, param in module.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)


def test_routes_resolve_negative_indices_and_refuse_bad_spans():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.memory.tread import Route, resolve_routes

    cfg = typed(routes(0.5, 2, -2)).tread.routes
    assert resolve_routes(cfg, 57) == [Route(0.5, 2, 55)]
    with pytest.raises(ConfigError, match="are not a span of this model's 4 blocks"):
        resolve_routes(typed(routes(0.5, 3, 1)).tread.routes, 4)
    overlapping = typed("tread.routes=[{start_layer_idx:0,end_layer_idx:2},{start_layer_idx:2,end_layer_idx:3}]")
    with pytest.raises(ConfigError, match="overlap"):
        resolve_routes(overlapping.tread.routes, 4)


def test_ratio_zero_equals_the_unrouted_forward_exactly():
    plain, routed = module_with(), module_with(routes(0.0))
    routed.denoiser.load_state_dict(plain.denoiser.state_dict())
    assert routed.router is not None and plain.router is None
    noisy, sigmas, text = inputs(plain)
    torch.manual_seed(0)
    expected = plain.predict_velocity(noisy, sigmas, text)
    torch.manual_seed(0)
    assert torch.equal(routed.predict_velocity(noisy, sigmas, text), expected)


def test_routed_blocks_see_the_kept_image_tokens_and_every_text_token():
    module = module_with(routes(0.5))
    seen = []  # registered after the router's pre-hooks: sees what each block runs on
    hooks = [block.register_forward_pre_hook(
        lambda b, a, kw: seen.append((kw["hidden_states"].shape[1], kw["encoder_hidden_states"].shape[1],
                                      kw["image_rotary_emb"][0].shape[0])), with_kwargs=True)
        for block in module.router.blocks]
    noisy, sigmas, text = inputs(module)
    try:
        out = module.predict_velocity(noisy, sigmas, text)
    finally:
        for hook in hooks:
            hook.remove()
    words = text["prompt_embeds"].shape[1]
    assert out.shape == noisy.shape
    assert seen == [(16, words, words + 16), (8, words, words + 8), (8, words, words + 8), (16, words, words + 16)]


def test_force_kept_tokens_are_always_kept():
    from simpletuner_pl.memory.tread import kept_positions

    force = torch.zeros(2, 64, dtype=torch.bool)
    force[0, [3, 10]], force[1, [40]] = True, True
    for _ in range(20):
        kept = kept_positions(64, 0.75, force, "cpu")
        assert len(kept) == 16 and {3, 10, 40} <= set(kept.tolist()) and torch.equal(kept, kept.sort().values)
    everything = torch.ones(1, 64, dtype=torch.bool)
    assert len(kept_positions(64, 0.75, everything, "cpu")) == 64  # the kept count grows to the forced ones


def test_every_trainable_parameter_gets_a_gradient_through_the_routes():
    module = module_with(routes(0.5, 0, -1))
    perturb_lora_b(module)
    noisy, sigmas, text = inputs(module)
    module.predict_velocity(noisy, sigmas, text).square().mean().backward()
    trainable = [(n, p) for n, p in module.denoiser.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), [
        n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]


def test_validation_and_evaluation_run_unrouted():
    plain, routed = module_with(), module_with(routes(0.5))
    routed.denoiser.load_state_dict(plain.denoiser.state_dict())
    noisy, sigmas, text = inputs(plain)
    plain.eval(), routed.eval()
    assert torch.equal(routed.predict_velocity(noisy, sigmas, text), plain.predict_velocity(noisy, sigmas, text))
    routed.train()
    with torch.no_grad():
        assert torch.equal(routed.predict_velocity(noisy, sigmas, text), plain.predict_velocity(noisy, sigmas, text))
    assert not torch.equal(routed.predict_velocity(noisy, sigmas, text), plain.predict_velocity(noisy, sigmas, text))


@pytest.mark.parametrize("option", ["train.gradient_checkpointing=true", "compile"])
def test_checkpointing_and_compile_give_the_same_loss_and_gradients(option):
    """A checkpointed block is recomputed in the backward pass: it must reuse its forward's selection."""
    from simpletuner_pl.memory.compile import compile_blocks

    results = []
    for variant in (False, True):
        extra = (option,) if variant and option != "compile" else ()
        torch.manual_seed(0)  # the same LoRA A init
        module = module_with(routes(0.5, 1, -1), *extra)
        if variant and option == "compile":
            compile_blocks(module.denoiser, backend="aot_eager")
        perturb_lora_b(module)
        noisy, sigmas, text = inputs(module)
        torch.manual_seed(1)
        loss = module.predict_velocity(noisy, sigmas, text).square().mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in module.denoiser.named_parameters()
                                        if p.requires_grad}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_masked_attention_keeps_its_image_columns_while_routing():
    """With attention-masked training the routed blocks get the mask cut to [text; kept image]: the output stays
    independent of the pad positions (SimpleTuner's single-block route masked every image key instead)."""
    module = module_with(routes(0.5, 1, -1), "model.attention_masked_training=true")
    noisy, sigmas, text = inputs(module)
    pads = ~text["attention_mask"].bool()[..., None]
    scrambled = {**text, "prompt_embeds": torch.where(pads, torch.randn_like(text["prompt_embeds"]),
                                                      text["prompt_embeds"])}
    torch.manual_seed(2)
    a = module.predict_velocity(noisy, sigmas, text)
    torch.manual_seed(2)
    assert torch.equal(a, module.predict_velocity(noisy, sigmas, scrambled))


def test_routing_trains_on_a_quantised_base():
    from simpletuner_pl.models.build import assemble_module
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    from helpers import quantise_tiny

    cfg = typed("experiment=demo", "quant=int8", routes(0.5, 1, -1), "debug=cpu")
    components, quantised = quantise_tiny(cfg, build_tiny_flux_components(**DEEPER))
    module = assemble_module(cfg, family("flux"), components, quantised)
    perturb_lora_b(module)
    noisy, sigmas, text = inputs(module)
    module.predict_velocity(noisy, sigmas, text).square().mean().backward()
    assert all(p.grad is not None for p in module.trainable_parameters())


def test_sdxl_has_no_tokens_to_route():
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import check_config

    with pytest.raises(ConfigError, match="SDXL's denoiser has no token blocks to route"):
        check_config(typed("experiment=demo", "model=tiny_sdxl", "tread=default"))


def test_routing_trains_from_the_command_line(tmp_path):
    from helpers import CPU, read_metrics, run_cli

    result = run_cli("experiment=demo", routes(0.5, 0, -1), "train.max_steps=3", "train.log_every_n_steps=1",
                     "data.datasets.demo.resolution=64", CPU, f"output_dir={tmp_path / 'run'}",
                     f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TREAD: 0.5 of the image tokens skip blocks 0..1" in (tmp_path / "run" / "cli.log").read_text()
    assert len(read_metrics(tmp_path / "run", "train/loss")) == 3


def test_the_speed_benchmark_runs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "bench_tread.py"
    spec = importlib.util.spec_from_file_location("bench_tread", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--sizes", "128", "--steps", "1", "--warmup", "0"])
    assert result[128]["plain"] > 0 and result[128]["tread"] > 0
