"""Move a LoRA between tools: `python -m simpletuner_pl.tools.convert_lora IN OUT --to <format>`.

Reads this project's files and other trainers' (SimpleTuner, ai-toolkit, Kohya sd-scripts, OneTrainer: whatever
the family pipeline's `lora_state_dict` converts), refuses keys it does not recognise, and writes OUT (a
`.safetensors` file, or a folder that gets `pytorch_lora_weights.safetensors`) in the layout the family uses for
that format (`simpletuner_pl.adapters.layouts`). The family comes from the keys' block names, or `--family`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from simpletuner_pl.errors import ConfigError

FORMATS = ("universal", "diffusers", "kohya", "comfyui")


def convert(source: Path, target: Path, to: str, family_name: Optional[str] = None) -> Path:
    """Write the LoRA at `source` to `target` in the `to` format; returns the file written."""
    import tempfile

    from safetensors import safe_open

    from simpletuner_pl.adapters.export import save_layout
    from simpletuner_pl.adapters.layouts import LORA_FILE
    from simpletuner_pl.adapters.lora_files import guess_family, read_lora
    from simpletuner_pl.models.registry import FAMILIES

    if source.is_dir():
        source = source / LORA_FILE
    if not source.is_file():
        raise ConfigError(f"{source}: no such LoRA file")
    try:
        with safe_open(str(source), framework="pt") as handle:  # the names only: read_lora loads the tensors once
            keys = list(handle.keys())
    except Exception as err:  # safetensors' own error types: not a .safetensors file, truncated
        raise ConfigError(f"{source} is not a readable .safetensors file ({err})") from None
    family_name = family_name or guess_family(keys,
                                              {name: spec.block_names for name, spec in FAMILIES.items()})
    if family_name not in FAMILIES:
        raise ConfigError(f"{source}: cannot tell the model family from its keys; pass --family "
                          f"({', '.join(FAMILIES)})")
    spec = FAMILIES[family_name]
    if to not in spec.export_formats:
        raise ConfigError(f"--to {to} is not available for {spec.title}; valid: {', '.join(spec.export_formats)}")
    prefix = spec.denoiser_name
    lora = read_lora(source, spec.pipeline_cls(), prefix)
    layout = spec.export_formats[to]
    out = target / LORA_FILE if target.suffix != ".safetensors" else target
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = None
    if layout == "peft":  # diffusers' layout states one rank and alpha for the file, as PEFT's config holds them
        alphas, ranks = set(lora.alpha.values()), {d.shape[0] for d in lora.down.values()}
        if len(alphas) > 1 or len(ranks) > 1:
            raise ConfigError(f"{source} has per-module ranks or alphas, which diffusers' own layout cannot state; "
                              "use --to universal")
        metadata = {"r": ranks.pop(), "lora_alpha": alphas.pop(), "target_modules": sorted(lora.down),
                    "lora_dropout": 0.0, "bias": "none"}
    with tempfile.TemporaryDirectory(dir=out.parent) as staging:  # renamed into place whole, never half-written
        os.replace(save_layout(Path(staging), lora, layout, prefix, spec.pipeline_cls(), metadata), out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simpletuner_pl.tools.convert_lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a LoRA .safetensors file, or a folder holding one")
    parser.add_argument("target", type=Path, help="the .safetensors file to write, or a folder")
    parser.add_argument("--to", choices=FORMATS, default="universal")
    from simpletuner_pl.models.registry import FAMILIES

    parser.add_argument("--family", choices=tuple(FAMILIES), default=None, help="default: from the keys")
    args = parser.parse_args(argv)
    try:
        written = convert(args.source, args.target, args.to, args.family)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {written} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
