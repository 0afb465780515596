"""Box format conversions, IoU variants (incl. CIoU) and rescaling between image sizes (torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def xywh2xyxy(x: Tensor) -> Tensor:
    """(..., 4) centre-x, centre-y, width, height -> x1, y1, x2, y2 (new tensor)."""
    xy, half = x[..., :2], x[..., 2:4] / 2
    return torch.cat((xy - half, xy + half), dim=-1)


def xyxy2xywh(x: Tensor) -> Tensor:
    """(..., 4) x1, y1, x2, y2 -> centre-x, centre-y, width, height (new tensor)."""
    lo, hi = x[..., :2], x[..., 2:4]
    return torch.cat(((lo + hi) / 2, hi - lo), dim=-1)


def xywhn2xyxy(x: Tensor, w: float = 640, h: float = 640, padw: float = 0, padh: float = 0) -> Tensor:
    """Normalised xywh -> pixel xyxy in a w×h image, shifted by (padw, padh)."""
    scale = x.new_tensor([w, h, w, h])
    shift = x.new_tensor([padw, padh, padw, padh])
    return xywh2xyxy(x[..., :4]) * scale + shift


def box_area(box: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area."""
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])


def box_iou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise IoU of xyxy boxes: (n,4) × (m,4) -> (n,m)."""
    lo = torch.maximum(box1[:, None, :2], box2[None, :, :2])
    hi = torch.minimum(box1[:, None, 2:4], box2[None, :, 2:4])
    inter = (hi - lo).clamp(min=0).prod(dim=2)
    return inter / (box_area(box1)[:, None] + box_area(box2)[None, :] - inter + eps)


def bbox_iou(
    box1: Tensor, box2: Tensor, xywh: bool = True, CIoU: bool = False, eps: float = 1e-7
) -> Tensor:
    """Elementwise (broadcast) IoU or Complete-IoU of (..., 4) boxes; returns shape (...).

    CIoU (Zheng et al., 2020) = IoU − ρ²/c² − α·v with ρ the centre distance, c the diagonal of
    the smallest enclosing box, v = (4/π²)(atan(w2/h2) − atan(w1/h1))² and
    α = v / (v − IoU + 1 + eps); α is computed without gradient, as in YOLOv5.
    """
    if xywh:
        box1, box2 = xywh2xyxy(box1), xywh2xyxy(box2)
    b1x1, b1y1, b1x2, b1y2 = box1.unbind(-1)
    b2x1, b2y1, b2x2, b2y2 = box2.unbind(-1)
    # eps on the heights keeps atan(w/h) finite for degenerate boxes.
    w1, h1 = b1x2 - b1x1, (b1y2 - b1y1).clamp(min=eps)
    w2, h2 = b2x2 - b2x1, (b2y2 - b2y1).clamp(min=eps)
    inter = (torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(min=0) * (
        torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)
    ).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not CIoU:
        return iou
    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2x1 + b2x2 - b1x1 - b1x2) ** 2 + (b2y1 + b2y2 - b1y1 - b1y2) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def clip_boxes(boxes: Tensor, shape: Sequence[int]) -> Tensor:
    """Clip xyxy boxes to an image of shape (height, width); returns a new tensor."""
    h, w = float(shape[0]), float(shape[1])
    x = boxes[..., [0, 2]].clamp(0, w)
    y = boxes[..., [1, 3]].clamp(0, h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def scale_boxes(
    img1_shape: Sequence[int],
    boxes: Tensor,
    img0_shape: Sequence[int],
    ratio_pad: Sequence | None = None,
) -> Tensor:
    """Map xyxy boxes from a letterboxed image (h1, w1) back to the original image (h0, w0).

    `ratio_pad` = ((gain_y, gain_x), (pad_w, pad_h)) as recorded by the letterbox; without it the
    gain and centred padding are recomputed from the two shapes. Returns a new, clipped tensor.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad_w = (img1_shape[1] - img0_shape[1] * gain) / 2
        pad_h = (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = float(ratio_pad[0][0])
        pad_w, pad_h = float(ratio_pad[1][0]), float(ratio_pad[1][1])
    out = (boxes[..., :4] - boxes.new_tensor([pad_w, pad_h, pad_w, pad_h])) / gain
    return clip_boxes(out, img0_shape)
