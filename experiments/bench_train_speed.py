"""Tiny-Flux LoRA training speed: s/step, launch-to-first-step and peak RSS of `python -m simpletuner_pl`.

The configuration is the one the peer trainers were measured with on these machines (1 double + 1 single block,
64 px, rank 4, batch 1, fp32 on CPU): leanest peer 0.020 s/step, 7.9 s to first step, 569 MiB peak RSS;
SimpleTuner 0.042 s/step, 21.5 s. Usage: python experiments/bench_train_speed.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(steps: int, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "simpletuner_pl", "experiment=demo", "data.datasets.demo.resolution=64",
               "adapter.rank=4", "train.batch_size=1", f"train.max_steps={steps}", "trainer.accelerator=cpu",
               f"train.checkpoint_every_n_steps={steps}", f"output_dir={out}", *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    launch = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - launch
    if result.returncode:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    timings = json.loads((out / "timings.json").read_text())
    return {"s_per_step": timings["median_step_s"],
            "launch_to_first_step_s": timings["first_batch_start_unix"] - launch, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            runs.append(one_run(args.steps, Path(tmp) / str(i), args.overrides))
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"runs={args.repeats} steps={args.steps} overrides={args.overrides}")
    print(f"s/step (median of run medians): {summary['s_per_step']:.4f}")
    print(f"launch to first step:           {summary['launch_to_first_step_s']:.2f} s")
    print(f"whole run wall time:            {summary['wall_s']:.2f} s")
    print(f"peak RSS (largest child):       {peak_rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
