"""Non-maximum suppression over YOLOv5 outputs, batched by class offset, with no time limit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor

from .boxes import xywh2xyxy

logger = logging.getLogger(__name__)


@dataclass
class NMSStats:
    """Running count of candidates cut by `max_nms` (a mutable accumulator the caller owns)."""

    images_truncated: int = 0
    boxes_dropped: int = 0

    def add(self, dropped: int) -> None:
        """Record one image that had `dropped` candidates above max_nms."""
        self.images_truncated += 1
        self.boxes_dropped += dropped


def _check_args(conf_thres: float, iou_thres: float, max_det: int, max_nms: int) -> None:
    if not 0.0 <= conf_thres <= 1.0:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0.0 <= iou_thres <= 1.0:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if max_det < 1 or max_nms < 1:
        raise ValueError(f"max_det and max_nms must be >= 1, got {max_det}, {max_nms}")


def _candidates(x: Tensor, conf_thres: float, multi_label: bool) -> Tensor:
    """(N, 5 + nc) rows of one image -> (k, 6) xyxy, score, class with score > conf_thres."""
    x = x[x[:, 4] > conf_thres]
    scores = x[:, 5:] * x[:, 4:5]  # class confidence = P(class | object) · P(object)
    box = xywh2xyxy(x[:, :4])
    if multi_label:  # one row per (box, class) above threshold
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        return torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
    conf, j = scores.max(1, keepdim=True)
    return torch.cat((box, conf, j.to(x.dtype)), 1)[conf[:, 0] > conf_thres]


def non_max_suppression(
    prediction: Tensor | Sequence[Tensor],
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = True,
    max_det: int = 300,
    max_wh: int = 7680,
    max_nms: int = 30000,
    stats: NMSStats | None = None,
) -> list[Tensor]:
    """Per-image NMS of (bs, N, 5 + nc) predictions (xywh pixels, sigmoided obj and cls).

    Classes are separated by shifting boxes by class·max_wh so one torchvision NMS call does
    per-class suppression (unless `agnostic`). Unlike YOLOv5 there is no time limit, so dense
    images never lose detections silently. When an image has more than `max_nms` candidates the
    `max_nms` most confident are kept (as YOLOv5) and the cut is reported: counted in `stats`
    when given, otherwise logged as a warning.

    Returns:
        list of bs tensors (n, 6): x1, y1, x2, y2, confidence, class; n <= max_det, sorted by
        confidence (descending).
    """
    pred = prediction[0] if isinstance(prediction, (list, tuple)) else prediction  # (pred, raw)
    if not isinstance(pred, Tensor):
        raise TypeError(f"prediction must be a tensor (bs, N, 5 + nc), got {type(pred).__name__}")
    _check_args(conf_thres, iou_thres, max_det, max_nms)
    multi_label = multi_label and pred.shape[2] > 6  # only meaningful for nc > 1
    wanted = None if classes is None else torch.tensor(list(classes), device=pred.device)
    output: list[Tensor] = []
    dropped: list[int] = []
    for x in pred:
        det = _candidates(x, conf_thres, multi_label)
        if wanted is not None:
            det = det[(det[:, 5:6] == wanted.to(det.dtype)).any(1)]
        if det.shape[0] > max_nms:
            dropped.append(det.shape[0] - max_nms)
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        output.append(_nms_one(det, iou_thres, agnostic, max_det, max_wh))
    _report(dropped, max_nms, stats)
    return output


def _nms_one(det: Tensor, iou_thres: float, agnostic: bool, max_det: int, max_wh: int) -> Tensor:
    if not det.shape[0]:
        return det
    offset = det[:, 5:6] * (0 if agnostic else max_wh)
    keep = torchvision.ops.nms(det[:, :4] + offset, det[:, 4], iou_thres)[:max_det]
    return det[keep]


def _report(dropped: list[int], max_nms: int, stats: NMSStats | None) -> None:
    if not dropped:
        return
    if stats is not None:
        for d in dropped:
            stats.add(d)
        return
    logger.warning(
        "NMS: %d image(s) had more than max_nms=%d candidates; %d lowest-confidence candidates "
        "were not considered", len(dropped), max_nms, sum(dropped))
