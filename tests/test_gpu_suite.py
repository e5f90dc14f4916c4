"""experiments/gpu_suite.py's dry run (CPU, tiny widths) on two of its cases: rows, planner figures, JSON and
Markdown outputs. CI runs the whole dry run after the tests (`.ci/run`)."""

import json
import subprocess
import sys

from helpers import ROOT


def test_the_dry_run_measures_and_writes_its_table(tmp_path):
    result = subprocess.run([sys.executable, "experiments/gpu_suite.py", "--dry-run", "--out", str(tmp_path),
                             "--only", "flux/no_change", "sdxl/no_change", "--steps", "1", "--warmup", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_suite.json").read_text())["rows"]
    flux = [r for r in rows if r["case"] == "flux"]
    assert len(flux) == 5 and not any("error" in r for r in rows)  # 2 sizes x checkpointing, + TREAD
    assert all(r["s_per_step"] > 0 and r["flops"] > 0 and r["planned_gb"] > 0 for r in flux)
    assert [r["tread"] for r in flux] == [False] * 4 + [True]
    assert any(r["case"] == "sdxl" and r["s_per_step"] > 0 for r in rows)
    table = (tmp_path / "gpu_suite.md").read_text()
    assert table.startswith("GPU suite on cpu (dry run)") and "| flux | no_change | 128 | True | True |" in table
