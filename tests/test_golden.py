"""A golden loss curve for the bundled demo: the README's first command, seed 42, on the CPU in fp32, with centre
crops (the default random crop offset is seeded by each file's path and mtime, which a fresh clone changes).

A change that moves the numerics of a training step (noise draws, σ sampling, the loss, the optimizer, the data
order, the LoRA init) moves this curve; the recorded sequence is `golden/demo_loss.json`. Tolerance: relative 1e-4
per step — a different CPU's kernels may reorder float sums (1e-7 per op); real changes move it far more
(measured: optimizer.lr 1% higher moves the curve by up to 1.8e-3 relative, seed=43 by 3.8e-2). After an intended
numerics change, regenerate it with `GOLDEN_UPDATE=1 pytest tests/test_golden.py` and say why in the commit.
"""

import json
import os
from pathlib import Path

import pytest

from helpers import CPU, compose, read_metrics

GOLDEN = Path(__file__).parent / "golden" / "demo_loss.json"
STEPS = 100
CROP = "data.datasets.demo.crop_style=center"


def test_demo_loss_curve_matches_the_recorded_one(tmp_path):
    from simpletuner_pl.train import run

    run(compose("experiment=demo", CPU, f"train.max_steps={STEPS}", "train.log_every_n_steps=1", CROP,
                f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}"))
    losses = [loss for _, loss in read_metrics(tmp_path / "run", "train/loss")]
    assert len(losses) == STEPS
    if os.environ.get("GOLDEN_UPDATE"):
        GOLDEN.write_text(json.dumps({"command": f"experiment=demo debug=cpu train.max_steps={STEPS} {CROP}",
                                      "seed": 42, "train/loss": losses}, indent=1) + "\n")
    recorded = json.loads(GOLDEN.read_text())["train/loss"]
    assert losses == pytest.approx(recorded, rel=1e-4, abs=1e-7)
