"""`python -m simpletuner_pl.tools.import_simpletuner`: SimpleTuner's own quickstart configs
(tests/fixtures/simpletuner, extracted from the quickstarts' JSON blocks) convert to the recorded experiments,
which compose and validate; every option not carried over is reported with its reason; bad input is a clear error,
not a traceback.

After an intended change of the importer, regenerate the goldens with
`GOLDEN_UPDATE=1 pytest tests/test_import_simpletuner.py` and review the diff.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simpletuner_pl.config import to_typed as to_typed_config

from helpers import DEMO_DIR, ROOT, compose, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "simpletuner"
GOLDEN = Path(__file__).parent / "golden" / "import_simpletuner"
MODULE = "simpletuner_pl.tools.import_simpletuner"
CASES = {  # golden name → (config, dataloader)
    "flux_quickstart": ("flux_quickstart/config.json", "flux_quickstart/multidatabackend.json"),
    "flux_dev2pro": ("flux_dev2pro/config.json", None),
    "flux_lowest_vram": ("flux_lowest_vram/config.json", None),
    "sdxl_quickstart": ("sdxl_quickstart/config.json", "sdxl_quickstart/multidatabackend.json"),
    "sdxl_quickstart_quantised": ("sdxl_quickstart/config_quantised.json", "sdxl_quickstart/multidatabackend.json"),
}
# What the quickstarts leave behind besides defaults: nothing that changes training
EXPECTED_LEFT = {
    "flux_quickstart": {"no equivalent": ["data_backend_config", "validation_preview", "validation_preview_steps"]},
    "flux_dev2pro": {},
    "flux_lowest_vram": {"value not supported": ["attention_mechanism"]},  # SageAttention cannot train
    "sdxl_quickstart": {},
    "sdxl_quickstart_quantised": {},
}


def import_case(name):
    from simpletuner_pl.tools.import_simpletuner import import_files

    config, dataloader = CASES[name]
    return import_files(FIXTURES / config, FIXTURES / dataloader if dataloader else None)


def demo_overrides(text: str):
    """Every dataset of an experiment pointed at the bundled photos."""
    datasets = (yaml.safe_load(text).get("data") or {}).get("datasets") or {}
    return [f"data.datasets.{name}.instance_data_dir={DEMO_DIR}" for name in datasets]


def compose_text(text: str, folder: Path, *overrides: str):
    (folder / "experiment").mkdir(parents=True, exist_ok=True)
    (folder / "experiment" / "imported.yaml").write_text(text)
    return compose(f"hydra.searchpath=[file://{folder}]", "experiment=imported", *overrides)


@pytest.mark.parametrize("name", CASES)
def test_quickstart_configs_convert_to_the_recorded_experiments(name):
    text, conv, problem = import_case(name)
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("GOLDEN_UPDATE"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert problem is None
    assert text == golden.read_text()
    left = {reason: [entry.source.split(": ", 1)[1] for entry in entries]
            for reason, entries in conv.left_by_reason().items() if reason != "ignored because default"}
    assert left == EXPECTED_LEFT[name]


@pytest.mark.parametrize("name", CASES)
def test_recorded_experiments_compose_and_validate_on_the_demo_data(name, tmp_path):
    from simpletuner_pl.preflight import check_config

    text = (GOLDEN / f"{name}.yaml").read_text()
    cfg = to_typed_config(compose_text(text, tmp_path, *demo_overrides(text)))
    spec = check_config(cfg)  # values, combinations and the family's rules
    assert spec.name == name.split("_")[0]
    assert all(ds.instance_data_dir == str(DEMO_DIR) for ds in cfg.data.datasets.values())


def test_flux_quickstart_carries_the_settings_that_matter(tmp_path):
    text = (GOLDEN / "flux_quickstart.yaml").read_text()
    cfg = to_typed_config(compose_text(text, tmp_path, *demo_overrides(text)))
    assert (cfg.model.flavour, cfg.quant.base_model_precision, cfg.optimizer.name) == ("krea", "int8-quanto",
                                                                                       "adamw_bf16")
    assert cfg.model.pretrained_model_name_or_path == "black-forest-labs/FLUX.1-dev"
    assert cfg.validation.enabled and cfg.validation.prompt_library == "config/user_prompt_library.json"
    assert cfg.validation.resolutions == "1024x1024,1280x768,2048x2048" and cfg.validation.guidance == 3.5
    datasets = cfg.data.datasets
    assert list(datasets) == ["pseudo-camera-10k-flux", "dreambooth-subject", "dreambooth-subject-512"]
    reg, subject = datasets["pseudo-camera-10k-flux"], datasets["dreambooth-subject"]
    assert reg.is_regularisation_data and reg.crop and reg.crop_style == "center" and reg.resolution == 512
    assert subject.repeats == 1000 and subject.caption_strategy == "instanceprompt" and subject.resolution == 1024
    assert cfg.data.text_embeds.cache_dir == "cache/text/flux"
    sdxl = to_typed_config(compose_text((GOLDEN / "sdxl_quickstart_quantised.yaml").read_text(), tmp_path / "s",
                                        *demo_overrides((GOLDEN / "sdxl_quickstart_quantised.yaml").read_text())))
    assert (sdxl.model.family, sdxl.quant.base_model_precision, sdxl.optimizer.name) == ("sdxl", "int8-quanto",
                                                                                         "optimi_lion")
    assert sdxl.optimizer.lr == 1e-4  # the quickstart's, above optimi_lion's own 3e-5
    main = sdxl.data.datasets["pseudo-camera-10k-sdxl"]
    assert (main.resolution_type, main.resolution, main.minimum_image_size) == ("area", 1.0, 0.25)


def test_dash_dash_and_bare_keys_give_the_same_experiment(tmp_path):
    from simpletuner_pl.tools.import_simpletuner import import_files

    cli_style = json.loads((FIXTURES / "flux_lowest_vram" / "config.json").read_text())
    assert all(key.startswith("--") for key in cli_style)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps({k[2:]: v for k, v in cli_style.items()}))
    bare, _, problem = import_files(tmp_path / "bare" / "config.json")
    assert problem is None
    assert bare == (GOLDEN / "flux_lowest_vram.yaml").read_text()


def test_unknown_and_unsupported_options_are_reported_with_reasons_and_not_emitted(tmp_path):
    config = {"--model_family": "flux", "model_flavour": "schnell", "frobnicate": 3, "use_ema": True,
              "learning_rate": -3, "lr_scheduler": "sine", "crop_style": "face", "flux_guidance_value": 3.5,
              "lora_rank": 8, "tread_config": {"routes": [{"selection_ratio": 0.4, "start_layer_idx": 3,
                                                           "end_layer_idx": -4}]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cli(str(tmp_path / "config.json"), module=MODULE)
    assert result.returncode == 0, result.stderr
    expected = [
        "config.json: frobnicate=3: unknown option",
        "config.json: use_ema=true: not supported (no EMA weights)",
        "config.json: learning_rate=-3: value not supported (optimizer.lr=-3 is out of range: it must be > 0)",
        "config.json: lr_scheduler=sine: value not supported (one of constant, constant_with_warmup, cosine",
        "config.json: crop_style=face: value not supported (data.datasets.main.crop_style='face' is not a valid",
        "config.json: flux_guidance_value=3.5: value not supported (model.flavour=schnell has no guidance embedding",
    ]
    for line in expected:
        assert line in result.stderr and f"#   {line}" in result.stdout
    emitted = yaml.safe_load(result.stdout)
    assert "optimizer" not in emitted and "guidance_value" not in emitted.get("model", {})
    assert emitted["adapter"] == {"rank": 8}
    assert emitted["tread"]["routes"] == [{"selection_ratio": 0.4, "start_layer_idx": 3, "end_layer_idx": -4}]
    assert emitted["data"]["datasets"]["main"]["instance_data_dir"] == "???"  # the user names the folder
    assert "  - override /model: flux_schnell" in result.stdout


def test_bad_input_is_a_clear_error_without_a_traceback(tmp_path):
    verbatim = FIXTURES / "flux_dev2pro" / "config.verbatim.json"  # the seed's block, trailing comma and all
    result = run_cli(str(verbatim), module=MODULE)
    assert result.returncode == 2 and result.stdout == ""
    assert "not valid JSON at line 7, column 1" in result.stderr and "trailing comma" in result.stderr
    (tmp_path / "fragment.json").write_text('"lora_rank": 16,\n"max_grad_norm": 1.0\n')  # as the seed quotes it
    (tmp_path / "backends.json").write_text('{"id": "x"}')
    (tmp_path / "other.json").write_text('{"model_family": "sd3"}')
    for args, message in [(["fragment.json"], "wrap the options in { }"),
                          (["other.json"], "model_family=sd3 is not supported"),
                          (["missing.json"], "missing.json: no such file")]:
        result = run_cli(*(str(tmp_path / a) for a in args), module=MODULE)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    (tmp_path / "flux.json").write_text('{"model_family": "flux"}')
    result = run_cli(str(tmp_path / "flux.json"), str(tmp_path / "backends.json"), module=MODULE)
    assert result.returncode == 2 and "expected a JSON list of dataset objects" in result.stderr


def test_an_experiment_our_checks_refuse_is_written_with_the_reason_and_exit_1(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_family": "flux", "model_type": "full"}))
    (tmp_path / "multidatabackend.json").write_text(json.dumps(
        [{"id": "reg", "instance_data_dir": "/data/reg", "is_regularisation_data": True}]))
    result = run_cli(str(tmp_path / "config.json"), str(tmp_path / "multidatabackend.json"), module=MODULE)
    assert result.returncode == 1
    assert "error: the experiment does not validate: is_regularisation_data (reg)" in result.stderr
    assert "# does not validate: is_regularisation_data (reg)" in result.stdout


def test_config_env_with_trainer_extra_args_and_toml_read_like_json(tmp_path):
    from simpletuner_pl.tools.import_simpletuner import import_files

    # the Flux quickstart's group-offload flags, as its TRAINER_EXTRA_ARGS
    (tmp_path / "config.env").write_text(
        'export MODEL_FAMILY=flux\nMODEL_NAME="black-forest-labs/FLUX.1-dev"\nMODEL_FLAVOUR=dev\n'
        'TRAINER_EXTRA_ARGS="--enable_group_offload --group_offload_type block_level '
        '--group_offload_blocks_per_group 2 --group_offload_use_stream --lora_rank=4"\n')
    text, conv, problem = import_files(tmp_path / "config.env")
    assert problem is None
    values = {key: value for key, (value, _) in conv.values.items()}
    assert values["offload.group_offload_type"] == "block_level" and values["offload.blocks_per_group"] == 2
    assert values["offload.use_stream"] is True and values["adapter.rank"] == 4
    assert "  - override /model: flux_dev" in text and "model" not in yaml.safe_load(text)  # dev's own repo
    (tmp_path / "config.toml").write_text('model_family = "flux"\nlora_rank = 4\n"--optimizer" = "optimi-lion"\n')
    toml_text, _, _ = import_files(tmp_path / "config.toml")
    (tmp_path / "config.json").write_text('{"model_family": "flux", "lora_rank": 4, "optimizer": "optimi-lion"}')
    json_text, _, _ = import_files(tmp_path / "config.json")
    assert toml_text.replace("config.toml", "config.json") == json_text


def test_lycoris_config_is_read_next_to_the_config(tmp_path):
    from simpletuner_pl.tools.import_simpletuner import import_files

    lycoris = {"algo": "lokr", "multiplier": 1.0, "linear_dim": 10000, "linear_alpha": 1, "factor": 12,
               "bypass_mode": True, "apply_preset": {"target_module": ["Attention"],
                                                     "module_algo_map": {"Attention": {"factor": 12}}}}
    (tmp_path / "lycoris_config.json").write_text(json.dumps(lycoris))
    options = {"model_family": "sdxl", "model_type": "lora", "lora_type": "lycoris",
               "lycoris_config": "lycoris_config.json", "lora_init_type": "loftq",
               "base_model_precision": "int8-quanto"}
    (tmp_path / "config.json").write_text(json.dumps(options))
    text, conv, problem = import_files(tmp_path / "config.json")
    assert problem is None
    cfg = to_typed_config(compose_text(text, tmp_path / "conf", "data.datasets.main.instance_data_dir=/x"))
    assert cfg.adapter.type == "lokr" and cfg.adapter.lycoris.factor == 12
    assert cfg.adapter.lycoris.target_module == ["Attention"]
    assert cfg.adapter.lycoris.module_factors["Attention"] == 12
    assert cfg.adapter.init == "default"  # LoftQ on a quantised base: SimpleTuner falls back too, and it is reported
    assert any(e.source.endswith("lora_init_type") and e.reason == "value not supported" for e in conv.left)


def test_the_importer_does_not_import_torch(tmp_path):
    code = ("import sys; from simpletuner_pl.tools.import_simpletuner import main; "
            f"rc = main([{str(FIXTURES / 'sdxl_quickstart' / 'config.json')!r}, '-o', {str(tmp_path / 'x.yaml')!r}]); "
            "print(rc, sorted(m for m in ('torch', 'lightning', 'diffusers') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.split("\n")[-2] == "0 []", result.stderr
    assert (tmp_path / "x.yaml").read_text().startswith("# @package _global_")


def test_every_known_option_is_carried_over_or_reported_whatever_its_value():
    """No option the tables know is dropped silently, and no value of the wrong kind raises."""
    from simpletuner_pl.tools.adapter_rules import ADAPTER_RULES
    from simpletuner_pl.tools.convert import FINISHED, convert
    from simpletuner_pl.tools.option_rules import RULES
    from simpletuner_pl.tools.option_table import DATASET_DEFAULTS, DIRECT, NO_EQUIVALENT_OPTIONS, NOT_SUPPORTED_OPTIONS
    from simpletuner_pl.tools.run_rules import RUN_RULES

    known = {*DIRECT, *NO_EQUIVALENT_OPTIONS, *NOT_SUPPORTED_OPTIONS, *RULES, *ADAPTER_RULES, *RUN_RULES, *FINISHED,
             *DATASET_DEFAULTS} - {"model_family", "model_flavour"}
    assert len(known) > 250
    silent = []
    for family in ("flux", "sdxl"):
        for key in sorted(known):
            for value in (True, "abc", None, 3):
                conv = convert({"model_family": family, key: value}, None)
                sources = {src for _, src in conv.values.values()} | {entry.source for entry in conv.left}
                carried = any(src.endswith(f": {key}") or src.endswith("adam_beta1/2") for src in sources)
                if not carried and len(conv.groups) == 2:  # model and data only: nothing chosen either
                    silent.append((family, key, value))
    assert silent == []
