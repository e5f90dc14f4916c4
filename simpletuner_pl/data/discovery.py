"""Find a dataset's images and their upright sizes from headers only, with a metadata cache.

One directory walk (`os.scandir`, so sizes and mtimes come with the listing) finds images and caption sidecars.
Files whose (mtime, size) match the cache are not opened at all; the rest have their header parsed by PIL in a
thread pool (PIL reads a header lazily, so no pixel is decoded to learn a size; threads overlap the disk reads),
counted on screen and in the log (`simpletuner_pl.progress`).
A cheap end-of-file check catches truncated JPEG/PNG/WebP files, which only a full decode confirms. The cache is
one compact columnar JSON file per dataset folder, written atomically, so 100k files cost one read, not 100k.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from simpletuner_pl.io import write_json
from simpletuner_pl.progress import track

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
CACHE_VERSION = 1
SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class FileInfo:
    rel: str  # path relative to the dataset folder, '/'-separated
    mtime_ns: int
    size: int
    width: int = 0  # upright (EXIF orientation applied)
    height: int = 0
    error: Optional[str] = None


@dataclass
class Listing:
    root: Path
    images: List[FileInfo]
    sidecars: Dict[str, str]  # relative .txt path → its text


def printable(path: str) -> str:
    """A path as it can be logged and written to JSON (undecodable bytes of a file name shown as \\xNN)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def name_problem(rel: str) -> str | None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "the file name is not valid UTF-8 (rename the file)"
    return None


def scan_tree(root: Path) -> Tuple[Dict[str, Tuple[int, int]], Dict[str, Tuple[int, int]]]:
    """(images, texts): relative path → (mtime_ns, size), recursively; hidden files and folders are ignored.
    Folder symlinks are followed once: a link back into a folder already walked (a loop) is skipped with a
    warning, and so is an entry that cannot be read, so a bad link never stops discovery."""
    images: Dict[str, Tuple[int, int]] = {}
    texts: Dict[str, Tuple[int, int]] = {}
    prefix = len(str(root)) + 1
    stack, seen = [str(root)], set()
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                log.warning("skipping %s: it links back to a folder already scanned", printable(folder))
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as err:
            log.warning("skipping %s: %s", printable(folder), err.strerror or err)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                    continue
                ext = os.path.splitext(entry.name)[1].lower()
                target = images if ext in IMAGE_EXTENSIONS else texts if ext == ".txt" else None
                if target is not None and entry.is_file():
                    stat = entry.stat()
                    target[entry.path[prefix:].replace(os.sep, "/")] = (stat.st_mtime_ns, stat.st_size)
            except OSError as err:  # a dangling or looping link, a file removed while listing
                log.warning("skipping %s: %s", printable(entry.path), err.strerror or err)
    return images, texts


def _orientation(image: Image.Image) -> int:
    raw = image.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(0x0112, 1) or 1)


def _complete(handle, fmt: Optional[str], size: int) -> bool:
    """True when the file's ending looks intact (no decode); False means "decode it to be sure"."""
    if fmt == "JPEG":
        handle.seek(-2, os.SEEK_END)
        return handle.read(2) == b"\xff\xd9"
    if fmt == "PNG":
        handle.seek(-12, os.SEEK_END)
        return handle.read(12) == PNG_END
    if fmt == "WEBP":
        handle.seek(4)
        return int.from_bytes(handle.read(4), "little") + 8 <= size
    return True


def read_header(path: str, size: int) -> Tuple[int, int, Optional[str]]:
    """(width, height, None) upright, or (0, 0, reason) for a file that cannot be trained on."""
    if size == 0:
        return 0, 0, "zero-byte file"
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            width, height = image.size
            if image.width < 1 or image.height < 1:
                return 0, 0, "empty image (0 pixels)"
            if _orientation(image) in SWAPS_SIDES:
                width, height = height, width
            if not _complete(handle, image.format, size):
                try:
                    image.load()
                except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for bad data
                    return 0, 0, f"truncated or corrupt image data ({err})"
            return width, height, None
    except UnidentifiedImageError:
        return 0, 0, "not an image (format not recognised)"
    except Exception as err:
        return 0, 0, f"unreadable ({type(err).__name__}: {err})"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cache_file(cache_root: Path, root: Path) -> Path:
    return cache_root / "metadata" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:24]}.json"


def _load_cache(path: Path, root: Path) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION or data.get("root") != str(root):
            return {}, {}
        i, t = data["images"], data["texts"]
        images = {p: (m, s, w, h, e or None) for p, m, s, w, h, e in zip(i["path"], i["mtime_ns"], i["size"],
                                                                             i["width"], i["height"], i["error"])}
        texts = {p: (m, s, x) for p, m, s, x in zip(t["path"], t["mtime_ns"], t["size"], t["text"])}
        return images, texts
    except (OSError, ValueError, KeyError, TypeError):
        return {}, {}  # missing or unreadable cache: rebuild


def _save_cache(path: Path, root: Path, images: Dict[str, tuple], texts: Dict[str, tuple]) -> None:
    columns = {"path": list(images), **{k: [v[n] or (0 if n < 4 else "") for v in images.values()]
                                        for n, k in enumerate(("mtime_ns", "size", "width", "height", "error"))}}
    text_columns = {"path": list(texts), **{k: [v[n] for v in texts.values()]
                                            for n, k in enumerate(("mtime_ns", "size", "text"))}}
    write_json(path, {"version": CACHE_VERSION, "root": str(root), "images": columns, "texts": text_columns},
               indent=None)


def discover(root: Path, cache_root: Path, read_sidecars: bool, workers: int = 16) -> Listing:
    """Every image under `root` with its upright size or the reason it is unusable (cached by path+mtime+size)."""
    root = root.resolve()
    found, found_texts = scan_tree(root)
    meta_path = cache_file(cache_root, root)
    cached, cached_texts = _load_cache(meta_path, root)
    images = {p: cached[p] for p, stat in found.items() if p in cached and cached[p][:2] == stat}
    todo = [p for p in found if p not in images]
    texts = {p: cached_texts[p] for p, stat in found_texts.items()
             if p in cached_texts and cached_texts[p][:2] == stat} if read_sidecars else {}
    todo_texts = [p for p in found_texts if p not in texts] if read_sidecars else []
    if todo or todo_texts:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            headers = pool.map(lambda p: read_header(str(root / p), found[p][1]), todo)
            bodies = pool.map(lambda p: _read_text(str(root / p)), todo_texts)
            what = f"discovery {printable(str(root))}"
            headers = list(track(headers, what, len(todo), "image headers", log))
            bodies = list(track(bodies, what, len(todo_texts), "caption files", log))
            images.update({p: (*found[p], *header) for p, header in zip(todo, headers)})
            texts.update({p: (*found_texts[p], body) for p, body in zip(todo_texts, bodies)})
    stale = len(images) != len(cached) or (read_sidecars and len(texts) != len(cached_texts))
    if todo or todo_texts or stale:
        kept_texts = texts if read_sidecars else {p: v for p, v in cached_texts.items() if p in found_texts}
        _save_cache(meta_path, root, images, kept_texts)
    infos = [FileInfo(p, *images[p]) for p in sorted(images)]
    return Listing(root, infos, {p: v[2] for p, v in texts.items()})
