"""NMS: class-offset batching, thresholds, max_det, dense images without a time limit, max_nms."""

import logging

import pytest
import torch

from yolo_ray.train.nms import NMSStats, non_max_suppression


def _pred(rows, nc):
    """rows of (x, y, w, h, obj, cls, cls_score) -> (1, n, 5 + nc)."""
    out = torch.zeros(1, len(rows), 5 + nc)
    for k, (x, y, w, h, obj, c, s) in enumerate(rows):
        out[0, k, :5] = torch.tensor([x, y, w, h, obj])
        out[0, k, 5 + c] = s
    return out


def test_same_class_suppressed_other_class_kept():
    rows = [(50, 50, 20, 20, 0.9, 0, 1.0), (51, 50, 20, 20, 0.8, 0, 1.0), (50, 51, 20, 20, 0.7, 1, 1.0)]
    (det,) = non_max_suppression(_pred(rows, 2), conf_thres=0.25, iou_thres=0.45)
    assert det.shape == (2, 6)
    assert det[:, 5].tolist() == [0.0, 1.0]
    assert det[:, 4].tolist() == pytest.approx([0.9, 0.7])
    assert torch.allclose(det[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    (agn,) = non_max_suppression(_pred(rows, 2), conf_thres=0.25, iou_thres=0.45, agnostic=True)
    assert agn.shape == (1, 6)
    (only1,) = non_max_suppression((_pred(rows, 2), None), conf_thres=0.25, classes=[1])
    assert only1[:, 5].tolist() == [1.0]


def test_confidence_is_obj_times_cls_and_multi_label():
    rows = [(50, 50, 20, 20, 0.5, 0, 0.8)]
    pred = _pred(rows, 3)
    pred[0, 0, 6] = 0.6  # class 1 also likely
    (det,) = non_max_suppression(pred, conf_thres=0.25, multi_label=True)
    assert sorted(det[:, 5].tolist()) == [0.0, 1.0]
    assert sorted(det[:, 4].tolist()) == pytest.approx([0.3, 0.4])
    (det,) = non_max_suppression(pred, conf_thres=0.25, multi_label=False)
    assert det[:, 5].tolist() == [0.0] and det[0, 4].item() == pytest.approx(0.4)
    (det,) = non_max_suppression(pred, conf_thres=0.35, multi_label=True)
    assert det[:, 5].tolist() == [0.0]


def _dense(n_side, nc=1, seed=0):
    """n_side² disjoint 8-px boxes on a grid, random confidences."""
    g = torch.Generator().manual_seed(seed)
    ij = torch.stack(torch.meshgrid(torch.arange(n_side), torch.arange(n_side), indexing="ij"), -1).reshape(-1, 2)
    n = ij.shape[0]
    pred = torch.zeros(1, n, 5 + nc)
    pred[0, :, :2] = ij.float() * 10 + 5
    pred[0, :, 2:4] = 8
    pred[0, :, 4] = torch.rand(n, generator=g) * 0.9 + 0.1
    pred[0, :, 5] = 1.0
    return pred


def test_dense_image_keeps_everything_without_time_limit():
    pred = _dense(80)  # 6400 non-overlapping boxes
    (det,) = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_det=10000)
    assert det.shape[0] == 6400
    (det,) = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_det=300)
    assert det.shape[0] == 300
    assert torch.allclose(det[:, 4], pred[0, :, 4].sort(descending=True).values[:300])


def test_batch_of_dense_images():
    pred = torch.cat([_dense(60, seed=s) for s in range(4)])
    out = non_max_suppression(pred, max_det=5000)
    assert [d.shape[0] for d in out] == [3600] * 4


def test_max_nms_cut_is_counted_or_logged(caplog):
    pred = _dense(50)  # 2500 candidates
    stats = NMSStats()
    (det,) = non_max_suppression(pred, max_nms=1000, max_det=5000, stats=stats)
    assert det.shape[0] == 1000
    assert (stats.images_truncated, stats.boxes_dropped) == (1, 1500)
    assert det[:, 4].min() >= pred[0, :, 4].sort(descending=True).values[999]
    with caplog.at_level(logging.WARNING, logger="yolo_ray.train.nms"):
        non_max_suppression(pred, max_nms=1000, max_det=5000)
    assert "max_nms=1000" in caplog.text and "1500" in caplog.text


def test_empty_and_bad_args():
    out = non_max_suppression(torch.zeros(2, 10, 8))
    assert [d.shape for d in out] == [(0, 6), (0, 6)]
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros(1, 1, 6), conf_thres=1.5)
