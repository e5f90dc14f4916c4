"""Paired conditioning images (FLUX.1 Kontext's reference images, loss masks): a conditioning dataset's files
paired with an image dataset's samples by relative path.

A target `a/b.jpg` pairs with the conditioning folder's `a/b.jpg`, else with its only image of stem `a/b` in any
format (`a/b.png`). The paired image is cropped exactly like its target (the same bucket, resize and crop box,
proportionally for one of another size), so their aspect ratios must agree. A target without a usable pair comes
back with its reason (references: skipped like any bad file; masks: an error, since every image needs one).
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from simpletuner_pl.data.discovery import FileInfo, Listing, printable

ASPECT_TOLERANCE = 0.01  # relative: rounding of a resized copy, not a different framing


def _stem(rel: str) -> str:
    return str(PurePosixPath(rel).with_suffix(""))


def reference_table(listing: Listing) -> Dict[str, FileInfo]:
    """Relative path and relative stem → the conditioning image (a stem shared by two files maps to neither)."""
    table: Dict[str, FileInfo] = {info.rel: info for info in listing.images}
    stems: Dict[str, List[FileInfo]] = {}
    for info in listing.images:
        stems.setdefault(_stem(info.rel), []).append(info)
    for stem, infos in stems.items():
        if len(infos) == 1:
            table.setdefault(stem, infos[0])
    return table


def find_reference(table: Dict[str, FileInfo], rel: str) -> Optional[FileInfo]:
    return table.get(rel) or table.get(_stem(rel))


def problem(target: FileInfo, reference: Optional[FileInfo], setting: str, kind: str = "reference") -> Optional[str]:
    if reference is None:
        return f"no {kind} image of the same relative path in {setting}"
    if reference.error:
        return f"its {kind} {reference.rel} cannot be read ({reference.error})"
    target_aspect, reference_aspect = target.width / target.height, reference.width / reference.height
    if abs(reference_aspect / target_aspect - 1) > ASPECT_TOLERANCE:
        return (f"its {kind} {reference.rel} is {reference.width}x{reference.height}, another aspect ratio than "
                f"{target.width}x{target.height} (both are cropped alike)")
    return None


def pair_references(samples: Sequence, infos: Dict[str, FileInfo], listing: Listing, setting: str,
                    kind: str = "reference") -> Tuple[list, List[Dict[str, str]]]:
    """(samples with their `reference` (or `mask`, by `kind`) set, unpaired entries {path, reason}) for catalog
    `samples` paired with the conditioning `listing`. `infos`: the target files by absolute path; `setting`: the
    conditioning folder's config key, for messages."""
    table, kept, skipped = reference_table(listing), [], []
    for sample in samples:
        target = infos[sample.path]
        reference = find_reference(table, target.rel)
        reason = problem(target, reference, setting, kind)
        if reason:
            skipped.append({"path": sample.path, "reason": reason})
            continue
        path = printable(str(listing.root / reference.rel))
        if kind == "mask":
            kept.append(dataclasses.replace(sample, mask=path))
        else:
            kept.append(dataclasses.replace(sample, reference=path,
                                            reference_identity=f"{path}|{reference.mtime_ns}|{reference.size}"))
    return kept, skipped
