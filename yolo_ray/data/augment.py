"""Pure image/label transforms (YOLOv5's augmentations); randomness comes in as `rng`.

Images are HWC uint8 BGR (cv2 order). Inside the pipeline labels are (n, 5) float arrays
`class, x1, y1, x2, y2` in pixels; the flips work on normalised `class, x, y, w, h`.
No function modifies its inputs; a transform whose hyperparameter is 0 returns them as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

PAD_VALUE = 114
PAD_COLOR = (PAD_VALUE, PAD_VALUE, PAD_VALUE)
Segments = list[np.ndarray]


# ---------------------------------------------------------------- box format conversions
def xywhn2xyxy(x: np.ndarray, w: float, h: float, padw: float = 0.0,
               padh: float = 0.0) -> np.ndarray:
    """Normalised centre-xywh (n, 4) → pixel corners (n, 4), shifted by the padding."""
    y = np.empty_like(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x: np.ndarray, w: float, h: float, eps: float = 1e-3) -> np.ndarray:
    """Pixel corners (n, 4) → normalised centre-xywh, clipped to the image (minus eps)."""
    x1, x2 = np.clip(x[:, 0], 0, w - eps), np.clip(x[:, 2], 0, w - eps)
    y1, y2 = np.clip(x[:, 1], 0, h - eps), np.clip(x[:, 3], 0, h - eps)
    return np.stack(((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h), 1)


def xyn2xy(seg: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """Normalised polygon points (k, 2) → pixels, shifted by the padding."""
    return seg * np.array([w, h], dtype=np.float32) + np.array([padw, padh], dtype=np.float32)


# ---------------------------------------------------------------- letterbox
def letterbox(img: np.ndarray, new_shape: int | Sequence[int] = 640, color=PAD_COLOR,
              auto: bool = False, scaleup: bool = True, stride: int = 32
              ) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to `new_shape` (h, w) with grey 114.

    Args:
        auto: pad only up to a multiple of `stride` (minimum rectangle).
        scaleup: allow enlarging (False for validation, so small images are not blurred).

    Returns:
        (image, (ratio_w, ratio_h), (pad_w, pad_h)) where pads are the left/top offsets.
    """
    h0, w0 = img.shape[:2]
    if isinstance(new_shape, (int, np.integer)):
        nh = nw = int(new_shape)
    else:
        nh, nw = int(new_shape[0]), int(new_shape[1])
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)
    uw, uh = int(round(w0 * r)), int(round(h0 * r))
    if auto:
        dw, dh = (nw - uw) % stride / 2, (nh - uh) % stride / 2
    else:
        dw, dh = (nw - uw) / 2, (nh - uh) / 2
    if (uw, uh) != (w0, h0):
        img = cv2.resize(img, (uw, uh), interpolation=cv2.INTER_LINEAR)
    # ±0.1 splits an odd padding one pixel more to the bottom/right, as YOLOv5 does.
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    if top or bottom or left or right:
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, (r, r), (dw, dh)


# ---------------------------------------------------------------- random perspective
def _affine_matrix(shape: tuple[int, int], out_hw: tuple[int, int], degrees: float,
                   translate: float, scale: float, shear: float, perspective: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """M = T·S·R·P·C (centre, perspective, rotation+scale, shear, translation) and the scale."""
    h, w = shape
    C = np.eye(3)
    C[0, 2], C[1, 2] = -w / 2, -h / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    a, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    R = np.eye(3)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=a, scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(rng.uniform(-shear, shear, 2) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, s


def resample_segments(segments: Sequence[np.ndarray], n: int = 1000) -> Segments:
    """Each closed polygon resampled to `n` points evenly spaced along its vertex index."""
    out = []
    for s in segments:
        s = np.concatenate((s, s[:1]), 0)
        t, tp = np.linspace(0, len(s) - 1, n), np.arange(len(s))
        out.append(np.stack([np.interp(t, tp, s[:, k]) for k in (0, 1)], 1).astype(np.float32))
    return out


def _warp_points(xy: np.ndarray, M: np.ndarray, perspective: bool) -> np.ndarray:
    p = np.c_[xy, np.ones(len(xy))] @ M.T
    return p[:, :2] / p[:, 2:3] if perspective else p[:, :2]


def _warp_boxes(boxes: np.ndarray, M: np.ndarray, perspective: bool, w: int, h: int) -> np.ndarray:
    n = len(boxes)
    corners = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # x1y1 x2y2 x1y2 x2y1
    xy = _warp_points(corners, M, perspective).reshape(n, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    out = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def _warp_segments(segments: Sequence[np.ndarray], M: np.ndarray, perspective: bool, w: int,
                   h: int) -> np.ndarray:
    out = np.zeros((len(segments), 4))
    for i, seg in enumerate(resample_segments(segments)):
        xy = _warp_points(seg, M, perspective)
        inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= w) & (xy[:, 1] <= h)
        if inside.any():  # the box of the visible part of the polygon
            v = xy[inside]
            out[i] = v[:, 0].min(), v[:, 1].min(), v[:, 0].max(), v[:, 1].max()
    return out


def box_candidates(box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Keep boxes (4, n) after augmentation: w, h > 2 px, area kept > area_thr, aspect < 100."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(img: np.ndarray, labels: np.ndarray,
                       segments: Sequence[np.ndarray] = (), *,
                       rng: np.random.Generator, degrees: float = 0.0, translate: float = 0.0,
                       scale: float = 0.0, shear: float = 0.0, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective of an image and its pixel-xyxy labels.

    `border` (y, x) grows (or, negative, crops) the output: the mosaic passes -s/2 to cut its
    2s canvas back to s. Boxes are warped by their corners (or their polygons when `segments`
    align with `labels`), clipped, then filtered by `box_candidates`.
    """
    out_h, out_w = img.shape[0] + border[0] * 2, img.shape[1] + border[1] * 2
    M, s = _affine_matrix(img.shape[:2], (out_h, out_w), degrees, translate, scale, shear,
                          perspective, rng)
    if border == (0, 0) and np.array_equal(M, np.eye(3)):
        return img, labels  # every hyp 0: untouched (no resampling, no box filtering)
    if perspective:
        img = cv2.warpPerspective(img, M, dsize=(out_w, out_h), borderValue=PAD_COLOR)
    else:
        img = cv2.warpAffine(img, M[:2], dsize=(out_w, out_h), borderValue=PAD_COLOR)
    if not len(labels):
        return img, labels
    use_segs = len(segments) == len(labels)
    new = (_warp_segments(segments, M, bool(perspective), out_w, out_h) if use_segs
           else _warp_boxes(labels[:, 1:5], M, bool(perspective), out_w, out_h))
    keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=0.01 if use_segs else 0.10)
    out = labels[keep].copy()
    out[:, 1:5] = new[keep]
    return img, out


# ---------------------------------------------------------------- colour, mixup, flips
def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float,
                rng: np.random.Generator) -> np.ndarray:
    """Random hue/saturation/value gains r = U(-1, 1)·gain + 1 applied through lookup tables."""
    if not (hgain or sgain or vgain):
        return img  # the HSV round trip is lossy, so skip it entirely
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue lives in 0-179
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def mixup(img: np.ndarray, labels: np.ndarray, img2: np.ndarray, labels2: np.ndarray,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """MixUp (arXiv:1710.09412): blend r·a + (1-r)·b with r ~ Beta(32, 32); labels concatenated."""
    r = rng.beta(32.0, 32.0)
    blended = cv2.addWeighted(img, r, img2, 1.0 - r, 0.0)
    return blended, np.concatenate((labels, labels2), 0)


def fliplr(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; normalised labels x → 1 - x. The image is returned as a view."""
    labels = labels.copy()
    labels[:, 1] = 1 - labels[:, 1]
    return img[:, ::-1], labels


def flipud(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down; normalised labels y → 1 - y. The image is returned as a view."""
    labels = labels.copy()
    labels[:, 2] = 1 - labels[:, 2]
    return img[::-1], labels


def random_flips(img: np.ndarray, labels: np.ndarray, p_ud: float, p_lr: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """flipud with probability p_ud, then fliplr with probability p_lr (YOLOv5's order)."""
    if p_ud and rng.random() < p_ud:
        img, labels = flipud(img, labels)
    if p_lr and rng.random() < p_lr:
        img, labels = fliplr(img, labels)
    return img, labels


# ---------------------------------------------------------------- copy-paste
def bbox_ioa(box: np.ndarray, boxes: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Intersection of `box` (4,) with each of `boxes` (n, 4) over the area of `boxes`."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def copy_paste(img: np.ndarray, labels: np.ndarray, segments: Segments, p: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Segments]:
    """Copy-Paste (arXiv:2012.07177): mirror round(p·n) objects left-right and paste them.

    Needs polygon `segments` (pixels) aligned with the pixel-xyxy `labels`; a pasted copy is
    kept only where it covers less than 30% of every existing box. With box-only labels
    (no segments) there is no object mask to copy, so this is a documented no-op.
    """
    n = len(segments)
    if not p or not n:
        return img, labels, segments
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    labels, segments = labels.copy(), list(segments)
    for j in rng.choice(n, size=round(p * n), replace=False):
        c, x1, y1, x2, y2 = labels[j]
        box = np.array([w - x2, y1, w - x1, y2])
        if (bbox_ioa(box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, [[c, *box]]), 0)
            mirrored = segments[j].copy()
            mirrored[:, 0] = w - mirrored[:, 0]
            segments.append(mirrored)
            cv2.drawContours(mask, [segments[j].astype(np.int32)], -1, 1, cv2.FILLED)
    if not mask.any():
        return img, labels, segments
    sel = cv2.flip(mask, 1).astype(bool)
    out = img.copy()
    out[sel] = cv2.flip(img, 1)[sel]
    return out, labels, segments


# ---------------------------------------------------------------- mosaic placement
def mosaic_centre(s: int, rng: np.random.Generator) -> tuple[int, int]:
    """Mosaic centre (xc, yc), each uniform in [s/2, 3s/2) on the 2s × 2s canvas."""
    xc, yc = rng.uniform(s / 2, 3 * s / 2, 2)
    return int(xc), int(yc)


def mosaic_tile(i: int, xc: int, yc: int, w: int, h: int, s: int
                ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Canvas and image rectangles (x1, y1, x2, y2) of tile i (0 TL, 1 TR, 2 BL, 3 BR).

    Each image touches the centre with one corner and is cropped at the canvas edge.
    """
    left, top = i in (0, 2), i in (0, 1)
    x1a, x2a = (max(xc - w, 0), xc) if left else (xc, min(xc + w, 2 * s))
    y1a, y2a = (max(yc - h, 0), yc) if top else (yc, min(yc + h, 2 * s))
    x1b = w - (x2a - x1a) if left else 0
    y1b = h - (y2a - y1a) if top else 0
    return (x1a, y1a, x2a, y2a), (x1b, y1b, x1b + (x2a - x1a), y1b + (y2a - y1a))


def place_mosaic(tiles: Sequence[tuple[np.ndarray, np.ndarray, Segments]], s: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Segments]:
    """Paste 4 (image, normalised labels (n,5) cls xywh, normalised segments) on a 2s canvas.

    Returns the canvas (grey 114), pixel-xyxy labels and pixel segments, clipped to [0, 2s].
    """
    xc, yc = mosaic_centre(s, rng)
    canvas = np.full((2 * s, 2 * s, tiles[0][0].shape[2]), PAD_VALUE, dtype=np.uint8)
    all_labels, all_segs = [], []
    for i, (img, labels, segs) in enumerate(tiles):
        h, w = img.shape[:2]
        (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_tile(i, xc, yc, w, h, s)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        padw, padh = x1a - x1b, y1a - y1b
        lab = labels.copy()
        if len(lab):
            lab[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, padw, padh)
        all_labels.append(lab)
        all_segs += [xyn2xy(x, w, h, padw, padh) for x in segs]
    labels4 = np.concatenate(all_labels, 0)
    np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
    all_segs = [np.clip(x, 0, 2 * s) for x in all_segs]
    if len(all_segs) != len(labels4):
        all_segs = []  # some tiles are box-only: segments would not align with the labels
    return canvas, labels4, all_segs
