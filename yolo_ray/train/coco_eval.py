"""COCO-format ground truth and predictions from YOLO data, scored with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import write_atomic


def _as_array(x: Any, cols: int | None = None) -> np.ndarray:
    """Tensor (any device) or array-like -> float64 numpy array, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    return a.reshape(-1, cols) if cols else a.reshape(-1)


def yolo_labels_to_coco(
    images: Sequence[str | Path],
    labels: Sequence[Any],
    shapes: Sequence[tuple[int, int]],
    names: Sequence[str] | Mapping[int, str],
) -> dict:
    """COCO ground-truth dict from YOLO labels.

    Args:
        images: image paths; image i gets COCO image id i (use the same ids for predictions).
        labels: per image, (n, 5) class, x, y, w, h normalised to 0–1.
        shapes: per image, original (width, height) in pixels.
        names: class names; COCO category id = class index.
    """
    if not len(images) == len(labels) == len(shapes):
        raise ValueError(f"images, labels, shapes differ in length: {len(images)}, {len(labels)}, {len(shapes)}")
    name_of = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    coco_images: list[dict] = []
    annotations: list[dict] = []
    for img_id, (path, lab, (w, h)) in enumerate(zip(images, labels, shapes)):
        coco_images.append({"id": img_id, "file_name": Path(path).name, "width": int(w), "height": int(h)})
        for cls, x, y, bw, bh in _as_array(lab, 5):
            pw, ph = bw * w, bh * h
            annotations.append({
                "id": len(annotations) + 1,  # COCOeval treats annotation id 0 as "unmatched"
                "image_id": img_id, "category_id": int(cls), "iscrowd": 0, "area": pw * ph,
                "bbox": [(x - bw / 2) * w, (y - bh / 2) * h, pw, ph],
            })
    categories = [{"id": int(k), "name": str(v)} for k, v in sorted(name_of.items())]
    return {"info": {"description": "yolo-ray ground truth"}, "images": coco_images,
            "annotations": annotations, "categories": categories}


def predictions_to_coco(
    predictions: Iterable[tuple[int, Any, Any, Any]], class_map: Sequence[int] | None = None
) -> list[dict]:
    """COCO result records from (image_id, boxes (n,4) xyxy original pixels, conf (n,), cls (n,)).

    `class_map[c]` maps class index c to a category id (e.g. COCO's 91-id list); default identity.
    """
    out = []
    for image_id, boxes, conf, cls in predictions:
        b, s, c = _as_array(boxes, 4), _as_array(conf), _as_array(cls)
        for (x1, y1, x2, y2), score, k in zip(b, s, c):
            cat = int(class_map[int(k)]) if class_map is not None else int(k)
            out.append({
                "image_id": image_id, "category_id": cat, "score": round(float(score), 5),
                "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)],
            })
    return out


def coco_map(
    gt: Mapping | str | Path, predictions: Sequence[Mapping], img_ids: Sequence[int] | None = None
) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) from pycocotools' COCOeval (bbox), its stats[0] and stats[1].

    `gt` is a COCO dict or an annotation JSON path. No predictions, or no ground truth
    (COCOeval's -1), score 0.0. pycocotools' console output is captured and discarded.

    Raises:
        ValueError: a prediction names an image id that the ground truth does not have.
    """
    from pycocotools.coco import COCO  # local: only this function needs pycocotools
    from pycocotools.cocoeval import COCOeval

    if not predictions:
        return 0.0, 0.0
    dataset = json.loads(Path(gt).read_text()) if isinstance(gt, (str, Path)) else dict(gt)
    unknown = {p["image_id"] for p in predictions} - {im["id"] for im in dataset["images"]}
    if unknown:
        raise ValueError(f"predictions name image ids not in the ground truth: {sorted(unknown)[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(p) for p in predictions])  # loadRes mutates its records
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as JSON atomically: temporary file in the same folder, fsync, rename."""
    data = json.dumps(obj, default=_json_default).encode()
    return write_atomic(path, lambda f: f.write(data))
