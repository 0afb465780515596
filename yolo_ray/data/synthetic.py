"""A small generated shapes dataset (YOLO layout + data.yaml) for tests and smoke runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError

# Each class has its own shape *and* a saturated colour, on desaturated backgrounds, so a
# tiny model separates them within a few epochs.
SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {   # BGR
    "square": (40, 40, 220), "circle": (40, 200, 40), "triangle": (220, 90, 30),
    "diamond": (30, 210, 230), "cross": (200, 40, 200),
}
PREFIX = "shape_"   # only files with this prefix are ever replaced or removed
OUTLINE = (15, 15, 15)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Grey-ish gradient + low-frequency blobs + pixel noise (texture without colour cues)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    g = np.cos(a) * xx / w + np.sin(a) * yy / h
    g = (g - g.min()) / (g.max() - g.min() + 1e-6)
    c1 = rng.uniform(50, 200) + rng.uniform(-12, 12, 3)
    c2 = rng.uniform(50, 200) + rng.uniform(-12, 12, 3)
    bg = c1 * (1 - g[..., None]) + c2 * g[..., None]
    blobs = cv2.resize(rng.normal(0, 18, (6, 6)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    bg += blobs[..., None] + rng.normal(0, 7, (h, w, 1)) + rng.normal(0, 3, (h, w, 3))
    return np.clip(bg, 0, 255).astype(np.uint8)


def _polygon(kind: str, x1: int, y1: int, x2: int, y2: int) -> list[np.ndarray]:
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if kind == "triangle":
        pts = [[(cx, y1), (x2, y2), (x1, y2)]]
    elif kind == "diamond":
        pts = [[(cx, y1), (x2, cy), (cx, y2), (x1, cy)]]
    elif kind == "cross":
        t = max(1, (x2 - x1) // 6)
        pts = [[(cx - t, y1), (cx + t, y1), (cx + t, y2), (cx - t, y2)],
               [(x1, cy - t), (x2, cy - t), (x2, cy + t), (x1, cy + t)]]
    else:  # square
        pts = [[(x1, y1), (x2, y1), (x2, y2), (x1, y2)]]
    return [np.array(p, dtype=np.int32) for p in pts]


def _draw(img: np.ndarray, kind: str, box: tuple[int, int, int, int],
          rng: np.random.Generator) -> None:
    jitter = rng.integers(-25, 26, 3)
    colour = tuple(int(c) for c in np.clip(np.array(SHAPE_COLOURS[kind]) + jitter, 0, 255))
    x1, y1, x2, y2 = box
    if kind == "circle":
        centre, r = ((x1 + x2) // 2, (y1 + y2) // 2), (x2 - x1) // 2
        cv2.circle(img, centre, r, colour, -1, cv2.LINE_8)
        cv2.circle(img, centre, r, OUTLINE, 1, cv2.LINE_8)
        return
    polys = _polygon(kind, x1, y1, x2, y2)
    for poly in polys:  # one call per polygon: fillPoly would leave their overlap empty
        cv2.fillPoly(img, [poly], colour, cv2.LINE_8)
    if kind != "cross":  # a cross outline would cut through its own centre
        cv2.polylines(img, polys, True, OUTLINE, 1, cv2.LINE_8)


def _overlap(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over the smaller area: a small shape must never hide under a big one."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1)


def _place(h: int, w: int, boxes: list, rng: np.random.Generator
           ) -> tuple[int, int, int, int] | None:
    """A square box of side 10–50% of the short side, inside the image, barely overlapping."""
    for _ in range(30):
        side = int(rng.uniform(0.10, 0.50) * min(h, w))
        x1, y1 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        box = (x1, y1, x1 + side, y1 + side)
        if all(_overlap(box, b) < 0.05 for b in boxes):
            return box
    return None


def _make_image(i: int, imgsz: int, classes: Sequence[str], rng: np.random.Generator
                ) -> tuple[np.ndarray, list[str]]:
    h, w = [(imgsz, imgsz), (round(imgsz * 0.75), imgsz), (imgsz, round(imgsz * 0.75))][i % 3]
    img = _background(h, w, rng)
    lines: list[str] = []
    if i % 10 == 9:  # every tenth image is a background (empty label file)
        return img, lines
    boxes: list = []
    for _ in range(int(rng.integers(1, 5))):
        box = _place(h, w, boxes, rng)
        if box is None:
            continue
        boxes.append(box)
        c = int(rng.integers(0, len(classes)))
        _draw(img, classes[c], box, rng)
        x1, y1, x2, y2 = box[0], box[1], box[2] + 1, box[3] + 1  # drawn pixels are inclusive
        lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return img, lines


def _write_split(root: Path, split: str, n: int, imgsz: int, seed: int,
                 classes: Sequence[str]) -> None:
    img_dir, lab_dir = root / "images" / split, root / "labels" / split
    for d in (img_dir, lab_dir):
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob(PREFIX + "*"):  # a previous, maybe larger, generation
            old.unlink()
    for i in range(n):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        img, lines = _make_image(i, imgsz, classes, rng)
        suffix = ".png" if i % 5 == 4 else ".jpg"  # both formats are exercised
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix == ".jpg" else []
        if not cv2.imwrite(str(img_dir / f"{PREFIX}{i:05d}{suffix}"), img, params):
            raise OSError(f"cannot write image into {img_dir}")
        (lab_dir / f"{PREFIX}{i:05d}.txt").write_text("".join(x + "\n" for x in lines))


def write_synthetic_dataset(out_dir: str | Path, n_train: int = 64, n_val: int = 16,
                            imgsz: int = 128, seed: int = 0,
                            classes: Sequence[str] = ("square", "circle", "triangle")) -> Path:
    """Write a YOLO-format shapes dataset and return its data yaml path.

    Layout: `images/{train,val}` (JPEG, every fifth PNG), `labels/{train,val}`, `data.yaml`
    (`path: .`, relative to the yaml). Each image is imgsz wide or tall (some 3:4), with 1–4
    non-overlapping shapes of 10–50% of the short side; every tenth image has no objects.
    The same arguments always give the same files.

    Raises:
        ConfigError: unknown class name, or sizes too small.
    """
    unknown = [c for c in classes if c not in SHAPE_COLOURS]
    if unknown or not classes:
        raise ConfigError(f"unknown synthetic class {unknown[0] if unknown else '(none)'}; "
                          f"choose from {', '.join(SHAPE_COLOURS)}")
    if imgsz < 32 or n_train < 1 or n_val < 1:
        raise ConfigError(f"synthetic dataset needs imgsz >= 32 and n_train, n_val >= 1 "
                          f"(got imgsz={imgsz}, n_train={n_train}, n_val={n_val})")
    root = Path(out_dir)
    for split, n in (("train", n_train), ("val", n_val)):
        _write_split(root, split, n, imgsz, seed, classes)
    names = "".join(f"  {i}: {c}\n" for i, c in enumerate(classes))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(
        f"# synthetic shapes written by yolo-ray (seed {seed}, imgsz {imgsz})\n"
        f"path: .  # relative to this file\ntrain: images/train\nval: images/val\n"
        f"nc: {len(classes)}\nnames:\n{names}", encoding="utf-8")
    return yaml_path
