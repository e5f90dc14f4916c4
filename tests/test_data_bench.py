"""experiments/bench_data.py runs end to end on a small N and reports consistent figures."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "experiments" / "bench_data.py"


def run_bench(capsys):
    spec = importlib.util.spec_from_file_location("bench_data", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--n", "300", "--latents", "24", "--vae-batch-size", "8", "--workers", "0",
                         "--captions", "20"])
    return result, capsys.readouterr().out


def test_bench_data_small(capsys):
    result, printed = run_bench(capsys)
    for line in ("PIL header floor", "discovery cold", "discovery warm", "latent caching", "text-embed caching"):
        assert line in printed
    assert result["cold"] > 0 and result["warm"] > 0 and result["floor_cold"] > 0
    assert result["latents"] == 24 and result["latents_per_s"] > 0
    padded = 20 * 64 * 32 * 4  # 20 captions × 64 T5 tokens × 32 features × fp32
    assert result["captions"] == 20
    assert padded < result["text_bytes_unmodified"] < padded + 20 * 1024, "unmodified: whole sequences"
    assert 0 < result["text_bytes_zero"] < padded // 2, "zero: stored trimmed to the real tokens"


@pytest.mark.slow
def test_metadata_cache_makes_the_second_start_cheaper(capsys):
    """Wall-clock comparisons: flaky on shared CPUs, so outside the default run (`pytest -m slow`)."""
    result, _ = run_bench(capsys)
    assert result["warm"] < result["cold"] and result["warm"] < result["floor_cold"]


def test_t5_cache_size_figures():
    """experiments/t5_cache_size.py: unmodified entries hold the whole sequence, zero ones only the real tokens."""
    spec = importlib.util.spec_from_file_location("t5_cache_size", BENCH.parent / "t5_cache_size.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sizes = script.main()
    for (mode, max_length, real), size in sizes.items():
        stored = max_length if mode == "unmodified" else real
        tensor_bytes = stored * 4096 * 2 + 768 * 2 + 8  # bf16 sequence, bf16 pooled vector, int64 length
        assert tensor_bytes < size < tensor_bytes + 1024, (mode, max_length, real)
    assert sizes[("unmodified", 512, 40)] > 4 * 2**20 and sizes[("zero", 512, 40)] < 2**20 / 3
