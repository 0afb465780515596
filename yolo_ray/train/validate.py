"""Validation loop: NMS, IoU matching at 0.50:0.95, AP per class, speed, YOLOv5's table."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .boxes import scale_boxes, xywh2xyxy
from .metrics import ap_per_class, match_predictions
from .nms import non_max_suppression
from .results import Metrics

IOU_VECTOR = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class ClassRow:
    """One per-class line of the validation table."""

    cls: int
    images: int
    instances: int
    precision: float
    recall: float
    map50: float
    map: float


@dataclass
class ValResult:
    """What a validation pass produced."""

    metrics: Metrics
    seen: int
    instances: int
    classes: list[ClassRow]
    maps: np.ndarray                     # (nc,) mAP50-95 per class, overall mAP where absent
    speed_ms: tuple[float, float, float]  # pre-process, inference, NMS per image
    shape: tuple[int, ...] = ()
    predictions: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (image idx, (n,6))


def _stats_for_image(det: torch.Tensor, labels: torch.Tensor, shape_info, img_hw) -> tuple:
    """(correct (n,10), conf, pred_cls, target_cls) with boxes in original image space."""
    (h0, w0), ratio_pad = shape_info
    h, w = img_hw
    predn = det.clone()
    predn[:, :4] = scale_boxes((h, w), predn[:, :4], (h0, w0), ratio_pad)
    tcls = labels[:, 0]
    if len(labels):
        tbox = xywh2xyxy(labels[:, 1:5]) * torch.tensor((w, h, w, h), dtype=labels.dtype)
        tbox = scale_boxes((h, w), tbox, (h0, w0), ratio_pad)
        labelsn = torch.cat((tcls[:, None], tbox), 1)
    if len(det) == 0:
        correct = np.zeros((0, len(IOU_VECTOR)), bool)
    elif len(labels) == 0:
        correct = np.zeros((len(det), len(IOU_VECTOR)), bool)
    else:
        correct = match_predictions(predn.numpy(), labelsn.numpy(), IOU_VECTOR)
    return correct, det[:, 4].numpy(), det[:, 5].numpy(), tcls.numpy(), predn.numpy()


def _prepare(imgs: torch.Tensor, device: torch.device, half: bool) -> torch.Tensor:
    imgs = imgs.to(device, non_blocking=True)
    return (imgs.half() if half else imgs.float()) / 255.0


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Sequence,
    device: torch.device | str = "cpu",
    compute_loss: Callable | None = None,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    nc: int | None = None,
    half: bool = False,
    keep_predictions: bool = False,
    single_cls: bool = False,
) -> ValResult:
    """Run `model` (eval mode) over `loader` and compute YOLOv5's validation metrics."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    nc = nc if nc is not None else int(model.nc)
    stats: list[tuple] = []
    loss = torch.zeros(3)
    seen, times = 0, [0.0, 0.0, 0.0]
    kept: list[tuple[int, np.ndarray]] = []
    shape: tuple[int, ...] = ()
    for bi, (imgs, targets, _paths, shapes) in enumerate(loader):
        t0 = time.perf_counter()
        x = _prepare(imgs, device, half)
        shape = tuple(x.shape)
        t1 = time.perf_counter()
        pred, raw = model(x)
        if compute_loss is not None:
            loss += compute_loss([r.float() for r in raw], targets.to(device))[1].cpu()
        t2 = time.perf_counter()
        dets = non_max_suppression(pred.float(), conf_thres, iou_thres, multi_label=True,
                                   agnostic=single_cls, max_det=max_det)
        t3 = time.perf_counter()
        times = [times[0] + t1 - t0, times[1] + t2 - t1, times[2] + t3 - t2]
        for si, det in enumerate(dets):
            labels = targets[targets[:, 0] == si, 1:].cpu()
            st = _stats_for_image(det.cpu(), labels, shapes[si], x.shape[2:])
            stats.append(st[:4])
            if keep_predictions:
                kept.append((seen, st[4]))
            seen += 1
    model.train(was_training)
    n_batches = max(len(loader), 1)
    return _summarise(stats, nc, loss / n_batches, seen, times, shape, kept)


def _summarise(stats, nc, loss, seen, times, shape, kept) -> ValResult:
    correct, conf, pcls, tcls = (np.concatenate([s[i] for s in stats], 0) if stats else
                                 np.zeros((0, 10) if i == 0 else 0) for i in range(4))
    tcls = tcls.astype(int)
    instances = np.bincount(tcls, minlength=nc) if len(tcls) else np.zeros(nc, int)
    images = np.zeros(nc, int)
    for s in stats:
        for c in np.unique(s[3].astype(int)):
            images[c] += 1
    mp = mr = map50 = map_ = 0.0
    rows: list[ClassRow] = []
    maps = np.zeros(nc)
    if len(correct) and correct.any():
        res = ap_per_class(correct, conf, pcls, tcls)
        mp, mr, map50, map_ = float(res.mp), float(res.mr), float(res.map50), float(res.map)
        maps += map_
        for k, c in enumerate(res.unique_classes.astype(int)):
            ap50, ap = float(res.ap[k, 0]), float(res.ap[k].mean())
            maps[c] = ap
            rows.append(ClassRow(c, int(images[c]), int(instances[c]), float(res.p[k]),
                                 float(res.r[k]), ap50, ap))
    else:
        rows = [ClassRow(int(c), int(images[c]), int(instances[c]), 0.0, 0.0, 0.0, 0.0)
                for c in np.unique(tcls)]
    metrics = Metrics(mp, mr, map50, map_, *(float(v) for v in loss.tolist()))
    per_img = [1e3 * t / max(seen, 1) for t in times]
    return ValResult(metrics, seen, int(len(tcls)), rows, maps, tuple(per_img), shape, kept)


def format_val_table(result: ValResult, names: Sequence[str], verbose: bool = False) -> str:
    """YOLOv5's table: header, an `all` row, and per-class rows when verbose."""
    head = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    row = "%22s" + "%11i" * 2 + "%11.3g" * 4
    m = result.metrics
    lines = [head, row % ("all", result.seen, result.instances, m.precision, m.recall,
                          m.map50, m.map)]
    if verbose:
        for c in result.classes:
            name = names[c.cls] if c.cls < len(names) else str(c.cls)
            lines.append(row % (name, c.images, c.instances, c.precision, c.recall, c.map50, c.map))
    return "\n".join(lines)


def format_speed(result: ValResult) -> str:
    """YOLOv5's speed line."""
    pre, inf, nms = result.speed_ms
    return (f"Speed: {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per image "
            f"at shape {result.shape}")
