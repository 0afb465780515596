"""COCO conversion, atomic JSON writes, and our AP against pycocotools on a synthetic set."""

import json

import numpy as np
import pytest
import torch

from yolo_ray.train.coco_eval import (
    coco_map,
    predictions_to_coco,
    write_json,
    yolo_labels_to_coco,
)
from yolo_ray.train.metrics import IOU_THRESHOLDS, ap_per_class, match_predictions


def test_yolo_labels_to_coco():
    labels = [np.array([[2, 0.5, 0.5, 0.5, 0.25]]), np.zeros((0, 5))]
    gt = yolo_labels_to_coco(["a/img0.jpg", "b/img1.png"], labels, [(200, 100), (50, 60)], ["x", "y", "z"])
    assert [im["id"] for im in gt["images"]] == [0, 1]
    assert gt["images"][0] == {"id": 0, "file_name": "img0.jpg", "width": 200, "height": 100}
    (ann,) = gt["annotations"]
    assert ann["id"] == 1 and ann["category_id"] == 2 and ann["image_id"] == 0
    assert ann["bbox"] == pytest.approx([50.0, 37.5, 100.0, 25.0]) and ann["area"] == pytest.approx(2500.0)
    assert gt["categories"] == [{"id": 0, "name": "x"}, {"id": 1, "name": "y"}, {"id": 2, "name": "z"}]


def test_predictions_to_coco():
    recs = predictions_to_coco([(7, torch.tensor([[10.0, 20.0, 40.0, 60.0]]), torch.tensor([0.123456]), torch.tensor([1.0]))])
    assert recs == [{"image_id": 7, "category_id": 1, "score": 0.12346, "bbox": [10.0, 20.0, 30.0, 40.0]}]
    recs = predictions_to_coco([(0, np.zeros((1, 4)), [0.5], [1])], class_map=[1, 2, 3])
    assert recs[0]["category_id"] == 2
    assert predictions_to_coco([(0, np.zeros((0, 4)), [], [])]) == []


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "sub" / "p.json", {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1.5  # old content survives a failed write
    assert [p.name for p in path.parent.iterdir()] == ["p.json"]


def _synthetic_set(rng, n_images=30, nc=3, miss=0.15, tail=40):
    """Random boxes; predictions: exact, jittered, wrong-class, missed, and `tail` low-confidence
    false positives per image (as validation at conf_thres 0.001 produces)."""
    images, labels, shapes, preds = [], [], [], []
    for i in range(n_images):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        n = int(rng.integers(1, 7))
        xy = rng.uniform(0.2, 0.8, (n, 2))
        wh = rng.uniform(0.05, 0.3, (n, 2))
        lab = np.c_[rng.integers(0, nc, n), xy, wh]
        images.append(f"img{i}.jpg")
        labels.append(lab)
        shapes.append((w, h))
        xyxy = np.c_[(xy - wh / 2) * (w, h), (xy + wh / 2) * (w, h)]
        boxes, conf, cls = [], [], []
        for k in range(n):
            r = rng.random()
            if r < miss:
                continue
            jitter = 0.0 if r < 0.5 else rng.normal(0, 0.05) * (xyxy[k, 2] - xyxy[k, 0])
            boxes.append(xyxy[k] + jitter * rng.standard_normal(4))
            conf.append(rng.uniform(0.3, 1.0))
            cls.append(lab[k, 0] if rng.random() > 0.1 else (lab[k, 0] + 1) % nc)
        for _ in range(tail):
            x1, y1 = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
            boxes.append([x1, y1, x1 + rng.uniform(10, 40), y1 + rng.uniform(10, 40)])
            conf.append(rng.uniform(0.001, 0.3))
            cls.append(rng.integers(0, nc))
        preds.append((i, np.asarray(boxes).reshape(-1, 4), np.asarray(conf), np.asarray(cls, float)))
    return images, labels, shapes, preds


def _our_map(labels, shapes, preds):
    stats = []
    for lab, (w, h), (_, boxes, conf, cls) in zip(labels, shapes, preds):
        order = np.argsort(-conf, kind="stable")
        det = np.c_[boxes, conf, cls][order]
        gt = np.c_[lab[:, 0], (lab[:, 1:3] - lab[:, 3:5] / 2) * (w, h), (lab[:, 1:3] + lab[:, 3:5] / 2) * (w, h)]
        stats.append((match_predictions(det, gt, IOU_THRESHOLDS), det[:, 4], det[:, 5]))
    tp, conf, pcls = (np.concatenate(s) for s in zip(*stats))
    res = ap_per_class(tp, conf, pcls, np.concatenate([lab[:, 0] for lab in labels]))
    return res.map, res.map50


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_our_map_agrees_with_pycocotools(seed):
    rng = np.random.default_rng(seed)
    images, labels, shapes, preds = _synthetic_set(rng)
    gt = yolo_labels_to_coco(images, labels, shapes, ["a", "b", "c"])
    coco = coco_map(gt, predictions_to_coco(preds))
    ours = _our_map(labels, shapes, preds)
    assert 0.2 < coco[0] < 0.95  # a non-trivial mix
    assert ours == pytest.approx(coco, abs=0.02)


def test_missed_labels_without_low_confidence_tail_diverge_from_coco():
    # Documented YOLOv5 behaviour: the PR curve is extended linearly from the last point
    # (max recall, p) to the sentinel (1, 0); COCO counts 0 beyond max recall. With 15 % of
    # labels never detected and no low-confidence tail the ramp adds area, so ours > COCO.
    images, labels, shapes, preds = _synthetic_set(np.random.default_rng(0), tail=0)
    coco = coco_map(yolo_labels_to_coco(images, labels, shapes, ["a", "b", "c"]), predictions_to_coco(preds))
    ours = _our_map(labels, shapes, preds)
    assert ours[0] > coco[0] + 0.05 and ours[1] > coco[1] + 0.05


def test_perfect_predictions_pycocotools_and_ours():
    rng = np.random.default_rng(3)
    images, labels, shapes, _ = _synthetic_set(rng, n_images=10)
    preds = []
    for i, (lab, (w, h)) in enumerate(zip(labels, shapes)):
        xyxy = np.c_[(lab[:, 1:3] - lab[:, 3:5] / 2) * (w, h), (lab[:, 1:3] + lab[:, 3:5] / 2) * (w, h)]
        preds.append((i, xyxy, np.linspace(0.9, 0.5, len(lab)), lab[:, 0]))
    gt = yolo_labels_to_coco(images, labels, shapes, ["a", "b", "c"])
    assert coco_map(gt, predictions_to_coco(preds)) == pytest.approx((1.0, 1.0))
    assert _our_map(labels, shapes, preds) == pytest.approx((0.995, 0.995))  # YOLOv5's 101-point AP


def test_coco_map_edge_cases(tmp_path):
    gt = yolo_labels_to_coco(["a.jpg"], [np.array([[0, 0.5, 0.5, 0.2, 0.2]])], [(100, 100)], ["a"])
    assert coco_map(gt, []) == (0.0, 0.0)
    path = write_json(tmp_path / "gt.json", gt)
    assert coco_map(path, predictions_to_coco([(0, [[40, 40, 60, 60]], [0.9], [0])])) == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="image ids"):
        coco_map(gt, predictions_to_coco([(5, [[40, 40, 60, 60]], [0.9], [0])]))
