"""The held-out images of the eval loss: a folder never trained on, read the same way at every evaluation.

The source is `eval.eval_loss.instance_data_dir`, or else the first dataset with `dataset_type: eval` (which
training leaves out; for FLUX.1 Kontext it names its reference images with `conditioning_data`). Files are found,
captioned and decoded by the training pipeline's own code (discovery, caption strategies; `load_pixels` at
evaluation time), then resized and centre-cropped to one square side so a single σ grid applies to all of them;
the first `num_images` in path order are used, so every evaluation sees exactly the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from simpletuner_pl.config.data import DataConfig, DatasetConfig
from simpletuner_pl.config.validation import RESOLUTION_MULTIPLE, EvalLossConfig
from simpletuner_pl.data.buckets import Geometry, centre_square
from simpletuner_pl.data.captions import caption_from_filename, caption_source
from simpletuner_pl.data.discovery import IMAGE_EXTENSIONS, discover, name_problem
from simpletuner_pl.data.references import find_reference, problem, reference_table
from simpletuner_pl.errors import DataError

DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class HeldOut:
    dataset: DatasetConfig  # the folder and how its images are captioned
    resolution: int  # square side in pixels
    setting: str  # the config key that named the folder, for messages
    references: Optional[Path] = None  # FLUX.1 Kontext: the folder of their reference images

    @property
    def root(self) -> Path:
        return Path(self.dataset.instance_data_dir).expanduser().resolve()


@dataclass(frozen=True)
class HeldOutImage:
    path: str
    caption: str
    geometry: Geometry
    reference: Optional[str] = None  # FLUX.1 Kontext: its reference image (the eval dataset's conditioning_data)


def held_out_source(data: DataConfig, loss: EvalLossConfig) -> HeldOut:
    """Where the eval images come from (config only; `check_validation` made sure there is a source)."""
    side = loss.resolution or data.largest_edge(DEFAULT_RESOLUTION) // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE
    if loss.instance_data_dir:
        dataset = DatasetConfig(dataset_type="eval", instance_data_dir=loss.instance_data_dir,
                                caption_strategy=loss.caption_strategy)
        return HeldOut(dataset, side, "eval.eval_loss.instance_data_dir")
    name, dataset = next(iter(data.held_out().items()))
    pair = dataset.conditioning_data
    references = Path(data.datasets[pair].instance_data_dir).expanduser().resolve() if pair else None
    return HeldOut(dataset, side, f"data.datasets.{name}.instance_data_dir", references)


def discover_held_out(source: HeldOut, cache_root: Path, limit: int) -> List[HeldOutImage]:
    """The first `limit` usable images with their caption (a missing sidecar falls back to the file name) and, with
    `source.references` folder (Kontext), their reference image of the same relative path (images without a usable
    one are left out)."""
    if not source.root.is_dir():
        raise DataError(f"{source.setting}={source.root} does not exist or is not a folder")
    listing = discover(source.root, cache_root, read_sidecars=source.dataset.caption_strategy == "textfile")
    captions_of = caption_source(source.dataset, listing.root, listing.sidecars)
    references = source.references
    table = reference_table(discover(references, cache_root, read_sidecars=False)) if references else None
    images = []
    for info in (i for i in listing.images if i.error is None and name_problem(i.rel) is None):
        reference = None
        if table is not None:
            found = find_reference(table, info.rel)
            if problem(info, found, source.setting):
                continue
            reference = str(references / found.rel)
        caption = (captions_of(info.rel) or (caption_from_filename(info.rel),))[0]
        images.append(HeldOutImage(str(listing.root / info.rel), caption,
                                   centre_square(info.width, info.height, source.resolution), reference))
        if len(images) == limit:
            break
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source.root} ({source.setting})")
    return images
