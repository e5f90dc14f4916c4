"""experiments/bench_data.py runs end to end on a small N and reports consistent figures."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "experiments" / "bench_data.py"


def test_bench_data_small(capsys):
    spec = importlib.util.spec_from_file_location("bench_data", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--n", "300", "--latents", "24", "--vae-batch-size", "8", "--workers", "0", "--captions", "20"])
    printed = capsys.readouterr().out
    for line in ("PIL header floor", "discovery cold", "discovery warm", "latent caching", "text-embed caching"):
        assert line in printed
    assert 0 < result["warm"] < result["cold"], "the metadata cache makes the second start cheaper"
    assert result["warm"] < result["floor_cold"]
    assert result["latents"] == 24 and result["latents_per_s"] > 0
    assert result["captions"] == 20 and 0 < result["text_bytes"] < 20 * (32 * 32 * 4 + 1024), "T5 sequences stored unpadded"
