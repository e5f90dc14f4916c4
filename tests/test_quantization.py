"""Every quant level on the tiny Flux: weights really quantised, LoRA the only trainable tensors, finite loss, the
saved LoRA loads on the unquantised base; streaming == in-place quantisation; the quantised-weights cache."""

import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import CPU, compose, quantise_tiny, typed

LEVELS = ["int8", "int4", "int2", "fp8", "nf4", "nf4_torchao"]
KEPT = ["x_embedder", "context_embedder", "proj_out", "norm_out.linear"]


def assert_quantised(layer, level):
    """The base layer's class and storage: integer/float8/4-bit codes, not a float matrix."""
    weight = layer.weight
    if level in ("int8", "int4", "int2", "fp8"):
        from optimum.quanto import QLinear, qfloat8, qint2, qint4, qint8

        assert isinstance(layer, QLinear)
        assert weight.qtype == {"int8": qint8, "int4": qint4, "int2": qint2, "fp8": qfloat8}[level]
        assert weight._data.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}.get(level, torch.uint8)
    elif level == "nf4":
        import bitsandbytes as bnb

        assert isinstance(layer, bnb.nn.Linear4bit) and weight.dtype == torch.uint8
        assert weight.quant_state.quant_type == "nf4" and weight.numel() * 2 == layer.in_features * layer.out_features
    else:
        from torchao.quantization import NF4Tensor

        from simpletuner_pl.quantization.backends import FrozenNF4Linear

        assert isinstance(layer, FrozenNF4Linear) and isinstance(weight, NF4Tensor)


def _plain(tensor):
    """A quantised tensor's integer data (quanto) or the tensor itself, for bitwise comparison."""
    return getattr(tensor, "_data", tensor)


@pytest.fixture(scope="module")
def runs(tiny_flux_dir, tmp_path_factory):
    """Three steps per level, the transformer streamed from the saved tiny pipeline (the real-model path)."""
    from simpletuner_pl.train import run

    out = {}
    for level in LEVELS:
        folder = tmp_path_factory.mktemp(level)
        trainer = run(compose("experiment=demo", f"quant={level}", "train.max_steps=3", f"output_dir={folder}",
                              CPU, "model.tiny=false", f"model.pretrained_model_name_or_path={tiny_flux_dir}",
                              "train.checkpoint_every_n_steps=3", "data.datasets.demo.resolution=64"))
        out[level] = (trainer, folder)
    return out


@pytest.mark.parametrize("level", LEVELS)
def test_quant_level_trains_a_lora_on_quantised_weights(runs, level, tiny_flux_dir):
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    trainer, folder = runs[level]
    transformer = trainer.lightning_module.transformer
    block, single = transformer.transformer_blocks[0], transformer.single_transformer_blocks[0]
    for layer in (block.attn.to_q.base_layer, block.ff.net[2], block.norm1.linear, single.proj_mlp):
        assert_quantised(layer, level)
    for name in KEPT:  # SimpleTuner's high-precision modules stay plain float Linear layers
        kept = transformer.get_submodule(name)
        assert type(kept) is torch.nn.Linear and kept.weight.dtype == torch.float32
    trainable = [n for n, p in trainer.lightning_module.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert trainer.global_step == 3 and math.isfinite(float(trainer.callback_metrics["train/loss"]))

    saved = {k: v for k, v in load_file(folder / "adapter" / "pytorch_lora_weights.safetensors").items()
             if not k.endswith(".alpha")}  # the universal layout's alpha scalars are read as network alphas
    pipe = FluxPipeline.from_pretrained(tiny_flux_dir)  # the unquantised base
    pipe.load_lora_weights(folder / "adapter")
    (adapter,) = pipe.transformer.peft_config
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)
    assert len(loaded) == len(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key.removeprefix("transformer.")], value), key
    assert any(v.abs().sum() > 0 for k, v in saved.items() if ".lora_B." in k)  # trained, not the zero init


def test_streamed_equals_in_place_and_the_cache_skips_quantisation(tiny_flux_dir, tmp_path, monkeypatch):
    from diffusers import FluxTransformer2DModel
    from optimum.quanto import QLinear

    import simpletuner_pl.quantization as quantization
    from simpletuner_pl.models.build import denoiser_of
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.quantization import load_denoiser, quantize_model

    spec = family("flux")
    cfg = typed("experiment=demo", "quant=int8", "model.tiny=false",
                f"model.pretrained_model_name_or_path={tiny_flux_dir}", f"quant.cache_dir={tmp_path}", CPU)
    denoiser = denoiser_of(spec, cfg)

    def load_quantized_transformer():
        return load_denoiser(denoiser, "int8-quanto", torch.float32, torch.device("cpu"), cfg.quant.cache_dir)

    streamed = load_quantized_transformer()
    (cache_dir,) = [p for p in tmp_path.iterdir()]
    assert (cache_dir / "complete.json").is_file() and (cache_dir / "transformer_blocks.0.pt").is_file()

    monkeypatch.setattr(quantization, "stream_load", lambda *a, **k: pytest.fail("the cache was not used"))
    cached = load_quantized_transformer()

    in_place = FluxTransformer2DModel.from_pretrained(tiny_flux_dir, subfolder="transformer")
    assert quantize_model(in_place, "int8-quanto", spec.keep_high_precision) > 10
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 8, 32,
                  generator=g), pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([1.0]), txt_ids=torch.zeros(8, 3), img_ids=torch.zeros(16, 3))
    states = [m.state_dict() for m in (streamed, cached, in_place)]
    for key, value in states[0].items():  # the same quantised bytes, whichever path produced them
        for other in states[1:]:
            assert torch.equal(_plain(other[key]), _plain(value)), key
    with torch.no_grad():
        outs = [m(**inputs).sample for m in (streamed, cached, in_place)]
    assert torch.equal(outs[0], outs[1])
    # equal weights; the in-place model's tensors sit elsewhere in memory, which may change a CPU kernel's
    # summation order by an ulp (seen: 2.4e-7 on some machines, 0 on others)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=1e-6)
    assert isinstance(streamed.transformer_blocks[0].attn.to_q, QLinear)


def test_text_encoder_precisions():
    from optimum.quanto import QLinear

    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    cfg = typed("experiment=demo", "quant.text_encoder_1_precision=nf4-bnb",
                "quant.text_encoder_2_precision=int8-quanto", CPU)
    components, quantised = quantise_tiny(cfg, build_tiny_flux_components())
    assert quantised == {"text_encoder": "nf4-bnb", "text_encoder_2": "int8-quanto"}  # what it did, reported
    t5_linears = [m for n, m in components["text_encoder_2"].named_modules() if n.endswith((".q", ".wo"))]
    assert t5_linears and all(isinstance(m, QLinear) for m in t5_linears)
    clip_layer = components["text_encoder"].encoder.layers[0].self_attn.q_proj
    assert type(clip_layer).__name__ == "Linear4bit"
    assert type(components["transformer"].transformer_blocks[0].attn.to_q) is torch.nn.Linear  # no_change
    tokens = components["tokenizer_2"](["a cat"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(components["text_encoder_2"](tokens)[0]).all()
