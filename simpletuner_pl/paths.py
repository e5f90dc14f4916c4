"""Where the package's own files are: the Hydra config tree, the bundled assets and the shipped prompt libraries.

`conf/` sits at the top of a source checkout (Hydra convention) and inside the package (`simpletuner_pl/conf`)
when installed from a wheel; `config_dir()` finds either, so nothing else needs to know which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
DEMO_DATA_DIR = ASSETS_DIR / "demo"
TINY_TOKENIZER_DIR = ASSETS_DIR / "tiny_tokenizers"


def config_dir() -> Path:
    """`conf/` beside the package in a source checkout, `simpletuner_pl/conf/` inside an installed wheel."""
    for candidate in (PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"simpletuner_pl's config tree (train.yaml) is neither in {PACKAGE_DIR.parent / 'conf'} "
                            f"nor in {PACKAGE_DIR / 'conf'}; reinstall the package")


def demo_data_dir() -> str:
    return str(DEMO_DATA_DIR)


def asset_dir(name: str) -> str:
    """A bundled asset folder (`${asset_dir:demo_references}` in configs): demo_references (greyscale copies, the
    Kontext demo's reference images), demo_masks (the masked-loss demo's masks)."""
    folder = ASSETS_DIR / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no bundled asset folder {name!r} in {ASSETS_DIR}")
    return str(folder)


def shipped_prompt_libraries() -> Dict[str, Path]:
    """Prompt libraries shipped in `conf/validation/`, by file name."""
    return {p.name: p for p in sorted((config_dir() / "validation").glob("*.json"))}


def group_option(group: str, option: str) -> Path:
    """The YAML file of one config-group option, e.g. ("offload", "encoders") → conf/offload/encoders.yaml."""
    return config_dir() / group / f"{option}.yaml"
