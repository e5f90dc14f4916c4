"""Data pipeline throughput: discovery (cold/warm) against the PIL header-read floor, and latent caching.

    python experiments/bench_data.py --n 10000 --latents 2000

Generates N small JPEGs of mixed aspect ratios in a temporary folder, then measures
  * floor: a plain loop of `PIL.Image.open(path).size` over the same files, page cache dropped (cold) and hot (warm);
  * discovery cold: `simpletuner_pl.data.discovery.discover` with page cache dropped and no metadata cache;
  * discovery warm: the same call again (metadata cache present) — what a second start costs;
  * latent caching: the tiny Flux VAE encoding `--latents` of the images at 64 px through
    `simpletuner_pl.data.encode.encode_latents` (decode in workers, batched VAE, threaded safetensors writes);
  * text caching: `--captions` distinct captions through the tiny CLIP/T5 into safetensors entries, once per
    `model.t5_padding`: `unmodified` (the default: whole sequences, T5's outputs at the pad tokens included) and
    `zero` (pad outputs zeroed, so entries are stored trimmed to the real tokens). Real T5-XXL sizes:
    experiments/t5_cache_size.py.
  * launch -> first step (`--startup`): the CLI on the N images with a distinct caption each (.txt sidecars),
    tiny Flux at 64 px, `vae_cache_ondemand=true`, with the text embeddings on demand
    (`data.text_embeds.text_cache_ondemand=true`) and up front: cold (pages evicted, empty caches) and warm (the
    second start); from `subprocess.Popen` to the first batch's start (`timings.json`), with the stage lines of the
    run's `cli.log`. `python experiments/bench_data.py --n 10000 --latents 0 --captions 0 --startup`
"Cold" evicts the files' pages with posix_fadvise(DONTNEED) (no root needed; directory entries stay cached).
Reference figures from the issue (SimpleTuner 4.10.1, same machine class): floor 1.1 s cold / 0.24 s warm for 10k,
SimpleTuner discovery 11.6-15.3 s cold / 0.3-1.0 s warm, tiny-VAE latent caching 54 latents/s, text caching of
10k captions with the tiny encoders 61/s writing 494 MB (padded T5 sequences).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

SIMPLETUNER_LATENTS_PER_S = 54.0


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list:
    """N JPEGs, 48-320 px sides, aspect 1:3 to 3:1, smooth random content (a few KB each)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
        short = int(rng.integers(48, 160))
        w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
        tile = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
        path = folder / f"{i // 1000:03d}" / f"img_{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        tile.resize((w, h), Image.Resampling.BILINEAR).save(path, quality=85)
        paths.append(path)
    return paths


def drop_page_cache(paths) -> None:
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def floor(paths) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            _ = image.size  # the header is parsed here
    return time.perf_counter() - start


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_discovery(folder: Path, paths, cache_root: Path) -> dict:
    from simpletuner_pl.data.discovery import discover

    drop_page_cache(paths)
    floor_cold = floor(paths)
    floor_warm = min(floor(paths) for _ in range(3))
    drop_page_cache(paths)
    cold, listing = timed(lambda: discover(folder, cache_root / "a", read_sidecars=False))
    assert len(listing.images) == len(paths) and not any(i.error for i in listing.images)
    warm = min(timed(lambda: discover(folder, cache_root / "a", read_sidecars=False))[0] for _ in range(3))
    parse = timed(lambda: discover(folder, cache_root / "b", read_sidecars=False))[0]  # no metadata, hot pages
    return dict(floor_cold=floor_cold, floor_warm=floor_warm, cold=cold, warm=warm, parse_hot=parse)


def bench_latents(folder: Path, count: int, cache_root: Path, batch_size: int, workers: int) -> dict:
    import torch

    from simpletuner_pl.config import compose, to_typed
    from simpletuner_pl.data.cache import TensorCache, latent_key
    from simpletuner_pl.data.catalog import discover_all
    from simpletuner_pl.data.encode import encode_latents
    from simpletuner_pl.models.build import build_module

    # Decoding workers and the VAE share the CPU cores: oversubscribed OpenMP threads spin and stall.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    cfg = compose(["experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={folder}",
                   "data.datasets.main.resolution=64", f"data.cache_dir={cache_root}", "trainer.accelerator=cpu"])
    cfg = to_typed(cfg)
    samples = discover_all(cfg.data, cfg.train, cfg.trainer)["main"].samples[:count]
    module = build_module(cfg)
    identity = module.cache_identity()["vae"]
    jobs = [(latent_key(s.identity, s.geometry, identity), s.path, s.geometry) for s in samples]
    cache = TensorCache(cache_root / "latents")
    seconds, failures = timed(lambda: encode_latents(module, jobs, cache, batch_size, workers))
    assert not failures and len(cache.keys()) == len(jobs)
    return dict(latents=len(jobs), latent_seconds=seconds, latents_per_s=len(jobs) / seconds, module=module)


def bench_texts(module, count: int, cache_root: Path) -> dict:
    """`count` distinct captions through the text-embedding cache, per `model.t5_padding` mode."""
    from simpletuner_pl.data.cache import TensorCache, text_key
    from simpletuner_pl.data.encode import encode_texts

    words = ["a", "photo", "of", "red", "green", "blue", "cat", "dog", "car", "tree", "house", "on", "the", "street",
             "at", "night", "in", "snow"]
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(words, int(rng.integers(4, 16)))) + f" {i}" for i in range(count)]
    result, configured = dict(captions=count), module.model_cfg.t5_padding
    for padding in ("unmodified", "zero"):
        module.model_cfg.t5_padding = padding  # encode_prompts reads it
        identity = module.cache_identity()["text"]
        todo = [(text_key(c, identity, module.model_cfg.t5_max_length), c) for c in captions]
        cache = TensorCache(cache_root / f"text_{padding}")
        seconds, _ = timed(lambda todo=todo, cache=cache: encode_texts(module, todo, cache, 128))
        size = sum(f.stat().st_size for f in cache.root.rglob("*.safetensors"))
        result.update({f"caption_seconds_{padding}": seconds, f"captions_per_s_{padding}": count / seconds,
                       f"text_bytes_{padding}": size})
    module.model_cfg.t5_padding = configured
    return result


ROOT = Path(__file__).resolve().parent.parent
WORDS = ["a", "photo", "of", "red", "green", "blue", "cat", "dog", "car", "tree", "house", "on", "the", "street",
         "at", "night", "in", "snow"]


def write_captions(paths, seed: int = 0) -> None:
    """A distinct caption per image, in its .txt sidecar (caption_strategy=textfile)."""
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        path.with_suffix(".txt").write_text(" ".join(rng.choice(WORDS, int(rng.integers(4, 16)))) + f" {i}")


def launch_to_first_step(folder: Path, cache: Path, out: Path, ondemand: bool) -> dict:
    """One CLI run to its second step: seconds from launch to the first batch, and the startup lines it logged."""
    args = ["experiment=demo", "data=local", f"data.datasets.main.instance_data_dir={folder}",
            "data.datasets.main.caption_strategy=textfile", "data.datasets.main.resolution=64",
            "data.datasets.main.vae_cache_ondemand=true",
            f"data.text_embeds.text_cache_ondemand={str(ondemand).lower()}",
            f"data.cache_dir={cache}", f"output_dir={out}", "train.max_steps=2", "validation=off",
            "trainer.accelerator=cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    launched = time.time()
    done = subprocess.run([sys.executable, "-m", "simpletuner_pl", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"the run failed:\n{done.stderr[-3000:]}")
    first = json.loads((out / "timings.json").read_text())["first_batch_start_unix"]
    stages = []
    for line in (out / "cli.log").read_text().splitlines():
        if re.search(r" in \d+\.\d\d s \(|text cache on demand|GPU available", line):
            logged = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stages.append(f"+{logged - launched:4.1f} s {line.split('] - ', 1)[1][:110]}")
    stages.append(f"+{first - launched:4.1f} s first batch")
    return dict(seconds=first - launched, stages=stages)


IMPORTS = ("import lightning.pytorch, diffusers, peft; from diffusers import FluxTransformer2DModel, AutoencoderKL; "
           "from transformers import T5EncoderModel, CLIPTextModel")


def import_floor(paused: bool) -> float:
    """Seconds a fresh interpreter takes to import what a Flux run needs (in this venv torchmetrics pulls in
    torchvision and scipy, diffusers and peft bitsandbytes and torchao); `paused`: with the cyclic collector off, as
    the CLI imports them (simpletuner_pl.startup)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", ("import gc; gc.disable(); " if paused else "") + IMPORTS], check=True,
                   capture_output=True)
    return time.perf_counter() - started


def bench_startup(folder: Path, paths, tmp: Path) -> dict:
    write_captions(paths)
    sidecars = [p.with_suffix(".txt") for p in paths]
    result = {"import_floor": {how: min(import_floor(how == "paused") for _ in range(2))
                               for how in ("collecting", "paused")}}
    demo = ROOT / "simpletuner_pl" / "assets" / "demo"  # 5 captioned photos: what startup costs without data
    result["demo_5_images"] = dict(
        cold=launch_to_first_step(demo, tmp / "startup_cache_demo", tmp / "run_demo_cold", True)["seconds"],
        warm=launch_to_first_step(demo, tmp / "startup_cache_demo", tmp / "run_demo_warm", True)["seconds"])
    for ondemand in (True, False):
        label = "on_demand" if ondemand else "up_front"
        cache = tmp / f"startup_cache_{label}"
        drop_page_cache(paths + sidecars)
        cold = launch_to_first_step(folder, cache, tmp / f"run_cold_{label}", ondemand)
        warm = launch_to_first_step(folder, cache, tmp / f"run_warm_{label}", ondemand)
        result[label] = dict(cold=cold["seconds"], warm=warm["seconds"], cold_stages=cold["stages"],
                             warm_stages=warm["stages"])
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="JPEGs to generate and discover")
    parser.add_argument("--latents", type=int, default=2000, help="images to encode for the latent-cache figure")
    parser.add_argument("--captions", type=int, default=10000, help="distinct captions for the text-cache figure")
    parser.add_argument("--vae-batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers decoding for the VAE")
    parser.add_argument("--startup", action="store_true", help="also time launch -> first step of the CLI")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        t0 = time.perf_counter()
        paths = make_jpegs(folder, args.n)
        print(f"generated {args.n} JPEGs in {time.perf_counter() - t0:.1f} s")
        d = bench_discovery(folder, paths, Path(tmp) / "cache")
        n = args.n
        print(f"PIL header floor:   cold {d['floor_cold']:.3f} s ({n / d['floor_cold']:.0f} img/s), "
              f"warm {d['floor_warm']:.3f} s ({n / d['floor_warm']:.0f} img/s)")
        print(f"discovery cold:     {d['cold']:.3f} s ({n / d['cold']:.0f} img/s) = "
              f"{d['cold'] / d['floor_cold']:.2f}x the cold floor (target <= 2x)")
        print(f"discovery, no metadata cache, hot page cache: {d['parse_hot']:.3f} s = "
              f"{d['parse_hot'] / d['floor_warm']:.2f}x the warm floor")
        print(f"discovery warm:     {d['warm']:.3f} s ({n / d['warm']:.0f} img/s) = "
              f"{d['warm'] / d['floor_warm']:.2f}x the warm floor (target <= 0.3 s for 10k)")
        result = dict(d)
        if args.latents:
            lat = bench_latents(folder, min(args.latents, n), Path(tmp) / "cache", args.vae_batch_size, args.workers)
            print(f"latent caching (tiny VAE, 64 px, vae_batch_size={args.vae_batch_size}, workers={args.workers}): "
                  f"{lat['latents']} in {lat['latent_seconds']:.2f} s = {lat['latents_per_s']:.0f} latents/s = "
                  f"{lat['latents_per_s'] / SIMPLETUNER_LATENTS_PER_S:.1f}x SimpleTuner's 54/s (target >= 3x)")
            module = lat.pop("module")
            result.update(lat)
            if args.captions:
                txt = bench_texts(module, args.captions, Path(tmp) / "cache")
                for padding in ("unmodified", "zero"):
                    print(f"text-embed caching (tiny CLIP/T5, t5_max_length={module.model_cfg.t5_max_length}, "
                          f"t5_padding={padding}): {txt['captions']} captions in "
                          f"{txt[f'caption_seconds_{padding}']:.2f} s = {txt[f'captions_per_s_{padding}']:.0f}/s, "
                          f"{txt[f'text_bytes_{padding}'] / 1e6:.1f} MB on disk")
                result.update(txt)
        if args.startup:
            startup = bench_startup(folder, paths, Path(tmp))
            result["import_floor"] = startup.pop("import_floor")
            floor = result["import_floor"]
            print(f"import floor (a fresh interpreter importing lightning, diffusers, peft, transformers' "
                  f"encoders): {floor['collecting']:.1f} s, {floor['paused']:.1f} s with the collector paused")
            demo = startup.pop("demo_5_images")
            print(f"launch -> first step, the 5 demo photos, on demand: cold {demo['cold']:.1f} s, "
                  f"warm {demo['warm']:.1f} s")
            result["startup_demo"] = demo
            for label, figures in startup.items():
                how = label.replace("_", " ")
                print(f"launch -> first step, {n} images, vae_cache_ondemand, text embeddings {how}: "
                      f"cold {figures['cold']:.1f} s, warm {figures['warm']:.1f} s")
                for stage in figures["cold_stages"]:
                    print(f"    cold: {stage}")
                for stage in figures["warm_stages"]:
                    print(f"    warm: {stage}")
            result["startup"] = startup
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
