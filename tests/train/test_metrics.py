"""Detection matching, 101-point AP and per-class AP, against hand-computed values."""

import numpy as np
import pytest

from yolo_ray.train.metrics import (
    IOU_THRESHOLDS,
    ap_per_class,
    compute_ap,
    match_predictions,
    smooth,
)

# YOLOv5's AP of a perfect PR curve is 0.995, not 1.0: the sentinel point (r=1, p=0) is the
# value at the last grid point r=1.0, so the last trapezoid (width 0.01) counts half.
PERFECT_AP = 0.995


def test_compute_ap_known_curves():
    assert compute_ap(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(PERFECT_AP)
    # r = (0.5, 1.0), p = (1.0, 0.5): envelope 1 up to r=0.5, then linear to 0.5 at r=1, and 0
    # at the sentinel; trapezoid over the 101-point grid: 0.5 + 0.49495 - 0.125 + 0.00255.
    ap, mpre, mrec = compute_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]))
    assert ap == pytest.approx(0.8725, abs=1e-9)
    assert mrec.tolist() == [0.0, 0.5, 1.0, 1.0] and mpre.tolist() == [1.0, 1.0, 0.5, 0.0]
    # The envelope lifts a dip: p = (1, 0.5, 1) over r = (1/3, 2/3, 1) counts as all ones.
    ap_dip = compute_ap(np.array([1 / 3, 2 / 3, 1.0]), np.array([1.0, 0.5, 1.0]))[0]
    assert ap_dip == pytest.approx(PERFECT_AP)
    # Half the labels found at full precision: 1 up to r=0.5, then linear to the (1, 0) sentinel.
    assert compute_ap(np.array([0.5]), np.array([1.0]))[0] == pytest.approx(0.75)


def test_match_predictions_thresholds_and_uniqueness():
    labels = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=float)
    dets = np.array([
        [0, 0, 10, 10, 0.9, 0],   # exact -> correct at every threshold
        [0, 0, 10, 8, 0.8, 0],    # IoU 0.8 with label 0, but label 0 is already taken
        [20, 20, 30, 27.5, 0.7, 1],  # IoU 0.75 with label 1
        [20, 20, 30, 30, 0.6, 0],  # right place, wrong class
    ])
    c = match_predictions(dets, labels, IOU_THRESHOLDS)
    assert c.shape == (4, 10) and c.dtype == bool
    assert c[0].all() and not c[1].any() and not c[3].any()
    assert c[2].tolist() == [t < 0.75 for t in IOU_THRESHOLDS]


def test_match_prefers_listed_first_then_iou():
    # YOLOv5's order: best label per detection by IoU, then per label the detection listed first.
    labels = np.array([[0, 0, 0, 10, 10]], dtype=float)
    dets = np.array([[0, 0, 10, 8.2, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])  # IoU 0.82, then 1.0
    c = match_predictions(dets, labels, IOU_THRESHOLDS)
    assert c[0].tolist() == [t < 0.82 for t in IOU_THRESHOLDS]
    assert c[1].tolist() == [t > 0.82 for t in IOU_THRESHOLDS]
    # A detection overlapping two labels takes the higher-IoU one.
    labels = np.array([[0, 0, 0, 10, 10], [0, 0, 0, 10, 9]], dtype=float)
    c = match_predictions(np.array([[0, 0, 10, 9.5, 0.9, 0]]), labels, np.array([0.5]))
    assert c.tolist() == [[True]]


def test_match_empty():
    assert match_predictions(np.zeros((0, 6)), np.zeros((3, 5)), IOU_THRESHOLDS).shape == (0, 10)
    assert not match_predictions(np.ones((2, 6)), np.zeros((0, 5)), IOU_THRESHOLDS).any()


def test_perfect_predictions():
    rng = np.random.default_rng(0)
    target_cls = rng.integers(0, 3, 50)
    tp = np.ones((50, 10), dtype=bool)
    res = ap_per_class(tp, rng.random(50), target_cls.copy(), target_cls)
    assert res.ap == pytest.approx(np.full((3, 10), PERFECT_AP))
    assert res.map50 == pytest.approx(PERFECT_AP) and res.map == pytest.approx(PERFECT_AP)
    assert res.mp == pytest.approx(1.0) and res.mr == pytest.approx(1.0, abs=1e-6)
    assert res.unique_classes.tolist() == [0, 1, 2] and res.nt.sum() == 50


def test_classes_without_predictions_and_unlabelled_predictions():
    tp = np.array([[True] * 10, [False] * 10, [True] * 10])
    conf = np.array([0.9, 0.8, 0.7])
    pred_cls = np.array([0, 0, 5])  # class 5 has no labels: ignored
    target_cls = np.array([0, 2, 2])  # class 2 has labels but no predictions: AP 0
    res = ap_per_class(tp, conf, pred_cls, target_cls)
    assert res.unique_classes.tolist() == [0, 2]
    assert res.ap[1].tolist() == [0.0] * 10
    assert res.ap[0] == pytest.approx(np.full(10, PERFECT_AP))
    assert res.map == pytest.approx(PERFECT_AP / 2)
    assert res.r[1] == 0.0 and res.p[1] == 0.0
    maps = res.maps(6)
    assert maps[0] == pytest.approx(PERFECT_AP) and maps[2] == 0.0 and maps[4] == pytest.approx(res.map)


def test_half_right_class_pr_values():
    # One class, 4 labels; detections by confidence: TP, FP, TP, FP.
    tp = np.array([[1], [0], [1], [0]], dtype=bool)
    res = ap_per_class(tp, np.array([0.9, 0.7, 0.5, 0.3]), np.zeros(4), np.zeros(4))
    # PR points (r, p): (.25, 1), (.25, .5), (.5, 2/3), (.5, .5); with the sentinels the
    # envelope is 1, 1, 2/3, 2/3, .5, 0 — the dip to .5 at r=.25 is lifted to 2/3.
    grid = np.linspace(0, 1, 101)
    mrec = [0, 0.25, 0.25, 0.5, 0.5, 1]
    envelope = np.trapezoid(np.interp(grid, mrec, [1, 1, 2 / 3, 2 / 3, 0.5, 0]), grid)
    raw = np.trapezoid(np.interp(grid, mrec, [1, 1, 0.5, 2 / 3, 0.5, 0]), grid)
    assert res.ap[0, 0] == pytest.approx(envelope)
    assert res.ap[0, 0] != pytest.approx(raw)
    assert 0.0 < res.mp <= 1.0 and res.mr <= 0.5 + 1e-9


def test_no_labels_gives_zeros():
    res = ap_per_class(np.zeros((3, 10), bool), np.ones(3), np.zeros(3), np.zeros(0))
    assert (res.mp, res.mr, res.map50, res.map) == (0.0, 0.0, 0.0, 0.0)
    assert res.ap.shape == (0, 10)


def test_smooth_box_filter():
    y = np.ones(1000)
    assert smooth(y, 0.1) == pytest.approx(y)
    step = np.r_[np.zeros(500), np.ones(500)]
    s = smooth(step, 0.1)  # 101-point window
    assert s.shape == (1000,)
    assert s[449] == 0.0 and s[450] == pytest.approx(1 / 101) and s[550] == 1.0
