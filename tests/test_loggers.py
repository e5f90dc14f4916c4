"""`logger=`: TensorBoard, W&B (offline) and MLflow (local store) at once on a real demo run, read back with each
tracker's own reader; `report_to`, missing packages and W&B credentials checked at startup."""

import glob
import shutil
import struct
from pathlib import Path

import pytest
from PIL import Image

from helpers import CPU, DEMO_DIR, compose, read_metrics, run_cli, typed

HELD_OUT = {"coffee-cup", "hubble-deep-field"}
VALIDATION_STEPS = [0, 2, 3]  # every 2 steps and the end


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 3-step demo run (validation at 64 px, eval loss) reporting to all three trackers."""
    from simpletuner_pl.train import run

    tmp = tmp_path_factory.mktemp("loggers")
    for image in DEMO_DIR.glob("*.jpg"):
        target = tmp / ("held_out" if image.stem in HELD_OUT else "train")
        target.mkdir(exist_ok=True)
        shutil.copy(image, target / image.name)
        shutil.copy(image.with_suffix(".txt"), target / f"{image.stem}.txt")
    out = tmp / "run"
    trainer = run(compose(
        "experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={tmp / 'train'}",
        "data.datasets.main.resolution=64", f"data.cache_dir={tmp / 'cache'}", f"output_dir={out}",
        "train.max_steps=3", "train.log_every_n_steps=1", "validation=demo", "validation.resolutions=64x64",
        "validation.num_inference_steps=2", "validation.every_n_steps=2", "eval=loss",
        f"eval.eval_loss.instance_data_dir={tmp / 'held_out'}", "eval.eval_loss.timesteps=4",
        "logger=[tensorboard,wandb,mlflow]", "logger.wandb.mode=offline", "logger.run_name=demo-loggers", CPU))
    return out, trainer


def same_series(logged, expected):
    """(step, value) pairs equal step for step, values to float32 precision (what the trackers store)."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)


def test_every_chosen_logger_is_built_after_the_csv_one(logged):
    out, trainer = logged
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    kinds = [CSVLogger, TensorBoardLogger, WandbLogger, MLFlowLogger]
    assert len(trainer.loggers) == 4 and all(isinstance(lg, k) for lg, k in zip(trainer.loggers, kinds))
    assert trainer.logger is trainer.loggers[0] and len(read_metrics(out, "train/loss")) == 3


def test_tensorboard_events_hold_train_loss_validation_grid_and_eval_plot(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = logged
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    same_series(losses, read_metrics(out, "train/loss"))
    grids = events.Images("validation/grid")
    assert [g.step for g in grids] == VALIDATION_STEPS
    with Image.open(out / "validation" / "step_3" / "grid.png") as grid:
        assert (grids[-1].width, grids[-1].height) == grid.size
    assert [p.step for p in events.Images("eval/loss_vs_sigma")] == VALIDATION_STEPS
    same_series([(e.step, e.value) for e in events.Scalars("eval/loss")], read_metrics(out, "eval/loss"))


def wandb_history(run_file: Path):
    """The history rows of an offline W&B run file (a LevelDB-style log of `wandb_internal_pb2.Record`s; wandb ships
    no reader for it any more)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, rows = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def test_offline_wandb_run_holds_train_loss_and_validation_images(logged):
    import json

    out, _ = logged
    run_id = (out / "wandb" / "run_id").read_text().strip()
    [run_dir] = glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}"))
    rows = wandb_history(Path(run_dir) / f"run-{run_id}.wandb")
    losses = [(int(r["trainer/global_step"]), float(r["train/loss"])) for r in rows if "train/loss" in r]
    same_series(losses, read_metrics(out, "train/loss"))
    grids = [r for r in rows if "validation/grid/filenames" in r]
    assert [int(r["trainer/global_step"]) for r in grids] == VALIDATION_STEPS
    with Image.open(out / "validation" / "step_3" / "grid.png") as grid, \
            Image.open(Path(run_dir) / "files" / json.loads(grids[-1]["validation/grid/filenames"])[0]) as logged_grid:
        assert logged_grid.size == grid.size
    assert any("eval/loss_vs_sigma/filenames" in r for r in rows)


def test_mlflow_local_store_has_the_metrics_and_images(logged):
    from mlflow import MlflowClient

    out, _ = logged
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("simpletuner_pl").experiment_id])
    assert found.info.run_name == "demo-loggers" and found.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "train/loss")]
    same_series(sorted(history), read_metrics(out, "train/loss"))
    assert client.get_metric_history(found.info.run_id, "eval/loss")
    params = found.data.params  # the run's config, for comparing sweep jobs
    assert (params["optimizer.lr"], params["adapter.rank"], params["train.max_steps"]) == ("0.001", "4", "3")
    images = sorted(p.name for p in (out / "mlruns" / found.info.run_id / "artifacts" / "images").glob("*.png"))
    grids = [name for name in images if name.startswith("validation~grid+")]  # MLflow's own file naming
    grid_steps = sorted(int(name.split("+step+")[1].split("+")[0]) for name in grids)
    assert grid_steps == VALIDATION_STEPS and any(name.startswith("eval~loss_vs_sigma") for name in images)


def test_report_to_is_an_alias_and_adds_to_the_group():
    from simpletuner_pl.config.logging import chosen_loggers
    from simpletuner_pl.errors import ConfigError

    assert chosen_loggers(typed("logger.report_to=tensorboard").logger) == ["tensorboard"]
    assert chosen_loggers(typed("logger=mlflow", "logger.report_to=wandb").logger) == ["wandb", "mlflow"]
    assert chosen_loggers(typed("logger.report_to=all").logger) == ["tensorboard", "wandb", "mlflow"]  # installed
    assert chosen_loggers(typed("logger.report_to=none").logger) == []
    assert chosen_loggers(typed("logger=[tensorboard,wandb]").logger) == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="report_to=none contradicts"):
        chosen_loggers(typed("logger=wandb", "logger.report_to=none").logger)


def test_missing_package_is_refused_at_startup_with_the_extra(monkeypatch):
    import importlib.util

    from simpletuner_pl.preflight import validate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    from simpletuner_pl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"needs tensorboard, which is not installed: pip install 'simpletuner_pl\["):
        validate(typed("experiment=demo", "logger=tensorboard", CPU))


def test_wandb_online_needs_credentials_or_offline_mode(monkeypatch, tmp_path):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import validate

    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(ConfigError, match=r"wandb login.*logger.wandb.mode=offline"):
        validate(typed("experiment=demo", "logger=wandb", CPU))
    validate(typed("experiment=demo", "logger=wandb", "logger.wandb.mode=offline", CPU))
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    validate(typed("experiment=demo", "logger=wandb", CPU))  # `wandb login` wrote the key
    with pytest.raises(ConfigError, match="logger.wandb.mode='cloud' is not a valid choice"):
        validate(typed("experiment=demo", "logger=wandb", "logger.wandb.mode=cloud", CPU))


def test_cli_refuses_an_unknown_report_to_without_a_traceback():
    result = run_cli("experiment=demo", "logger.report_to=comet", CPU)
    assert result.returncode == 2, result.stderr[-2000:]
    said = result.stdout + result.stderr  # the CLI logs through Hydra's console handler
    assert "logger.report_to='comet' is not a valid choice" in said and "Traceback" not in said


def test_a_resumed_run_continues_each_tracker_run(tmp_path):
    """3 steps, then resume from step 2 to 4: step 2 is trained again. TensorBoard drops the old step 2, W&B and
    MLflow continue the same run, and every tracker ends with metrics.csv's series."""
    from mlflow import MlflowClient

    from simpletuner_pl.train import run

    args = ["experiment=demo", "data.datasets.demo.resolution=64", f"data.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path / 'run'}", "train.log_every_n_steps=1", "train.checkpoint_every_n_steps=1",
            "logger=[tensorboard,wandb,mlflow]", "logger.wandb.mode=offline", CPU]
    run(compose(*args, "train.max_steps=3"))
    first_id = (tmp_path / "run" / "wandb" / "run_id").read_text()
    run(compose(*args, "train.max_steps=4", "train.resume=2"))
    expected = read_metrics(tmp_path / "run", "train/loss")
    assert [step for step, _ in expected] == [0, 1, 2, 3]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    same_series([(e.step, e.value) for e in events.Scalars("train/loss")], expected)

    assert (tmp_path / "run" / "wandb" / "run_id").read_text() == first_id
    rows = [row for path in sorted(glob.glob(str(tmp_path / "run" / "wandb" / f"offline-run-*-{first_id}" / "*.wandb")))
            for row in wandb_history(Path(path))]
    assert len(glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*"))) == 2  # one per process, one run id
    wandb_losses = {int(r["trainer/global_step"]): float(r["train/loss"]) for r in rows if "train/loss" in r}
    same_series(sorted(wandb_losses.items()), expected)  # the re-trained step 2: the later value wins, as in W&B

    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    [found] = client.search_runs([client.get_experiment_by_name("simpletuner_pl").experiment_id])
    latest = {m.step: m.value for m in sorted(client.get_metric_history(found.info.run_id, "train/loss"),
                                              key=lambda m: m.timestamp)}
    same_series(sorted(latest.items()), expected)


def test_project_entity_and_tracking_uri_reach_the_trackers(tmp_path):
    """`logger.project` names the W&B project and the MLflow experiment; `logger.wandb.entity` and
    `logger.mlflow.tracking_uri` are passed through (read before any run is created: both loggers are lazy)."""
    from simpletuner_pl.callbacks.loggers import mlflow, wandb

    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    cfg = typed("experiment=demo", "logger=[wandb,mlflow]", "logger.wandb.mode=offline", "logger.project=lora-sweeps",
                "logger.wandb.entity=my-team", f"logger.mlflow.tracking_uri={uri}", CPU).logger
    tracked = wandb(cfg, tmp_path, None)
    assert tracked._wandb_init["project"] == "lora-sweeps" and tracked._wandb_init["entity"] == "my-team"
    flow = mlflow(cfg, tmp_path, None)
    assert flow._tracking_uri == uri and flow._experiment_name == "lora-sweeps"
    default = mlflow(typed("experiment=demo", "logger=mlflow", CPU).logger, tmp_path, None)
    assert default._tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
