"""Detection matching and per-class average precision, numerically as YOLOv5 computes them (numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's mAP@0.5:0.95 thresholds
_CONF_GRID = np.linspace(0, 1, 1000)  # where P, R and F1 are sampled
_RECALL_GRID = np.linspace(0, 1, 101)  # COCO's 101-point interpolation
F1_SMOOTH_FRACTION = 0.1


def box_iou_np(box1: np.ndarray, box2: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (n,4) × (m,4) -> (n,m)."""
    lo = np.maximum(box1[:, None, :2], box2[None, :, :2])
    hi = np.minimum(box1[:, None, 2:4], box2[None, :, 2:4])
    inter = np.clip(hi - lo, 0, None).prod(2)
    a1 = (box1[:, 2] - box1[:, 0]) * (box1[:, 3] - box1[:, 1])
    a2 = (box2[:, 2] - box2[:, 0]) * (box2[:, 3] - box2[:, 1])
    return inter / (a1[:, None] + a2[None, :] - inter + eps)


def match_predictions(
    detections: np.ndarray, labels: np.ndarray, iouv: np.ndarray = IOU_THRESHOLDS
) -> np.ndarray:
    """Mark each detection correct or not at each IoU threshold (YOLOv5's `process_batch`).

    Args:
        detections: (n, 6) x1, y1, x2, y2, conf, cls — sorted by confidence, as NMS returns.
        labels: (m, 5) cls, x1, y1, x2, y2, in the same pixel space as the detections.
        iouv: (t,) IoU thresholds.

    Returns:
        (n, t) bool. Per threshold, same-class pairs with IoU >= t are sorted by IoU
        (descending) and made unique per detection (its best label), then per label. Note, as
        in YOLOv5: after the per-detection step the pairs are in detection order, so a label
        claimed by several detections goes to the one listed first (the most confident).
    """
    detections, labels = np.asarray(detections, np.float64), np.asarray(labels, np.float64)
    iouv = np.asarray(iouv, np.float64)
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if not detections.shape[0] or not labels.shape[0]:
        return correct
    iou = box_iou_np(labels[:, 1:5], detections[:, :4])  # (m, n)
    same_class = labels[:, 0:1] == detections[None, :, 5]
    for k, thr in enumerate(iouv):
        li, di = np.nonzero((iou >= thr) & same_class)
        if not li.shape[0]:
            continue
        order = np.argsort(-iou[li, di], kind="stable")
        li, di = li[order], di[order]
        _, first = np.unique(di, return_index=True)  # best pair per detection, detection order
        li, di = li[first], di[first]
        _, first = np.unique(li, return_index=True)  # then one detection per label
        correct[di[first], k] = True
    return correct


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one PR curve: sentinels (0, 1) and (1, 0), precision envelope, 101-point trapezoid.

    Returns:
        (ap, mpre, mrec): the area and the enveloped precision / recall with sentinels.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, np.float64), [1.0]))
    mpre = np.concatenate(([1.0], np.asarray(precision, np.float64), [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # monotone non-increasing envelope
    ap = np.trapezoid(np.interp(_RECALL_GRID, mrec, mpre), _RECALL_GRID)
    return float(ap), mpre, mrec


def smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Box filter over 2·round(f·len) + 1 points (odd), edges padded with the end values."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclass(frozen=True)
class APResult:
    """Per-class P, R, AP (nc, 10) and F1 at the best mean-F1 confidence, plus the means."""

    p: np.ndarray
    r: np.ndarray
    ap: np.ndarray
    f1: np.ndarray
    unique_classes: np.ndarray
    nt: np.ndarray  # number of labels per class in unique_classes
    mp: float
    mr: float
    map50: float
    map: float

    @property
    def ap50(self) -> np.ndarray:
        """Per-class AP@0.5."""
        return self.ap[:, 0]

    @property
    def ap_mean(self) -> np.ndarray:
        """Per-class AP@0.5:0.95."""
        return self.ap.mean(1)

    def maps(self, nc: int) -> np.ndarray:
        """AP@0.5:0.95 for every class id < nc; absent classes get the overall mAP (YOLOv5)."""
        out = np.full(nc, self.map)
        out[self.unique_classes] = self.ap_mean
        return out


def _class_curves(tp: np.ndarray, conf: np.ndarray, n_labels: int, eps: float):
    """Recall and precision for one class's confidence-sorted detections, and their grid samples."""
    tpc = tp.cumsum(0)
    fpc = (1 - tp).cumsum(0)
    recall = tpc / (n_labels + eps)
    precision = tpc / (tpc + fpc)
    # np.interp needs increasing x: confidence is descending, so negate both axes.
    r_grid = np.interp(-_CONF_GRID, -conf, recall[:, 0], left=0)
    p_grid = np.interp(-_CONF_GRID, -conf, precision[:, 0], left=1)
    return recall, precision, r_grid, p_grid


def ap_per_class(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, eps: float = 1e-16
) -> APResult:
    """Per-class AP over all images (YOLOv5's `ap_per_class`).

    Args:
        tp: (n, t) bool, `match_predictions` of every detection; conf, pred_cls: (n,).
        target_cls: (m,) class of every label. Only classes in it are scored; a class with
            labels but no detections gets AP 0, P 0, R 0.
    """
    tp, conf = np.asarray(tp, np.float64), np.asarray(conf, np.float64)
    tp = tp[:, None] if tp.ndim == 1 else tp
    pred_cls, target_cls = np.asarray(pred_cls), np.asarray(target_cls)
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc, niou = unique_classes.shape[0], tp.shape[1]
    ap, p, r = np.zeros((nc, niou)), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        mine = pred_cls == c
        if not mine.any():
            continue
        recall, precision, r[ci], p[ci] = _class_curves(tp[mine], conf[mine], nt[ci], eps)
        for j in range(niou):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])[0]
    f1 = 2 * p * r / (p + r + eps)
    best = int(smooth(f1.mean(0), F1_SMOOTH_FRACTION).argmax()) if nc else 0
    p, r, f1 = p[:, best], r[:, best], f1[:, best]
    if not nc:
        return APResult(p, r, ap, f1, unique_classes.astype(int), nt, 0.0, 0.0, 0.0, 0.0)
    return APResult(
        p, r, ap, f1, unique_classes.astype(int), nt,
        float(p.mean()), float(r.mean()), float(ap[:, 0].mean()), float(ap.mean()),
    )
