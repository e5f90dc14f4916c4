"""A newcomer's first run (issue 14): `experiment=demo` writes before/after validation images as one grid, a loss
plot and a closing summary, shows progress of its startup work (in the log file too), and prints no third-party
startup noise."""

import io
import logging
import re

from PIL import Image

from helpers import read_metrics, run_cli

NOISE = ("Unable to import `torchao`", "kept in float32: []", "Attention backends are an experimental",
         "`weights_only` was not set")


def test_the_demo_shows_before_after_images_a_loss_plot_and_a_summary(tmp_path):
    from simpletuner_pl.callbacks.image_log import LABEL_HEIGHT

    out = tmp_path / "run"
    result = run_cli("experiment=demo", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}",
                     "train.max_steps=6", "train.log_every_n_steps=1", "validation.every_n_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    prompts = 3  # validation.prompt + the two of the demo prompt library, at one size (128x128)
    with Image.open(out / "before_after.png") as grid:
        assert grid.size == (2 * 128, prompts * (128 + LABEL_HEIGHT))
        before, after = grid.crop((0, LABEL_HEIGHT, 128, LABEL_HEIGHT + 128)), grid.crop(
            (128, LABEL_HEIGHT, 256, LABEL_HEIGHT + 128))
    with Image.open(out / "validation" / "step_0" / "validation-128x128.png") as step_0, \
            Image.open(out / "validation" / "step_6" / "validation-128x128.png") as step_6:
        assert before.tobytes() == step_0.convert("RGB").tobytes()
        assert after.tobytes() == step_6.convert("RGB").tobytes()
    with Image.open(out / "loss.png") as plot:
        assert plot.size == (720, 440)

    printed = result.stdout
    losses = [v for _, v in read_metrics(out, "train/loss")]
    assert len(losses) == 6
    assert f"done: 6 steps -> {out}" in printed
    assert f"train/loss {losses[0]:.4f} -> {losses[-1]:.4f} (first and last logged value" in printed
    assert re.search(r"speed: \d+\.\d{4} s/step", printed)
    assert str(out / "adapter" / "pytorch_lora_weights.safetensors") in printed
    assert str(out / "before_after.png") in printed
    assert f"pipe.load_lora_weights('{out / 'adapter'}')" in printed

    log = (out / "cli.log").read_text()
    assert "done: 6 steps" in log and "load it with diffusers" in log  # the summary is in the log file too
    assert re.search(r"discovery .*demo: 5/5 image headers in \d+\.\d\d s \(.*/s\)", log)
    assert re.search(r"discovery .*demo: 5/5 caption files in", log)
    assert re.search(r"dataset demo: VAE latents: 5/5 latents in \d+\.\d\d s \(.*/s\) -> ", log)
    assert re.search(r"text cache: 5/5 captions in \d+\.\d\d s \(.*/s\) -> ", log)
    for noise in NOISE:
        assert noise not in result.stderr and noise not in result.stdout, noise


def test_a_bar_shows_counts_and_rates_on_a_terminal_and_the_log_file_gets_the_lines(tmp_path, monkeypatch):
    from rich.console import Console

    from simpletuner_pl import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", lambda: Console(file=screen, force_terminal=True, width=150))
    monkeypatch.setattr(progress, "BAR_AFTER_S", 0.0)
    logger = logging.getLogger("test_first_run.progress")
    logger.setLevel(logging.INFO)
    console_lines, file_handler = io.StringIO(), logging.FileHandler(tmp_path / "cli.log")
    console_handler = logging.StreamHandler(console_lines)
    logger.addHandler(console_handler)
    logger.addHandler(file_handler)
    try:
        with progress.Progress("VAE cache demo", 10, "latents", logger, every_s=0.0, where="/cache") as bar:
            for _ in range(10):
                bar.advance()
    finally:
        logger.removeHandler(console_handler)
        logger.removeHandler(file_handler)
        file_handler.close()
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without the terminal's colour codes
    assert re.search(r"VAE cache demo .*━.* 10/10 latents [\d,]+/s", drawn), drawn
    in_file = (tmp_path / "cli.log").read_text()
    assert re.search(r"VAE cache demo: 5/10 latents \(.*/s, ~\d+ s left\)", in_file)  # while the bar is live
    assert re.search(r"VAE cache demo: 10/10 latents in \d+\.\d\d s \(.*/s\) -> /cache", in_file)
    on_console = console_lines.getvalue()
    assert "10/10 latents in" in on_console and "5/10" not in on_console, "no line under a live bar"
