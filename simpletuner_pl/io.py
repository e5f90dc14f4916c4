"""Atomic writes: a reader, a crash or a Ctrl-C never sees a half-written file or folder.

Everything the package writes that someone may read back (checkpoints, adapters, caches, reports, metrics) goes
through here: the content is written beside its target under a hidden temporary name and renamed into place, which
is atomic on POSIX file systems; on any failure the temporary is removed and the previous file is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(target: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; when the block succeeds it replaces `target` (`durable`: fsync
    first, for files that must survive a power cut, such as checkpoints)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    return write_text(target, json.dumps(payload, indent=indent) + ("\n" if indent is not None else ""))


def save_image(image, target: str | os.PathLike) -> Path:
    """A PIL image written atomically, its format from the target's extension (e.g. `.png`)."""
    from PIL import Image

    with atomic_path(target) as tmp:
        image.save(tmp, format=Image.registered_extensions()[Path(target).suffix.lower()])
    return Path(target)


@contextmanager
def atomic_dir(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `directory`; on success each entry replaces its namesake inside
    `directory` (a sub-folder is swapped whole, so a reader sees the old or the new one, never a mix)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        directory.mkdir(exist_ok=True)
        for item in list(staging.iterdir()):
            target = directory / item.name
            if item.is_dir() and target.is_dir():  # a folder cannot replace a non-empty one: swap it aside first
                os.replace(target, staging / f".old.{item.name}")
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_orphans(root: str | os.PathLike, older_than_s: float) -> int:
    """Delete what an interrupted write left under `root` (the hidden temporaries of `atomic_path` and the staging
    folders of `atomic_dir`) once it is older than `older_than_s`; returns how many were removed."""
    import time

    root, cutoff, removed = Path(root), time.time() - older_than_s, 0
    if not root.is_dir():
        return 0
    for path in list(root.rglob(".*")):
        try:
            stale = path.lstat().st_mtime < cutoff
        except OSError:
            continue
        if stale and path.is_file() and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
            removed += 1
        elif stale and path.is_dir() and _is_staging(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _is_staging(path: Path) -> bool:
    """`.adapter.k3j9x2` beside `adapter`: a folder `atomic_dir` was still filling."""
    parts = path.name.split(".")
    return len(parts) >= 3 and parts[0] == "" and (path.parent / ".".join(parts[1:-1])).exists()
