"""Validation images, prompt library, previews and model card, on the tiny Flux through the real trainer."""

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CPU, DEMO_DIR, compose, typed

SIZES = [(64, 64), (96, 48)]
LIBRARY = {"../x": "a red cube on a table", "a/b": "a blue sphere",
           "chef_<token>": {"prompt": "a photo of <token> cooking", "adapter_strength": 0.5}}


def validation_args(tmp_path: Path, out: str, *extra: str):
    library = tmp_path / "library.json"
    library.write_text(json.dumps(LIBRARY))
    return ["experiment=demo", "validation=on", "validation.prompt=a photo of chelsea the cat",
            f"validation.prompt_library={library}", "validation.token=sks", "validation.resolutions='64x64,96x48'",
            "validation.num_inference_steps=2", "validation.every_n_steps=2", "validation.guidance_real=2.0",
            "validation.no_cfg_until_timestep=1",
            "validation.negative_prompt=blurry", "validation.seed=7", "data.datasets.demo.resolution=64",
            f"data.cache_dir={tmp_path / out / 'cache'}", f"output_dir={tmp_path / out}", CPU, *extra]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same validated 3-step run twice (same seed): validation at steps 0, 2 and 3 (the end)."""
    from simpletuner_pl.train import run

    tmp = tmp_path_factory.mktemp("validation")
    for out in ("a", "b"):
        run(compose(*validation_args(tmp, out, "train.max_steps=3")))
    return tmp / "a", tmp / "b"


def test_images_of_each_size_exist_after_the_right_steps_and_are_reproducible(two_runs):
    first, second = two_runs
    names = {"validation", "x", "a_b", "chef_sks"}
    assert sorted(p.name for p in (first / "validation").iterdir()) == ["step_0", "step_2", "step_3"]
    for step in (0, 2, 3):
        expected = {f"{n}-{w}x{h}.png" for n in names for w, h in SIZES}
        folder = first / "validation" / f"step_{step}"
        assert {p.name for p in folder.glob("*-*x*.png")} == expected
        assert (folder / "grid.png").is_file()
        for name in expected:
            with Image.open(folder / name) as a, Image.open(second / "validation" / f"step_{step}" / name) as b:
                assert a.size == tuple(int(v) for v in name.rsplit("-", 1)[1][:-4].split("x"))
                assert np.array_equal(np.asarray(a), np.asarray(b)), name
    # The images come from the adapter being trained: they change between the benchmark and the end.
    with Image.open(first / "validation/step_0/validation-64x64.png") as a, \
            Image.open(first / "validation/step_3/validation-64x64.png") as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    rows = (first / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("validation/seconds")
    steps = [int(r.split(",")[rows[0].split(",").index("step")]) for r in rows[1:] if r.split(",")[column]]
    assert steps == [0, 2, 3]


def test_unsafe_nicknames_cannot_escape_the_step_folder(two_runs, tmp_path):
    from simpletuner_pl.callbacks.prompts import safe_nickname, validation_prompts
    from simpletuner_pl.callbacks.validation import image_path

    first, _ = two_runs
    pngs = [p for p in first.rglob("*.png") if p.parent != first]  # the run folder's own: loss.png, before_after.png
    assert pngs and all(p.parent.parent == first / "validation" for p in pngs)  # only validation/step_N/*.png
    assert not (first / "validation" / "step_0" / "a").exists()
    for unsafe in ("../x", "a/b", "..", "/etc/passwd", "a\\..\\b", "", "C:evil"):
        step_dir = tmp_path / "step_1"
        assert image_path(step_dir, safe_nickname(unsafe), 64, 64).parent == step_dir
    assert safe_nickname("../x") == "x" and safe_nickname("a/b") == "a_b" and safe_nickname("..") == "prompt"
    cfg = typed("validation=on", f"validation.prompt_library={tmp_path / 'lib.json'}")
    (tmp_path / "lib.json").write_text(json.dumps({"a/b": "1", "a_b": "2", "A_B": "3", "validation": "4"}))
    cfg.validation.prompt = "0"
    assert [p.nickname for p in validation_prompts(cfg.validation)] == ["validation", "a_b", "a_b_2", "A_B_3",
                                                                      "validation_2"]


def test_model_card_records_what_reproduces_the_validation_images(two_runs):
    first, _ = two_runs
    card = (first / "adapter" / "README.md").read_text()
    for expected in ("base_model: tiny random-init flux", "flavour `krea`", "FluxPipeline",
                     "FlowMatchEulerDiscreteScheduler", '"use_dynamic_shifting": true', "`num_inference_steps` | `2`",
                     "`true_cfg_scale` | `2.0`", "`negative_prompt` | `blurry`", "True CFG starts at step 1",
                     "`seed` | `7 (fresh CPU generator per image)`", "`resolutions` | `64x64,96x48`",
                     "true_cfg_scale=2.0", "negative_prompt='blurry'", "manual_seed(7)", "`adapter.rank` | `4`",
                     "with delay_true_cfg(pipe, steps=1):",
                     "`optimizer.lr` | `0.001`", "`train.max_steps` | `3`",
                     "| chef_sks | a photo of sks cooking | 0.5 |",
                     "trained steps: 3", "instance_prompt: \"sks\""):
        assert expected in card, expected
    links = [line.split("](")[1].split(")")[0] for line in card.splitlines() if line.startswith("| x-64x64")][0:1]
    assert links == ["../validation/step_0/x-64x64.png"]
    assert (first / "adapter" / links[0]).resolve().is_file()
    assert "../validation/step_3/x-64x64.png" in card


@pytest.mark.parametrize("overrides, message", [
    (["validation.preview=true"], "needs validation.webhook_url"),
    (["validation.preview=true", "validation.webhook_url=ftp://x"], "must start with http"),
    (["validation.resolutions=1000x1000"], "use 992"),
    (["validation.resolutions=big"], "is not WxH or N"),
    (["validation.prompt=null"], "needs validation.prompt"),
    (["validation.prompt_library=user_prompt_library.example.json"], "set validation.token"),
    (["validation.prompt_library=nope.json"], "user_prompt_library.example.json"),
    (["validation.guidance_real=2", "validation.negative_prompt=null"], "needs validation.negative_prompt"),
    (["validation.enabled=false", "eval=clip"], "scores the validation images"),
    (["eval=loss"], "needs held-out images"),
    (["eval=loss", "eval.eval_loss.instance_data_dir={demo}"], "overlap training dataset demo"),
])
def test_bad_validation_settings_fail_at_startup_with_the_fix(overrides, message):
    from simpletuner_pl.errors import ConfigError
    from simpletuner_pl.preflight import validate

    cfg = typed("experiment=demo", "validation=on", "validation.prompt=a cat",
                *(o.format(demo=DEMO_DIR) for o in overrides))
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_shipped_library_renders_with_a_token():
    from simpletuner_pl.callbacks.prompts import validation_prompts

    cfg = typed("validation=on", "validation.prompt_library=user_prompt_library.example.json", "validation.token=sks")
    prompts = validation_prompts(cfg.validation)
    assert len(prompts) == 15 and prompts[0].nickname == "anime_sks" and "<token>" not in prompts[0].prompt


@contextmanager
def webhook_server(deadline_s: float = 120.0):
    """A local HTTP endpoint collecting JSON posts; it shuts itself down after `deadline_s` whatever happens."""
    posts = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    timer = threading.Timer(deadline_s, server.shutdown)
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", posts
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()


def tiny_taef1(directory: Path) -> Path:
    """A random AutoencoderTiny with Flux's 16 latent channels and 8x upsampling, saved like madebyollin/taef1."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                    num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4).save_pretrained(directory)
    return directory


def test_previews_are_posted_to_the_webhook(tmp_path):
    import base64
    import io

    from simpletuner_pl.train import run

    decoder = tiny_taef1(tmp_path / "taef1")
    with webhook_server() as (url, posts):
        run(compose("experiment=demo", "validation=on", "validation.prompt=a cat",
                    "validation.resolutions=[64x64,96x48]", "validation.num_inference_steps=4",
                    "validation.preview=true", "validation.preview_steps=2",
                    f"validation.preview_decoder={decoder}", f"validation.webhook_url={url}",
                    "train.max_steps=1", "data.datasets.demo.resolution=64", f"data.cache_dir={tmp_path / 'cache'}",
                    f"output_dir={tmp_path / 'run'}", CPU))
    # rounds at step 0 and at the end (step 1) x 2 sizes x steps 2 and 4 of 4
    assert len(posts) == 8
    assert [(p["global_step"], p["step"], tuple(p["resolution"])) for p in posts] == [
        (g, s, size) for g in (0, 1) for size in SIZES for s in (2, 4)]
    for post in posts:
        assert post["event"] == "validation.image" and post["total_steps"] == 4 and post["nickname"] == "validation"
        with Image.open(io.BytesIO(base64.b64decode(post["image"]))) as image:
            assert image.size == tuple(post["resolution"])


def test_missing_preview_decoder_fails_before_weights_load(tmp_path):
    from simpletuner_pl.errors import ModelSourceError
    from simpletuner_pl.preflight import preflight

    cfg = typed("experiment=demo", "validation=on", "validation.prompt=a cat", "validation.preview=true",
                f"validation.preview_decoder={tmp_path / 'nope'}", "validation.webhook_url=http://127.0.0.1:9/x",
                f"output_dir={tmp_path / 'run'}")
    with pytest.raises(ModelSourceError, match="does not exist"):
        preflight(cfg)
    assert not (tmp_path / "run").exists()
