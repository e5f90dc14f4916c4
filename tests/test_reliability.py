"""Runs that never lose work (issue 9): one newest `last.ckpt`, exact resume, signals, safe loading, output_dir
reuse, values refused with their range, DoRA on a quanto base, bad files, a silent hub, orphaned temporaries."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simpletuner_pl.errors import ConfigError

from helpers import CPU, ROOT, compose, read_metrics, run_cli, typed

SMALL = ("experiment=demo", CPU, "data.datasets.demo.resolution=64")
ADAPTER = Path("adapter") / "pytorch_lora_weights.safetensors"


def train(out: Path, *overrides: str, cache: Path = None):
    from simpletuner_pl.train import run

    return run(compose(*SMALL, f"output_dir={out}", f"data.cache_dir={cache or out.parent / 'cache'}", *overrides))


def checkpoints(out: Path):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


# ---- 1. one last.ckpt, the newest; resume takes the newest intact one -------------------------------------------
def test_one_last_checkpoint_always_the_newest(tmp_path):
    out = tmp_path / "run"
    train(out, "train.max_steps=10", "train.checkpoint_every_n_steps=4")
    assert checkpoints(out) == ["last.ckpt", "step=10.ckpt", "step=4.ckpt", "step=8.ckpt"]  # no last-v1
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 10
    assert train(out, "train.max_steps=12", "train.checkpoint_every_n_steps=4").global_step == 12
    assert "last-v1.ckpt" not in checkpoints(out)
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 12


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_resume_steps_past_a_damaged_checkpoint(damage, tmp_path, caplog):
    from simpletuner_pl.resume import choose

    out = tmp_path / "run"
    train(out, "train.max_steps=6", "train.checkpoint_every_n_steps=3")
    for name in ("last.ckpt", "step=6.ckpt"):  # the two step-6 files
        path = out / "checkpoints" / name
        data = path.read_bytes()
        path.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    found = choose(typed(*SMALL, f"output_dir={out}", "train.max_steps=9"))
    assert found.step == 3 and found.path.endswith("step=3.ckpt")
    assert "is unreadable" in caplog.text
    assert train(out, "train.max_steps=9").global_step == 9


def test_resume_by_step_number(tmp_path):
    out = tmp_path / "run"
    train(out, "train.max_steps=6", "train.checkpoint_every_n_steps=3")
    trainer = train(out, "train.max_steps=5", "train.resume=3")
    assert trainer.global_step == 5
    with pytest.raises(ConfigError, match="no such checkpoint"):
        train(out, "train.max_steps=9", "train.resume=4")


# ---- 2. exact resume --------------------------------------------------------------------------------------------
def test_a_resumed_run_equals_the_uninterrupted_one_step_for_step(tmp_path):
    """Dropout on, so the restored generators matter; CPU, fp32: exact."""
    args = ("adapter.dropout=0.1", "train.log_every_n_steps=1", "train.checkpoint_every_n_steps=3")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(straight, "train.max_steps=6", *args, cache=tmp_path / "cache_a")
    train(split, "train.max_steps=3", *args, cache=tmp_path / "cache_b")
    train(split, "train.max_steps=6", *args, cache=tmp_path / "cache_b")
    assert read_metrics(split, "train/loss") == read_metrics(straight, "train/loss")  # exact floats
    a, b = load_file(straight / ADAPTER), load_file(split / ADAPTER)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_noise_does_not_depend_on_whether_the_caches_existed(tmp_path):
    cache = tmp_path / "cache"
    train(tmp_path / "fills", "train.max_steps=4", "train.log_every_n_steps=1", cache=cache)
    train(tmp_path / "finds", "train.max_steps=4", "train.log_every_n_steps=1", cache=cache)  # cache already full
    assert read_metrics(tmp_path / "finds", "train/loss") == read_metrics(tmp_path / "fills", "train/loss")


# ---- 3. signals ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_exits_non_zero_and_the_rerun_resumes(signum, code, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "simpletuner_pl", *SMALL, "train.max_steps=100000",
               "train.checkpoint_every_n_steps=1000", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}",
               "train.log_every_n_steps=1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (out / "data" / "buckets.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # a few dozen steps
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == code, output[-3000:]
    assert f"{signal.Signals(signum).name}: stopped after saving" in output and "Traceback" not in output
    step = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 1000
    result = run_cli(*SMALL, f"train.max_steps={step + 2}", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0 and f"(step {step})" in result.stdout + result.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2


def test_kill_9_leaves_every_checkpoint_readable_and_the_run_resumable(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "simpletuner_pl", *SMALL, "train.max_steps=100000",
               "train.checkpoint_every_n_steps=1", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step=10.ckpt").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()  # SIGKILL: no handler runs, mid-save or not
    process.wait(timeout=60)
    for path in (out / "checkpoints").glob("*.ckpt"):
        torch.load(path, weights_only=True)  # the atomic writes: a kill never leaves a half file under its name
    orphan = out / "checkpoints" / ".last.ckpt.crashed.tmp"  # what a kill mid-save leaves behind
    orphan.write_bytes(b"partial")
    os.utime(orphan, (time.time() - 120, time.time() - 120))
    from simpletuner_pl.resume import newest_intact

    step = newest_intact(out).step
    result = run_cli(*SMALL, f"train.max_steps={step + 1}", "train.checkpoint_every_n_steps=1000",
                     f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not orphan.exists()


# ---- 4. nothing user-supplied is unpickled ------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 1, "state_dict": {}, "payload": _Payload(str(marker))}, out / "checkpoints/last.ckpt")
    with open(out / "checkpoints" / "step=1.ckpt", "wb") as handle:  # the legacy (non-zip) format too
        pickle.dump({"global_step": 1, "payload": _Payload(str(marker))}, handle)
    with pytest.raises(ConfigError, match="not a plain checkpoint: loading it would run code"):
        train(out, "train.max_steps=5")
    assert not marker.exists()


# ---- 5. reusing an output_dir --------------------------------------------------------------------------------------
def test_output_dir_reuse_never_overwrites_or_relabels_a_run(tmp_path):
    out = tmp_path / "run"
    first = run_cli(*SMALL, "train.max_steps=3", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}")
    assert first.returncode == 0, first.stderr[-2000:]
    config, adapter = (out / ".hydra/config.yaml").read_text(), (out / ADAPTER).read_bytes()
    cases = [("train.resume=null", "already holds a run"),
             ("optimizer.lr=5e-4", "the run is finished"),
             ("train.max_steps=5", None)]
    for override, message in cases[:2]:
        result = run_cli(*SMALL, "train.max_steps=3", override, f"output_dir={out}", f"data.cache_dir={tmp_path}/c")
        assert result.returncode == 2 and message in result.stdout + result.stderr, override
    changed = run_cli(*SMALL, "train.max_steps=5", "optimizer.lr=5e-4", "adapter.rank=8", f"output_dir={out}",
                      f"data.cache_dir={tmp_path / 'cache'}")
    text = changed.stdout + changed.stderr
    assert changed.returncode == 2 and "cannot resume" in text and "optimizer.lr: 0.001 -> 0.0005" in text
    assert "adapter.rank: 4 -> 8" in text
    other_base = run_cli(*SMALL, "train.max_steps=5", "model.pretrained_model_name_or_path=/elsewhere",
                         f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}")
    assert other_base.returncode == 2
    assert (out / ".hydra/config.yaml").read_text() == config and (out / ADAPTER).read_bytes() == adapter
    longer = run_cli(*SMALL, "train.max_steps=5", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}")
    assert longer.returncode == 0
    assert "max_steps: 5" in (out / ".hydra/config.yaml").read_text()
    assert (out / ".hydra/config.before_step_3.yaml").read_text() == config  # the run's earlier config kept


# ---- 6. values that make no sense ----------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("optimizer.warmup_steps=-1", "optimizer.warmup_steps=-1 is out of range: it must be >= 0"),
    ("adapter.alpha=-2", "adapter.alpha=-2.0 is out of range: it must be > 0"),
    ("train.max_grad_norm=-1", "train.max_grad_norm=-1.0 is out of range: it must be > 0 (null turns clipping off)"),
    ("optimizer.lr=-1e-4", "optimizer.lr=-0.0001 is out of range"),
    ("optimizer.betas=[0.9]", "give two values in [0, 1)"),
    ("model.t5_max_length=0", "model.t5_max_length=0 is out of range: it must be >= 1"),
    ("train.noise_offset_probability=2", "must be in [0, 1]"),
    ("validation.webhook_timeout_s=0", "must be > 0"),
])
def test_nonsense_values_are_refused_with_their_range(override, message):
    from simpletuner_pl.preflight import check_config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        check_config(typed(*SMALL, override))


def test_unknown_optimizer_arguments_are_refused_before_weights_load(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer.extra.amsgrd is not an argument of optimizer=adamw "
                                          r"\(did you mean amsgrad\?\)"):
        train(tmp_path / "run", "+optimizer.extra.amsgrd=true")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- 7. DoRA on a quanto base, with the defaults ---------------------------------------------------------------------
def test_dora_trains_on_an_int8_base_with_bf16_and_checkpointing(tmp_path):
    trainer = train(tmp_path / "run", "quant=int8", "adapter.use_dora=true", "quant.base_model_default_dtype=bf16",
                    "train.mixed_precision=bf16", "train.gradient_checkpointing=true", "train.max_steps=3")
    magnitudes = [p for n, p in trainer.lightning_module.named_parameters() if "lora_magnitude_vector" in n]
    assert trainer.global_step == 3 and magnitudes and all(torch.isfinite(p).all() for p in magnitudes)


# ---- 8. bad files never stop a run ----------------------------------------------------------------------------------
def test_bad_names_link_loops_and_emptied_cache_entries_are_skipped(tmp_path):
    from helpers import copy_demo_images

    images = copy_demo_images(tmp_path / "images")
    os.link(images / "coffee-cup.jpg", os.fsencode(images) + b"/caf\xe9.jpg")  # not UTF-8
    os.symlink(".", images / "loop")
    out, cache = tmp_path / "run", tmp_path / "cache"
    base = ("experiment=demo", CPU, "data=local", f"data.datasets.main.instance_data_dir={images}",
            "data.datasets.main.resolution=64", f"data.cache_dir={cache}")
    from simpletuner_pl.train import run

    run(compose(*base, "train.max_steps=2", f"output_dir={out}"))
    skipped = json.loads((out / "data" / "buckets.json").read_text())["main"]["skipped"]
    assert [s["reason"] for s in skipped] == ["the file name is not valid UTF-8 (rename the file)"]
    for entry in (cache / "text").rglob("*.safetensors"):
        entry.write_bytes(b"")  # a full disk or a killed copy
    trainer = run(compose(*base, "train.max_steps=2", f"output_dir={tmp_path / 'again'}"))
    assert trainer.global_step == 2 and all(e.stat().st_size > 8 for e in (cache / "text").rglob("*.safetensors"))


def test_unreadable_text_entry_falls_back_to_encoding_the_captions(tmp_path):
    from simpletuner_pl.data.cache import TensorCache
    from simpletuner_pl.data.dataset import BatchDataset, TextSource

    cache = TensorCache(tmp_path)
    cache.save("k", {"prompt_embeds": torch.zeros(3, 4), "pooled_prompt_embeds": torch.zeros(4)})
    cache.path("k").write_bytes(b"\x00" * 64)  # truncated
    dataset = BatchDataset([], [], [], TextSource(cache, {"a cat": "k"}, 8), 0)
    assert dataset._text(["a cat"]) == {}


# ---- 9. a silent hub, the validation keys nobody reads -------------------------------------------------------------
def test_an_unreachable_hub_is_reported_within_the_timeout(monkeypatch):
    import socket
    import threading

    import huggingface_hub.constants as constants

    import simpletuner_pl.sources as sources
    from simpletuner_pl.errors import ModelSourceError

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts, never answers
    threading.Thread(target=lambda: [server.accept() for _ in range(8)], daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(sources, "HUB_TIMEOUT_S", 1.0)
    started = time.perf_counter()
    with pytest.raises(ModelSourceError, match="cannot reach the Hugging Face Hub for someone/model within 1 s"):
        sources.check_source(sources.Source("model", "someone/model", None, "model_index.json"))
    assert time.perf_counter() - started < 30  # huggingface_hub's own retries take minutes
    server.close()


def test_validation_keys_set_while_validation_is_off_are_reported(caplog):
    from simpletuner_pl.preflight import validate

    validate(typed(*SMALL, "validation=off", "validation.prompt=a cat", "validation.num_inference_steps=4"))
    assert "validation is off, so validation.prompt, validation.num_inference_steps render nothing" in caplog.text


def test_slurm_requeue_checkpoints_are_resume_candidates(tmp_path):
    """Lightning's SLURM auto-requeue saves `hpc_ckpt_N.ckpt` in the run folder; the newest checkpoint wins."""
    from simpletuner_pl.resume import newest_intact

    out = tmp_path / "run"
    train(out, "train.max_steps=4", "train.checkpoint_every_n_steps=2")
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    state["global_step"] = 5  # as if the requeue signal came after step 5
    torch.save(state, out / "hpc_ckpt_1.ckpt")
    assert newest_intact(out).path == str(out / "hpc_ckpt_1.ckpt")
