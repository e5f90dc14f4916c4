"""The prepared GPU suite: the headline memory and speed figures per quantisation level, in one command.

    python experiments/gpu_suite.py --out OUT                 # one CUDA GPU, <= 8 min wall
    python experiments/gpu_suite.py --dry-run --out /tmp/s    # the same code on the CPU, tiny widths (seconds; CI)

Cases (each in its own subprocess with a time budget, so an OOM or a crash costs one row, not the run):
  * flux/<precision>: FLUX.1-dev's transformer architecture with random weights (no download), rank-16 LoRA on
    `all`, batch 1, bf16 autocast, AdamW, random text embeds and latents of the right shapes; median s/step over
    >= 5 steps after 2 warm-up steps, peak allocated/reserved GPU memory, counted FLOPs and MFU, at 512 and 1024 px,
    with and without gradient checkpointing, TREAD {0.5, 2, -2} at 1024 px for bf16; the planner's estimate
    beside each measured peak. Levels none, int8, int4, nf4 first, then int2, fp8, nf4_torchao while time is left.
  * sdxl/<precision>: the SDXL UNet, rank-16 LoRA, 1024 px, bf16 and int8.
  * demo_cli: 20 steps of `experiment=demo` on CUDA through the CLI (nf4 via bitsandbytes, compiled blocks, a
    validation round, the eval loss).
  * ddp_cli: 2-GPU DDP of the demo when more than one GPU is visible.
Writes OUT/gpu_suite.json and OUT/gpu_suite.md and prints the table. Missing packages on the GPU machine: see
experiments/gpu_wheels.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
FIRST = ["no_change", "int8-quanto", "int4-quanto", "nf4-bnb"]
LATER = ["int2-quanto", "fp8-quanto", "nf4-torchao"]
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}  # dense bf16


def cases(gpus: int) -> List[tuple]:
    """(name, seconds budget) in priority order."""
    out = [(f"flux/{p}", 150) for p in FIRST] + [("sdxl/no_change", 60), ("sdxl/int8-quanto", 60)]
    out += [("demo_cli", 150)] + ([("ddp_cli", 120)] if gpus > 1 else [])
    return out + [(f"flux/{p}", 150) for p in LATER]


def run_case(name: str, dry_run: bool, steps: int, warmup: int) -> List[dict]:
    import gpu_cases

    kind, _, precision = name.partition("/")
    if kind == "flux":
        return gpu_cases.flux_case(precision, dry_run, steps, warmup)
    if kind == "sdxl":
        return gpu_cases.sdxl_case(precision, dry_run, steps, warmup)
    return [cli_case(name, dry_run)]


def cli_case(name: str, dry_run: bool) -> dict:
    """The demo through `python -m simpletuner_pl`, timed end to end (exit status and the last loss)."""
    out = Path(tempfile.mkdtemp(prefix="suite_cli_"))
    args = ["experiment=demo", "quant=nf4", "validation=demo", "eval=loss", "train.log_every_n_steps=1",
            f"eval.eval_loss.instance_data_dir={ROOT / 'simpletuner_pl' / 'assets' / 'demo_references'}",
            "eval.eval_loss.num_images=2", f"output_dir={out / 'run'}", f"data.cache_dir={out / 'cache'}"]
    if dry_run:
        args += ["debug=cpu", "train.max_steps=3", "data.datasets.demo.resolution=64"]
    else:
        args += ["train.max_steps=20", "train.compile=true", "trainer.accelerator=gpu"]
        args += ["trainer.devices=2", "strategy=ddp"] if name == "ddp_cli" else ["trainer.devices=1"]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "simpletuner_pl", *args], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    row = {"case": name, "seconds": time.perf_counter() - started, "exit": result.returncode}
    metrics = out / "run" / "metrics.csv"
    if metrics.is_file():
        lines = [line.split(",") for line in metrics.read_text().splitlines()]
        column = lines[0].index("train/loss") if "train/loss" in lines[0] else None
        losses = [float(r[column]) for r in lines[1:] if column is not None and len(r) > column and r[column]]
        row["last_loss"] = losses[-1] if losses else None
    if result.returncode:
        row["error"] = result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed"
    return row


def add_mfu(rows: List[dict], device_name: str) -> None:
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    for row in rows:
        if peak and row.get("flops") and row.get("s_per_step"):
            row["mfu"] = row["flops"] / row["s_per_step"] / (peak * 1e12)
        if row.get("planned_gb") and row.get("peak_alloc_gb"):
            row["planner_error"] = row["planned_gb"] / row["peak_alloc_gb"] - 1


def markdown(rows: List[dict], header: str) -> str:
    columns = ["case", "precision", "px", "checkpointing", "tread", "s_per_step", "peak_alloc_gb",
               "peak_reserved_gb", "planned_gb", "planner_error", "flops", "mfu", "seconds", "exit", "last_loss",
               "error"]
    used = [c for c in columns if any(c in r for r in rows)]

    def cell(key: str, value) -> str:
        if value is None:
            return ""
        if key == "planner_error":
            return f"{value:+.1%}"
        if key == "mfu":
            return f"{value:.1%}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [header, "", "| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    lines += ["| " + " | ".join(cell(c, r.get(c)) for c in used) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny widths: tests the suite's own code")
    parser.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "experiments" / "gpu_suite_out")))
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole suite")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="case names (flux/int8-quanto, sdxl/no_change, demo_cli, ...)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its rows as JSON
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "experiments"))
    if args.case:
        print("ROWS " + json.dumps(run_case(args.case, args.dry_run, args.steps, args.warmup)))
        return []
    import torch

    gpus = 0 if args.dry_run else torch.cuda.device_count()
    device_name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    started, rows = time.perf_counter(), []
    for name, budget in cases(gpus):
        if args.only and name not in args.only:
            continue
        left = args.budget - (time.perf_counter() - started)
        if left < min(budget, 60):
            rows.append({"case": name, "error": "skipped: the suite's time budget is spent"})
            continue
        rows += one_case(name, args, min(budget, left))
        print(json.dumps(rows[-1]), flush=True)
    add_mfu(rows, device_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps({"device": device_name, "rows": rows}, indent=1))
    table = markdown(rows, f"GPU suite on {device_name}, {time.perf_counter() - started:.0f} s")
    (out / "gpu_suite.md").write_text(table)
    print(table)
    return rows


def one_case(name: str, args, budget: float) -> List[dict]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--dry-run"] if args.dry_run else [])
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"))
    except subprocess.TimeoutExpired:
        return [{"case": name, "error": f"timed out after {budget:.0f} s"}]
    for line in result.stdout.splitlines():
        if line.startswith("ROWS "):
            return json.loads(line[5:])
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return [{"case": name, "error": f"exit {result.returncode}: {tail}"}]


if __name__ == "__main__":
    arguments = sys.argv[1:]
    results = main(arguments)
    # On a GPU an OOM row is a finding; in the dry run every case must work (CI runs it).
    sys.exit(1 if "--dry-run" in arguments and "--case" not in arguments and any("error" in r for r in results)
             else 0)
