"""Label scanning of a whole image list, with YOLOv5's counters and a safe on-disk cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import img2label_path, is_writable
from .labels import ImageRecord, verify_image_label

CACHE_VERSION = "yolo-ray-labels-1"
Log = Callable[[str], None]


@dataclass
class LabelScan:
    """Verified images of a dataset and their labels (corrupt images already dropped).

    `labels[i]` is a float32 (n, 5) array of class, x, y, w, h normalised to 0-1;
    `segments[i]` a list of (k, 2) polygons aligned with `labels[i]` (empty for box-only
    labels); `shapes[i]` the image (w, h) after EXIF rotation.
    """

    images: list[Path]
    labels: list[np.ndarray]
    segments: list[list[np.ndarray]]
    shapes: np.ndarray                    # (n, 2) int64, (w, h)
    labels_dir: Path
    nc: int | None = None
    found: int = 0                        # label files present (empty ones included)
    missing: int = 0                      # images without a label file (backgrounds)
    empty: int = 0                        # empty label files (backgrounds)
    corrupt: int = 0                      # images dropped
    duplicates: int = 0                   # duplicate label rows removed
    messages: list[str] = field(default_factory=list)
    from_cache: bool = False

    @property
    def backgrounds(self) -> int:
        """Images without any label: missing + empty label files."""
        return self.missing + self.empty

    @property
    def label_files(self) -> list[Path]:
        """Label file path of every image."""
        return [img2label_path(p) for p in self.images]

    def summary(self) -> str:
        """YOLOv5's one-line scan summary."""
        return (f"Scanning {self.labels_dir}... {len(self.images)} images, "
                f"{self.backgrounds} backgrounds, {self.corrupt} corrupt")


def files_hash(image_files: Sequence[Path], nc: int | None) -> str:
    """Hash of image + label paths, sizes and mtimes, the cache version and nc."""
    h = hashlib.sha256(f"{CACHE_VERSION}|nc={nc}".encode())
    for im in image_files:
        for p in (im, img2label_path(im)):
            try:
                st = os.stat(p)
                h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"|{p}|-1".encode())
    return h.hexdigest()


def _from_records(records: list[ImageRecord], labels_dir: Path, nc: int | None) -> LabelScan:
    ok = [r for r in records if r.status != "corrupt"]
    statuses = [r.status for r in records]
    count = {s: statuses.count(s) for s in ("found", "missing", "empty", "corrupt")}
    return LabelScan(
        images=[r.image for r in ok], labels=[r.labels for r in ok],
        segments=[r.segments for r in ok],
        shapes=np.array([r.shape for r in ok], dtype=np.int64).reshape(-1, 2),
        labels_dir=labels_dir, nc=nc, found=count["found"] + count["empty"],
        missing=count["missing"], empty=count["empty"], corrupt=count["corrupt"],
        duplicates=sum(r.duplicates for r in records),
        messages=[m for r in records for m in r.messages])


def _lengths(items: Sequence) -> np.ndarray:
    return np.array([len(x) for x in items], dtype=np.int64)


def save_cache(path: Path, scan: LabelScan, hash_: str, log: Log = print) -> bool:
    """Write the scan to `path` atomically (npz without pickle + JSON metadata)."""
    if not path.parent.is_dir():
        return False  # no labels folder at all: nothing worth caching
    if not is_writable(path.parent):
        log(f"WARNING: cache directory {path.parent} is not writeable, label cache not saved")
        return False
    segs = [s for per_image in scan.segments for s in per_image]
    meta = {"version": CACHE_VERSION, "hash": hash_, "nc": scan.nc,
            "images": [str(p) for p in scan.images], "labels_dir": str(scan.labels_dir),
            "found": scan.found, "missing": scan.missing, "empty": scan.empty,
            "corrupt": scan.corrupt, "duplicates": scan.duplicates, "messages": scan.messages}
    arrays = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "labels": np.concatenate(scan.labels or [np.zeros((0, 5), np.float32)]),
        "label_counts": _lengths(scan.labels), "shapes": scan.shapes,
        "seg_points": np.concatenate(segs or [np.zeros((0, 2), np.float32)]).astype(np.float32),
        "seg_lengths": _lengths(segs), "seg_counts": _lengths(scan.segments)}
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # a file object: numpy keeps our name (no '.npz' added)
        os.replace(tmp, path)
    except OSError as e:
        if "tmp" in locals():
            Path(tmp).unlink(missing_ok=True)
        log(f"WARNING: cannot write label cache {path}: {e}")
        return False
    return True


def _split(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def load_cache(path: Path, hash_: str) -> LabelScan | None:
    """The cached scan if `path` holds one for exactly `hash_`; None when absent or stale."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != CACHE_VERSION or meta.get("hash") != hash_:
                return None
            labels = _split(z["labels"], z["label_counts"])
            flat_segs = _split(z["seg_points"], z["seg_lengths"])
            seg_counts, shapes = z["seg_counts"], z["shapes"]
    except Exception:  # unreadable, truncated or foreign file: rebuild it
        return None
    bounds = np.concatenate([[0], np.cumsum(seg_counts)])
    segments = [flat_segs[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return LabelScan(
        images=[Path(p) for p in meta["images"]], labels=labels, segments=segments,
        shapes=shapes, labels_dir=Path(meta["labels_dir"]), nc=meta["nc"],
        found=meta["found"], missing=meta["missing"], empty=meta["empty"],
        corrupt=meta["corrupt"], duplicates=meta["duplicates"], messages=meta["messages"],
        from_cache=True)


def _report(scan: LabelScan, log: Log) -> None:
    for m in scan.messages:
        log(m)
    log(scan.summary() + (" (cached)" if scan.from_cache else ""))


def scan_labels(image_files: Sequence[Path], nc: int | None, cache_path: str | Path | None = None,
                log: Log = print, threads: int = 8) -> LabelScan:
    """Verify every image and label file (YOLOv5 rules), using/refreshing a label cache.

    Args:
        image_files: images, e.g. from `list_image_files`.
        nc: number of classes (class ids must be < nc); None skips that check.
        cache_path: label cache file (see `files.default_cache_path`); None = no cache.
        log: receives each warning and the "Scanning ..." summary line.
        threads: verification threads (I/O bound, so threads beat processes here).

    Returns:
        A LabelScan; corrupt images are dropped, counted and explained in `.messages`.
    """
    files = [Path(p) for p in image_files]
    labels_dir = img2label_path(files[0]).parent if files else Path(".")
    cache = Path(cache_path) if cache_path is not None else None
    if cache is not None:
        cached = load_cache(cache, files_hash(files, nc))
        if cached is not None:
            _report(cached, log)
            return cached
    with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        records = list(pool.map(lambda p: verify_image_label(p, img2label_path(p), nc), files))
    scan = _from_records(records, labels_dir, nc)
    _report(scan, log)
    if cache is not None:
        # Hash after scanning: restoring a truncated JPEG changes its size and mtime.
        save_cache(cache, scan, files_hash(files, nc), log)
    return scan
