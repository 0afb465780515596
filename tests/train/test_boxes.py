"""Box conversions, IoU and CIoU against hand calculations, rescaling to the original image."""

import math

import pytest
import torch

from yolo_ray.train.boxes import (
    bbox_iou,
    box_iou,
    clip_boxes,
    scale_boxes,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2xywh,
)


def test_conversions_round_trip():
    xywh = torch.tensor([[5.0, 6.0, 4.0, 2.0], [0.5, 0.5, 1.0, 1.0]])
    xyxy = xywh2xyxy(xywh)
    assert torch.equal(xyxy, torch.tensor([[3.0, 5.0, 7.0, 7.0], [0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(xyxy2xywh(xyxy), xywh)
    n = torch.tensor([[0.5, 0.5, 0.5, 0.25]])
    assert torch.allclose(xywhn2xyxy(n, w=100, h=200, padw=10, padh=20), torch.tensor([[35.0, 95.0, 85.0, 145.0]]))


def test_box_iou_pairwise():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0, 0.0]]), atol=1e-6)


def test_ciou_hand_calculation():
    b1 = torch.tensor([0.0, 0.0, 2.0, 2.0], dtype=torch.float64)
    b2 = torch.tensor([1.0, 1.0, 4.0, 3.0], dtype=torch.float64)  # w 3, h 2
    iou = 1 / 9  # intersection 1, union 4 + 6 - 1
    rho2 = 1.5**2 + 1.0**2  # centres (1, 1) and (2.5, 2)
    c2 = 4**2 + 3**2  # enclosing box (0, 0)-(4, 3)
    v = 4 / math.pi**2 * (math.atan(3 / 2) - math.atan(1)) ** 2
    alpha = v / (v - iou + 1)
    expected = iou - rho2 / c2 - alpha * v
    got = bbox_iou(b1, b2, xywh=False, CIoU=True)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert bbox_iou(b1, b2, xywh=False).item() == pytest.approx(iou, abs=1e-6)
    # Same pair in xywh form, broadcast over a batch.
    x1, x2 = xyxy2xywh(b1)[None].repeat(4, 1), xyxy2xywh(b2)[None].repeat(4, 1)
    assert torch.allclose(bbox_iou(x1, x2, CIoU=True), torch.full((4,), expected, dtype=torch.float64), atol=1e-6)


def test_ciou_identical_is_one_and_has_gradient():
    p = torch.tensor([[2.0, 2.0, 1.0, 3.0]], requires_grad=True)
    ciou = bbox_iou(p, p.detach(), CIoU=True)
    assert ciou.item() == pytest.approx(1.0, abs=1e-5)
    q = torch.tensor([[2.5, 2.0, 2.0, 1.0]], requires_grad=True)
    (1 - bbox_iou(q, p.detach(), CIoU=True)).sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_clip_and_scale_boxes():
    boxes = torch.tensor([[-5.0, 10.0, 700.0, 500.0]])
    assert torch.equal(clip_boxes(boxes, (480, 640)), torch.tensor([[0.0, 10.0, 640.0, 480.0]]))
    assert boxes[0, 0] == -5.0  # input untouched
    # 960x1280 (h, w) letterboxed into 640x640: gain 0.5, 80 px padding top and bottom.
    lb = torch.tensor([[100.0, 180.0, 200.0, 280.0]])
    expected = torch.tensor([[200.0, 200.0, 400.0, 400.0]])
    assert torch.allclose(scale_boxes((640, 640), lb, (960, 1280)), expected)
    assert torch.allclose(scale_boxes((640, 640), lb, (960, 1280), ratio_pad=((0.5, 0.5), (0.0, 80.0))), expected)
