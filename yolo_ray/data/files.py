"""Image discovery and image → label path mapping for YOLO-format datasets."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import DataError

# YOLOv5's accepted image suffixes (lower case, without the dot).
IMG_FORMATS: frozenset[str] = frozenset(
    {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"})

Sources = str | Path | Sequence[str | Path]


def is_image_file(p: str | Path) -> bool:
    """True when the file name has one of YOLOv5's image suffixes (case-insensitive)."""
    return Path(p).suffix[1:].lower() in IMG_FORMATS


def _as_list(sources: Sources) -> list[Path]:
    if isinstance(sources, (str, Path)):
        return [Path(sources)]
    return [Path(s) for s in sources]


def _read_list_file(list_file: Path) -> list[Path]:
    """Lines of a .txt image list; './x' and other relative lines resolve against its folder."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{list_file}: cannot read image list: {e}") from None
    parent = list_file.parent
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        p = Path(line)
        if line.startswith("./"):
            p = parent / line[2:]
        elif not p.is_absolute() and (parent / p).exists():
            # YOLOv5 leaves these relative to the working directory; the list's folder is
            # tried first so a list works from anywhere, the cwd reading stays as fallback.
            p = parent / p
        out.append(p)
    return out


def list_image_files(sources: Sources) -> list[Path]:
    """All image files named by `sources`, sorted and de-duplicated.

    Args:
        sources: a directory (searched recursively), a .txt list of image paths, an image
            file, or a list of these.

    Raises:
        DataError: a source does not exist or no images were found.
    """
    found: list[Path] = []
    for src in _as_list(sources):
        if src.is_dir():
            found += [p for p in src.rglob("*") if is_image_file(p) and p.is_file()]
        elif src.is_file() and src.suffix.lower() == ".txt":
            found += [p for p in _read_list_file(src) if is_image_file(p)]
        elif src.is_file():
            if not is_image_file(src):
                raise DataError(f"{src}: not an image (suffix must be one of "
                                f"{', '.join(sorted(IMG_FORMATS))}) nor a .txt list")
            found.append(src)
        else:
            raise DataError(f"data path does not exist: {src}")
    files = sorted({Path(os.path.abspath(p)) for p in found})
    if not files:
        names = ", ".join(str(s) for s in _as_list(sources))
        raise DataError(f"no images found in {names} (suffixes: {', '.join(sorted(IMG_FORMATS))})")
    return files


def img2label_path(p: str | Path) -> Path:
    """Label file of an image: the last `images` folder becomes `labels`, suffix `.txt`."""
    path = Path(p)
    parts = list(path.parts)
    for i in range(len(parts) - 2, -1, -1):  # folders only, never the file name itself
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def default_cache_path(image_files: Iterable[Path]) -> Path:
    """YOLOv5's label cache location: `<labels dir>.cache` of the first image's label."""
    first = next(iter(image_files), None)
    if first is None:
        raise DataError("no image files given")
    label_dir = img2label_path(first).parent
    return label_dir.with_name(label_dir.name + ".cache")


def is_writable(path: Path) -> bool:
    """Writable for us *and* not marked read-only: root ignores mode bits, we respect them."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
