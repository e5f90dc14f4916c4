"""Hydra multirun: one folder per job, the sweep summary, a refused job that does not stop the sweep, the Optuna
preset minimising the eval loss, and the SLURM launcher preset rendering its sbatch script."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from helpers import CPU, DEMO_DIR, ROOT, read_metrics, run_cli

TINY = ["experiment=demo", CPU, "train.max_steps=3", "train.log_every_n_steps=1", "train.checkpoint_every_n_steps=3"]


def _summary(sweep_dir: Path):
    with (sweep_dir / "sweep_summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    """Three jobs, the middle one with a learning rate the startup checks refuse."""
    tmp = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", *TINY, "data.datasets.demo.resolution=64", "optimizer.lr=1e-3,-1,3e-4",
                     f"output_dir={tmp / 'sweep'}", f"data.cache_dir={tmp / 'cache'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "sweep", result


def test_multirun_keeps_a_folder_per_job_and_summarises_them(lr_sweep):
    sweep_dir, _ = lr_sweep
    rows = _summary(sweep_dir)
    assert [(row["job"], row["optimizer.lr"], row["status"]) for row in rows] == [
        ("0", "0.001", "finished"), ("1", "-1", "refused"), ("2", "0.0003", "finished")]
    for row in (rows[0], rows[2]):
        job_dir = sweep_dir / row["job"]
        assert (job_dir / "adapter" / "pytorch_lora_weights.safetensors").is_file()
        losses = [loss for _, loss in read_metrics(job_dir, "train/loss")]
        assert len(losses) == 3 and float(row["train_loss"]) == pytest.approx(sum(losses) / 3)
        step_s = json.loads((job_dir / "timings.json").read_text())["median_step_s"]
        assert float(row["step_s"]) == pytest.approx(step_s)
        assert row["eval_loss"] == row["clip_score"] == ""  # eval off
        assert f"optimizer.lr={row['optimizer.lr']}" in row["overrides"].split()
    table = (sweep_dir / "sweep_summary.md").read_text()
    assert "| job | optimizer.lr | train loss | eval loss | CLIP score | s/step | status | error |" in table
    assert "Every job: `experiment=demo debug=cpu train.max_steps=3" in table


def test_a_refused_job_is_reported_and_the_sweep_goes_on(lr_sweep):
    sweep_dir, result = lr_sweep
    refused = _summary(sweep_dir)[1]
    assert refused["error"] == "optimizer.lr=-1.0 is out of range: it must be > 0"
    assert refused["train_loss"] == "" and not (sweep_dir / "1" / "adapter").exists()
    assert json.loads((sweep_dir / "1" / "sweep_job.json").read_text())["status"] == "refused"
    assert "| 1 | -1 |  |  |  |  | refused | optimizer.lr=-1.0 is out of range" in \
        (sweep_dir / "sweep_summary.md").read_text()
    assert "sweep: job 1 refused" in result.stdout + result.stderr
    assert (sweep_dir / "2" / "checkpoints" / "last.ckpt").is_file()  # the job after it trained


def _lora_rank(adapter_dir: Path) -> int:
    with safe_open(str(adapter_dir / "pytorch_lora_weights.safetensors"), "pt") as weights:
        name = next(key for key in weights.keys() if "lora_A" in key)
        return weights.get_slice(name).get_shape()[0]


def test_optuna_preset_runs_trials_that_minimise_the_eval_loss(tmp_path):
    train, held_out = tmp_path / "train", tmp_path / "held_out"
    for image in DEMO_DIR.glob("*.jpg"):
        target = held_out if image.stem == "chelsea-the-cat" else train
        target.mkdir(exist_ok=True)
        for path in (image, image.with_suffix(".txt")):
            shutil.copy(path, target / path.name)
    sweep_dir = tmp_path / "sweep"
    result = run_cli("-m", "hydra/sweeper=optuna_lr_rank", "hydra.sweeper.n_trials=2", *TINY, "data=local",
                     f"data.datasets.main.instance_data_dir={train}", "data.datasets.main.resolution=64",
                     "eval=loss", f"eval.eval_loss.instance_data_dir={held_out}", "eval.eval_loss.timesteps=2",
                     "eval.eval_loss.on_startup=false", f"output_dir={sweep_dir}", f"data.cache_dir={tmp_path / 'c'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _summary(sweep_dir)
    assert [row["status"] for row in rows] == ["finished", "finished"]
    for row in rows:
        assert 1e-5 <= float(row["optimizer.lr"]) <= 1e-3 and row["adapter.rank"] in {"4", "8", "16", "32"}
        assert _lora_rank(sweep_dir / row["job"] / "adapter") == int(row["adapter.rank"])  # the trial trained it
        assert float(row["eval_loss"]) == read_metrics(sweep_dir / row["job"], "eval/loss")[-1][1]
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(float(row["eval_loss"]) for row in rows)  # what each job returned


def test_slurm_launcher_preset_renders_an_sbatch_script(tmp_path, monkeypatch):
    """No SLURM here: a stand-in `srun` on PATH lets submitit build its executor, and the launcher's own code runs
    up to the submission, which is caught."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from simpletuner_pl.config import register

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")

    class Submitted(Exception):
        pass

    def submit(executor, *args, **kwargs):
        raise Submitted(executor)

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "experiment=demo",
                                          f"output_dir={tmp_path / 'sweep'}"], return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Submitted) as submitted:
        launcher.launch([["optimizer.lr=1e-4"]], initial_job_idx=0)
    script = submitted.value.args[0]._executor._make_submission_file_text("python -m simpletuner_pl", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=64GB",
                 "--time=240", f"--output={tmp_path / 'sweep'}/.submitit/%j/%j_0_log.out"):
        assert f"#SBATCH {line}\n" in script


def test_a_crashed_job_is_recorded_with_its_exception(tmp_path):
    """What on_job_end records when training raised (Hydra's JobReturn holds the exception); the summary shows it
    next to a finished job, whose final train loss averages the last 10 logged values."""
    from hydra.core.utils import JobReturn, JobStatus

    from simpletuner_pl.sweeps import RECORD, job_record, write_summary

    crashed = JobReturn(overrides=["experiment=demo", "adapter.rank=64"], status=JobStatus.FAILED,
                        _return_value=RuntimeError("CUDA out of memory"))
    finished = JobReturn(overrides=["experiment=demo", "adapter.rank=4"], status=JobStatus.COMPLETED,
                         _return_value=1.25)
    for num, job in enumerate((finished, crashed)):
        (tmp_path / str(num)).mkdir()
        (tmp_path / str(num) / RECORD).write_text(json.dumps(job_record(job, num)))
    losses = [2.0] * 5 + [1.0] * 10
    (tmp_path / "0" / "metrics.csv").write_text("step,train/loss\n" + "".join(
        f"{step},{loss}\n" for step, loss in enumerate(losses)))
    rows = write_summary(tmp_path)
    assert [(r["job"], r["adapter.rank"], r["train_loss"], r["status"], r["error"]) for r in rows] == [
        (0, "4", 1.0, "finished", ""), (1, "64", None, "crashed", "RuntimeError: CUDA out of memory")]
    assert "Every job: `experiment=demo`" in (tmp_path / "sweep_summary.md").read_text()
