"""Strategies on the CPU (gloo), through the CLI as a user runs them: 2-process DDP trains on disjoint shards, fills
each cache entry once and writes one adapter; resume under DDP continues at the saved step; FSDP2 (Lightning's
ModelParallelStrategy) trains the same adapter as DDP, in the single-process format; DeepSpeed composes and is
refused up front where it cannot run."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import CPU, make_datamodule, read_metrics, run_cli, typed

ADAPTER = "pytorch_lora_weights.safetensors"
# Two ranks over the demo photos at 256 px, where every bucket has at least one image per rank.
DEMO = ("experiment=demo", CPU, "train.checkpoint_every_n_steps=2", "train.log_every_n_steps=1",
        "data.datasets.demo.resolution=256")
TWO = ("trainer.devices=2",)
STRATEGIES = ["auto", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero2_offload",
              "deepspeed_zero3_offload"]


def cli(out: Path, cache: Path, *args: str):
    result = run_cli(*DEMO, f"output_dir={out}", f"data.cache_dir={cache}", *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def files(folder: Path):
    return sorted(p for p in folder.rglob("*.safetensors"))


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """4 steps of 2-process DDP, then the same folder again to step 6 (a resume)."""
    root = tmp_path_factory.mktemp("ddp")
    cli(root / "run", root / "cache", *TWO, "strategy=ddp", "train.max_steps=4")
    first = {"latents": files(root / "cache" / "vae"), "texts": files(root / "cache" / "text"),
             "adapter": sorted(p.name for p in (root / "run" / "adapter").iterdir()),
             "validation": sorted(p.name for p in (root / "run" / "validation").iterdir() if p.is_dir())}
    resumed = cli(root / "run", root / "cache", *TWO, "strategy=ddp", "train.max_steps=6")
    return root, first, resumed


def test_ddp_trains_disjoint_shards_and_fills_each_cache_entry_once(ddp, tmp_path):
    root, first, _ = ddp
    cfg = typed(*DEMO, *TWO)
    ranks = [make_datamodule(cfg, tmp_path / str(rank), rank=rank, world=2) for rank in (0, 1)]
    latents = [{job[1] for jobs in dm.latent_jobs().values() for job in jobs} for dm in ranks]
    captions = [set(dm.my_captions()) for dm in ranks]
    assert latents[0] and latents[1] and not latents[0] & latents[1]  # what each rank encodes (its shard)
    assert not captions[0] & captions[1]
    trained = set().union(*latents)
    assert len(trained) == 5  # every photo, each on one rank
    # the run filled one entry per trained image and caption: no rank encoded the whole dataset
    assert len(first["latents"]) == len(trained) and len(first["texts"]) == len(set().union(*captions))
    assert first["adapter"] == ["README.md", ADAPTER, "step_2", "step_4"]  # written once, by rank 0
    assert [p.name for p in (root / "run" / "adapter" / "step_2").iterdir()] == [ADAPTER]
    assert first["validation"] == ["step_0", "step_4"]  # rank 0's rounds (experiment=demo validates); none hung


def test_ddp_checkpoints_hold_only_the_adapter_and_resume_at_the_saved_step(ddp):
    root, _, resumed = ddp
    assert "resuming from" in resumed.stdout + resumed.stderr and "(step 4)" in resumed.stdout + resumed.stderr
    ckpt = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])
    steps = [step for step, _ in read_metrics(root / "run", "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 5  # no step logged twice: 4 and 5 came after the resume


def test_fsdp2_trains_the_ddp_adapter_in_the_single_process_format(ddp, tmp_path):
    """FSDP2 on 2 ranks, 6 steps straight, equals DDP's 4 steps + resume to 6 (same shards, same noise): sharding,
    the gathered checkpoint and resume all keep the numbers; the export is the single-process file, key for key."""
    root, _, _ = ddp
    fsdp = tmp_path / "fsdp"
    result = cli(fsdp, tmp_path / "cache", *TWO, "strategy=fsdp", "train.max_steps=6", "validation=off")
    assert "FSDP2: FSDPFluxTransformer2DModel sharded over 2 ranks" in result.stdout + result.stderr
    single = tmp_path / "single"
    cli(single, tmp_path / "cache", "train.max_steps=1")
    sharded, replicated = load_file(fsdp / "adapter" / ADAPTER), load_file(root / "run" / "adapter" / ADAPTER)
    reference = load_file(single / "adapter" / ADAPTER)
    assert {k: v.shape for k, v in sharded.items()} == {k: v.shape for k, v in reference.items()}
    assert max((sharded[k] - replicated[k]).abs().max().item() for k in sharded) < 1e-6
    ckpt = torch.load(fsdp / "checkpoints" / "last.ckpt", weights_only=True)
    whole = {k.removeprefix("transformer."): v.shape for k, v in ckpt["state_dict"].items()}
    assert all(".lora_" in k for k in whole) and whole  # whole tensors, gathered: the adapter alone
    assert sorted(p.name for p in (fsdp / "adapter").iterdir()) == ["README.md", ADAPTER, "step_2", "step_4",
                                                                    "step_6"]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_composes(name):
    cfg = typed("experiment=demo", f"strategy={name}")
    assert cfg.strategy.name == name.split("_")[0]
    assert cfg.strategy.stage == (3 if "zero3" in name else 2)


def test_deepspeed_on_the_cpu_is_refused_before_anything_loads(tmp_path):
    result = run_cli("experiment=demo", "strategy=deepspeed_zero2_offload", CPU, f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "strategy=deepspeed_zero2 runs on CUDA GPUs only, and trainer.accelerator=cpu" in output
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("overrides, message", [
    (["strategy=deepspeed_zero3_offload", CPU, "validation=off"], "strategy=deepspeed_zero3 runs on CUDA GPUs only"),
    (["trainer.strategy=ddp"], "trainer.strategy is set from the strategy= group"),
    (["strategy=ddp", "strategy.stage=3"], "strategy=ddp does not read strategy.stage"),
    (["strategy=fsdp", "strategy.find_unused_parameters=true"], "strategy=fsdp does not read strategy.find_unused"),
    (["strategy=deepspeed_zero2", "strategy.offload_parameters=true"], "needs ZeRO stage 3"),
    (["strategy=fsdp", "validation=demo"], "validation rounds run on rank 0 only"),
    (["strategy=deepspeed_zero3", "eval=loss", "validation=off", "eval.eval_loss.instance_data_dir=/held_out"],
     "eval.eval_loss rounds run on rank 0 only"),
    (["strategy=fsdp", "quant=int8", "validation=off"], "cannot shard a quantised base"),
    (["strategy=fsdp", "adapter=lokr", "validation=off"], "cannot shard a LyCORIS LoKr network"),
    (["strategy=fsdp", "offload=group", "validation=off"], "places the denoiser's shards itself"),
    (["strategy=fsdp", "adapter.use_dora=true", "validation=off"], "which the DoRA export reads on rank 0"),
])
def test_strategy_options_that_cannot_run_are_refused_with_the_fix(overrides, message):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(typed("experiment=demo", *overrides))


def test_deepspeed_without_its_package_names_the_extra():
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    from simpletuner_pl.config.strategy import check_strategy_environment
    from simpletuner_pl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"pip install 'simpletuner_pl\[deepspeed\]'"):
        check_strategy_environment(typed("experiment=demo", "strategy=deepspeed_zero2").strategy, {})


def test_torchrun_processes_must_share_an_explicit_output_dir(tmp_path):
    result = run_cli("experiment=demo", CPU, "strategy=ddp", cwd=tmp_path, TORCHELASTIC_RUN_ID="t", WORLD_SIZE="2",
                     RANK="0", LOCAL_RANK="0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pass output_dir=/path/to/run so every rank writes the same run folder" in result.stdout + result.stderr


def test_strategy_options_reach_lightnings_strategies(monkeypatch):
    """Each strategy.* value is an argument of the Lightning strategy it builds (DeepSpeed: recorded, as deepspeed
    is not installed here; fsdp: what `fully_shard` receives for every block)."""
    import torch.distributed.fsdp as fsdp

    from simpletuner_pl import strategies
    from simpletuner_pl.models.tiny_flux import build_tiny_flux_components

    def built(*overrides):
        return strategies.build_strategy(typed("experiment=demo", *overrides, CPU).strategy)

    assert built("strategy=ddp")._ddp_kwargs["find_unused_parameters"] is False
    assert built("strategy=ddp", "strategy.find_unused_parameters=true")._ddp_kwargs["find_unused_parameters"]
    calls = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, mesh, reshard_after_forward: calls.append(
        reshard_after_forward))

    class Mesh:
        def size(self):
            return 2

    for value in (True, False):
        calls.clear()
        sharding = built("strategy=fsdp", f"strategy.reshard_after_forward={str(value).lower()}")
        monkeypatch.setattr(type(sharding), "device_mesh", property(lambda self: {"data_parallel": Mesh()}))
        sharding.shard(build_tiny_flux_components()["transformer"])
        assert calls and set(calls) == {value}
    recorded = {}
    monkeypatch.setattr(strategies, "GatheringDeepSpeedStrategy", lambda **kwargs: recorded.update(kwargs))
    built("strategy=deepspeed_zero3_offload")
    assert recorded["stage"] == 3 and recorded["offload_optimizer"] and recorded["offload_parameters"]
    built("strategy=deepspeed_zero2")
    assert recorded["stage"] == 2 and not recorded["offload_optimizer"] and not recorded["offload_parameters"]
