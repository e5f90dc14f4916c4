"""The memory planner against real tensors, its CLI, the startup warning, and bench_memory.py on small settings."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import CPU, run_cli, typed

ROOT = Path(__file__).resolve().parents[1]
# Flux's architecture at a width where every backend's block sizes tile the layers (256 = 2 heads x 128).
MID = dict(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128, num_attention_heads=2,
           joint_attention_dim=256, pooled_projection_dim=256, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def storage_bytes(model) -> int:
    """Bytes really held by parameters and buffers, looking inside quantised tensor subclasses and bnb states."""
    seen, total = set(), 0

    def walk(t):
        nonlocal total
        if hasattr(t, "__tensor_flatten__"):
            for name in t.__tensor_flatten__()[0]:
                walk(getattr(t, name))
            return
        storage = t.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            total += storage.nbytes()

    for p in [*model.parameters(), *model.buffers()]:
        walk(p.data)
        state = getattr(p, "quant_state", None)
        for v in (state.as_dict(packed=True).values() if state is not None else ()):
            if torch.is_tensor(v):
                walk(v)
    return total


@pytest.mark.parametrize("precision", ["no_change", "int8-quanto", "int4-quanto", "int2-quanto", "fp8-quanto",
                                       "nf4-bnb", "nf4-torchao"])
def test_planned_weight_bytes_match_the_quantised_model(precision):
    from diffusers import FluxTransformer2DModel

    from simpletuner_pl.models.registry import family
    from simpletuner_pl.planner.estimate import weight_bytes
    from simpletuner_pl.quantization import quantize_model

    keep = family("flux").keep_high_precision
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**MID).to(torch.bfloat16)
    with torch.device("meta"):
        meta = FluxTransformer2DModel(**MID)
    planned = weight_bytes(meta, precision, 2, keep)
    quantize_model(model, precision, keep)
    assert planned == pytest.approx(storage_bytes(model), rel=0.01)


@pytest.mark.parametrize("precision", ["no_change", "int8-quanto", "nf4-bnb"])
def test_meta_activation_profile_matches_real_saved_tensors(precision):
    """The planner's meta forward vs a real bf16-autocast forward of the same LoRA'd model (fp32 adapter)."""
    from diffusers import FluxTransformer2DModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from simpletuner_pl.config.registries import FLUX_TARGETS, PRECISIONS
    from simpletuner_pl.config.schema import ModelConfig
    from simpletuner_pl.memory.checkpointing import selected_blocks
    from simpletuner_pl.models.flux_planner import profile_inputs
    from simpletuner_pl.models.registry import family
    from simpletuner_pl.planner.activations import profile_activations
    from simpletuner_pl.planner.budget import denoiser_profile
    from simpletuner_pl.quantization import quantize_model

    keep = family("flux").keep_high_precision
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=list(FLUX_TARGETS.presets["all"]), init_lora_weights="gaussian")
    torch.manual_seed(0)
    real = FluxTransformer2DModel(**MID).to(torch.bfloat16)
    real.set_attention_backend("native")  # the dispatcher's choice is process-wide; don't inherit another test's
    quantize_model(real, precision, keep)
    real.add_adapter(lora)
    cast_training_params(real, dtype=torch.float32)
    blocks = selected_blocks(real)
    side, text = 256, 64
    inputs = dict(hidden_states=torch.randn(1, (side // 16) ** 2, 64, dtype=torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, text, 256, dtype=torch.bfloat16),
                  pooled_projections=torch.randn(1, 256, dtype=torch.bfloat16), timestep=torch.rand(1),
                  guidance=torch.ones(1), txt_ids=torch.zeros(text, 3), img_ids=torch.zeros((side // 16) ** 2, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = profile_activations(real.train(), blocks, **inputs)
    with torch.device("meta"):
        meta = FluxTransformer2DModel(**MID)
    meta.add_adapter(lora)
    model = ModelConfig(t5_max_length=text)
    planned = denoiser_profile(meta, blocks, profile_inputs(meta, side, 1, model, torch.bfloat16), torch.bfloat16,
                               keep, cast_copies=True, inputs_saved=PRECISIONS[precision].backend == "quanto")
    for checkpointed in ([], blocks):
        assert planned.kept_bytes(checkpointed) == pytest.approx(measured.kept_bytes(checkpointed), rel=0.05)


def test_plan_cli_prices_components_and_the_changes_that_fit():
    out = run_cli("model=flux", "quant=int8", "gpu_memory_gb=16", "resolution=1024", module="simpletuner_pl.plan")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for part in ("transformer weights", "text_encoder_2 weights", "activations", "optimizer states",
                 "GPU peak while training", "system RAM peak"):
        assert part in text
    weights = float(text.split("transformer weights")[1].split("GB")[0])
    assert 10.5 < weights < 12.5  # 11.9B parameters, mostly int8, embedders/out projections in bf16
    assert "does NOT fit" in text and "cheapest changes that fit:" in text
    suggestions = [line for line in text.splitlines() if "(GPU peak" in line]
    assert suggestions and all(float(s.split("GPU peak")[1].split("GB")[0]) <= 16 for s in suggestions)


def test_startup_warning_when_the_plan_exceeds_the_device(monkeypatch, caplog):
    import psutil

    from simpletuner_pl.planner.report import check_budget

    cfg = typed("experiment=demo", CPU)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"total": 2**20})())
    with caplog.at_level(logging.WARNING, logger="simpletuner_pl.planner.report"):
        check_budget(cfg, torch.device("cpu"))
    assert "does not fit in memory" in caplog.text
    caplog.clear()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"total": 2**50})())
    check_budget(cfg, torch.device("cpu"))
    assert "does not fit" not in caplog.text


def test_bench_memory_runs_on_small_settings(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "bench_memory.py"), "--scale", "small",
                          "--levels", "int8", "--resolutions", "256", "--steps", "1", "--text-tokens", "64",
                          "--json", str(tmp_path / "rows.jsonl")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = [line for line in out.stdout.splitlines() if line.startswith("int8")]
    assert row and "cpu (small)" in row[0]
    import json

    result = json.loads((tmp_path / "rows.jsonl").read_text())
    assert result["peak_gb"] > 0 and result["plan"]["transformer weights"] > 0 and result["s_per_step"] > 0
    # (a constant ~0.25 MB the meta run misses makes tiny resolutions look worse; 2% at 256 px, 1% at 512)
    assert result["saved_activations_gb"] == pytest.approx(result["plan"]["activations"], rel=0.05)
