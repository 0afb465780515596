"""Verification of one image and its YOLO label file, with YOLOv5's rules and clear reasons."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import DataError
from .files import IMG_FORMATS, is_writable

MIN_SIDE = 10  # YOLOv5 rejects images with a side under 10 px
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass
class ImageRecord:
    """Outcome of verifying one image + label file (one row of a LabelScan)."""

    image: Path
    labels: np.ndarray                      # (n, 5) float32 cls, x, y, w, h (normalised)
    segments: list[np.ndarray] = field(default_factory=list)  # per polygon row (k, 2)
    shape: tuple[int, int] = (0, 0)         # (w, h), EXIF-corrected
    status: str = "found"                   # found | missing | empty | corrupt
    duplicates: int = 0
    messages: list[str] = field(default_factory=list)


def segments2boxes(segments: list[np.ndarray]) -> np.ndarray:
    """Polygons (k, 2) normalised → boxes (n, 4) x, y, w, h from their extents."""
    boxes = np.zeros((len(segments), 4), dtype=np.float32)
    for i, s in enumerate(segments):
        lo, hi = s.min(0), s.max(0)
        boxes[i] = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1])
    return boxes


def _parse_row(tokens: list[str], where: str) -> list[float]:
    n = len(tokens)
    if n != 5 and (n < 7 or (n - 1) % 2):
        if n > 6:
            raise DataError(f"{where}: polygon needs x y pairs after the class, got {n - 1} values")
        raise DataError(f"{where}: expected 5 values (class x y w h) or a polygon, got {n}")
    values = []
    for t in tokens:
        try:
            v = float(t)
        except ValueError:
            raise DataError(f"{where}: not a number: {t!r}") from None
        if not math.isfinite(v):
            raise DataError(f"{where}: non-finite value {t!r}")
        values.append(v)
    return values


def _check_row(values: list[float], nc: int | None, where: str) -> None:
    c = values[0]
    if c < 0:
        raise DataError(f"{where}: negative class id {c:g}")
    if c != int(c):
        raise DataError(f"{where}: class id {c:g} is not an integer")
    if nc is not None and c >= nc:
        raise DataError(f"{where}: class id {int(c)} >= nc {nc}")
    lo, hi = min(values[1:]), max(values[1:])
    if lo < 0:
        raise DataError(f"{where}: negative coordinate ({lo:g})")
    if hi > 1:
        raise DataError(f"{where}: coordinate > 1 ({hi:g}); labels must be normalised 0-1")


def parse_label_text(text: str, nc: int | None, source: str | Path = "<labels>"
                     ) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Parse YOLO label text into (labels (n,5) float32, segments, number of duplicates removed).

    Rows are `class x y w h`, or `class x1 y1 x2 y2 ...` polygons (more than 6 values) that
    are converted to their bounding boxes and kept as segments. Duplicate rows are removed.

    Raises:
        DataError: "<source>:<line>: <reason>" for the first bad row.
    """
    rows: list[list[float]] = []
    polys: dict[int, np.ndarray] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{source}:{lineno}"
        values = _parse_row(tokens, where)
        _check_row(values, nc, where)
        if len(values) > 5:
            pts = np.asarray(values[1:], dtype=np.float32).reshape(-1, 2)
            polys[len(rows)] = pts
            values = [values[0], *segments2boxes([pts])[0].tolist()]
        rows.append(values)
    if not rows:
        return np.zeros((0, 5), np.float32), [], 0
    labels = np.asarray(rows, dtype=np.float32)
    _, keep = np.unique(labels, axis=0, return_index=True)
    keep.sort()  # first occurrence of each row, file order kept
    labels = labels[keep]
    # Segments must align with label rows; box rows in a polygon file become rectangles.
    segments = [polys[i] if i in polys else _box_polygon(labels[j, 1:])
                for j, i in enumerate(keep)] if polys else []
    return labels, segments, len(rows) - len(keep)


def _box_polygon(xywh: np.ndarray) -> np.ndarray:
    x, y, w, h = xywh.tolist()
    x1, y1, x2, y2 = x - w / 2, y - h / 2, x + w / 2, y + h / 2
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)


def _exif_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    try:
        if im.getexif().get(0x0112) in _ROTATED_ORIENTATIONS:
            return h, w
    except Exception:  # broken EXIF blocks are common; the pixel size still stands
        pass
    return w, h


def _restore_jpeg(path: Path, rec: ImageRecord) -> None:
    """Re-encode a JPEG that lacks its FF D9 end marker (YOLOv5 re-saves it in place)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError("truncated JPEG cannot be decoded")
    if not (is_writable(path) and is_writable(path.parent)):
        rec.messages.append(f"WARNING: {path}: corrupt JPEG (no end marker); file is read-only, "
                            "using the part that decodes")
        return
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    fd, tmp = tempfile.mkstemp(prefix=".restore-", suffix=".jpg", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written image
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        rec.messages.append(f"WARNING: {path}: corrupt JPEG (no end marker); could not save the "
                            f"restored copy ({e}), using the part that decodes")
        return
    rec.messages.append(f"WARNING: {path}: corrupt JPEG restored and saved")


def verify_image(path: Path, rec: ImageRecord) -> None:
    """Check that `path` is a usable image; fills rec.shape. Raises DataError with the reason."""
    try:
        with Image.open(path) as im:
            im.verify()
            fmt = (im.format or "").lower()
            rec.shape = _exif_size(im)
    except FileNotFoundError:
        raise DataError("image file not found") from None
    except Exception as e:  # PIL raises many types for undecodable files; all mean corrupt
        raise DataError(f"unreadable image ({type(e).__name__}: {e})") from None
    if fmt not in IMG_FORMATS:
        raise DataError(f"invalid image format {fmt or 'unknown'}")
    w, h = rec.shape
    if w < MIN_SIDE or h < MIN_SIDE:
        raise DataError(f"image size {w}x{h} < {MIN_SIDE} pixels")
    if fmt == "jpeg":
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read() != b"\xff\xd9":
                _restore_jpeg(path, rec)


def read_labels(label_file: Path, nc: int | None, rec: ImageRecord) -> None:
    """Fill rec.labels/segments/status from `label_file` (missing/empty → background)."""
    try:
        raw = label_file.read_bytes()
    except FileNotFoundError:
        rec.status = "missing"
        return
    except OSError as e:
        raise DataError(f"{label_file}: cannot read label file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{label_file}: not UTF-8 text (byte {e.start})") from None
    rec.labels, rec.segments, rec.duplicates = parse_label_text(text, nc, label_file)
    if rec.duplicates:
        rec.messages.append(
            f"WARNING: {rec.image}: {rec.duplicates} duplicate labels removed ({label_file})")
    rec.status = "found" if len(rec.labels) else "empty"


def verify_image_label(image: Path, label_file: Path, nc: int | None) -> ImageRecord:
    """Verify one (image, label) pair; never raises: failures become status 'corrupt'."""
    rec = ImageRecord(image=image, labels=np.zeros((0, 5), np.float32))
    try:
        verify_image(image, rec)
        read_labels(label_file, nc, rec)
    except DataError as e:
        rec.status, rec.labels, rec.segments = "corrupt", np.zeros((0, 5), np.float32), []
        rec.messages.append(f"WARNING: {image}: ignoring corrupt image/label: {e}")
    return rec
