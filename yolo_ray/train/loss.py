"""YOLOv5's training loss: CIoU box, objectness and class BCE with anchor/cell target assignment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.schema import Hyp
from .boxes import bbox_iou

# Objectness weight per detection level (P3, P4, P5): small strides see many more cells.
BALANCE_3 = (4.0, 1.0, 0.4)
BALANCE_OTHER = (4.0, 1.0, 0.25, 0.06, 0.02)
FOCAL_ALPHA = 0.25
GR = 1.0  # objectness target = (1 - GR) + GR * IoU
NEIGHBOUR_G = 0.5  # a neighbour cell is used when the centre is within 0.5 cell of it
# Cell offsets: own cell, then the left, top, right, bottom neighbours (subtracted from g_xy).
_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


def scaled_loss_gains(hyp: Hyp | Mapping[str, float], nl: int, nc: int, imgsz: int) -> dict[str, float]:
    """YOLOv5 train.py's gain scaling: box·3/nl, cls·nc/80·3/nl, obj·(imgsz/640)²·3/nl."""
    layers = 3.0 / nl
    return {
        "box": float(hyp["box"]) * layers,
        "cls": float(hyp["cls"]) * nc / 80.0 * layers,
        "obj": float(hyp["obj"]) * (imgsz / 640.0) ** 2 * layers,
    }


class LevelTargets(NamedTuple):
    """Matched (image, anchor, cell) triples of one level and what each should predict."""

    b: Tensor  # image index in the batch
    a: Tensor  # anchor index
    gj: Tensor  # cell row
    gi: Tensor  # cell column
    tbox: Tensor  # (n, 4): centre offset from the cell's corner and w, h, in grid units
    anchors: Tensor  # (n, 2): the matched anchor in grid units
    tcls: Tensor  # (n,) class index


def _find_detect(model: nn.Module | object) -> Any:
    """The Detect layer of a DetectionModel (also through DDP's .module) or a detect-like object."""
    for obj in (model, getattr(model, "module", None)):
        if obj is not None and hasattr(obj, "detect"):
            return obj.detect
    if all(hasattr(model, k) for k in ("anchors", "nl", "na", "nc")):
        return model
    raise TypeError("ComputeLoss needs a DetectionModel (with .detect) or a Detect-like object")


def _bce(logits: Tensor, target: Tensor, pos_weight: float, gamma: float) -> Tensor:
    """Mean BCE-with-logits with a positive-class weight; focal-modulated when gamma > 0."""
    pw = torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    if gamma > 0:
        # Focal loss (Lin et al., 2017): down-weight easy examples by (1 - p_t)^gamma.
        p = logits.sigmoid()
        p_t = target * p + (1 - target) * (1 - p)
        alpha_t = target * FOCAL_ALPHA + (1 - target) * (1 - FOCAL_ALPHA)
        loss = loss * alpha_t * (1.0 - p_t) ** gamma
    return loss.mean()


class ComputeLoss:
    """YOLOv5's loss (spec §6); call with the training outputs and (nt, 6) targets.

    Args:
        model: a DetectionModel (its `.detect` is read) or a Detect-like object with `anchors`
            (nl, na, 2) in grid units, `nl`, `na`, `nc`.
        hyp: the *unscaled* hyperparameters (as in the hyp file); gains are scaled here.
        imgsz: training image size, for the objectness gain scaling.
        label_smoothing: ε; positive class target 1 − ε/2, negative ε/2.
    """

    def __init__(self, model: nn.Module | object, hyp: Hyp, imgsz: int, label_smoothing: float = 0.0):
        self.detect = _find_detect(model)
        self.nl, self.na, self.nc = int(self.detect.nl), int(self.detect.na), int(self.detect.nc)
        self.imgsz = int(imgsz)
        self.cp, self.cn = 1.0 - 0.5 * label_smoothing, 0.5 * label_smoothing
        self.balance: Sequence[float] = BALANCE_3 if self.nl == 3 else BALANCE_OTHER
        self.set_hyp(hyp)

    def set_hyp(self, hyp: Hyp | Mapping[str, float]) -> None:
        """Adopt new (unscaled) hyperparameters, e.g. after a PBT exploit/explore step."""
        self.gains = scaled_loss_gains(hyp, self.nl, self.nc, self.imgsz)
        self.anchor_t = float(hyp["anchor_t"])
        self.cls_pw, self.obj_pw = float(hyp["cls_pw"]), float(hyp["obj_pw"])
        self.fl_gamma = float(hyp["fl_gamma"])

    def __call__(self, preds: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ((lbox + lobj + lcls)·bs as shape (1,), detached [lbox, lobj, lcls])."""
        device = preds[0].device
        zero = torch.zeros(1, device=device)
        lbox, lobj, lcls = zero.clone(), zero.clone(), zero.clone()
        for i, (pi, t) in enumerate(zip(preds, self.build_targets(preds, targets))):
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=pi.dtype)
            if t.b.numel():
                box_l, cls_l, iou = self._matched_losses(pi[t.b, t.a, t.gj, t.gi], t)
                lbox, lcls = lbox + box_l, lcls + cls_l
                tobj[t.b, t.a, t.gj, t.gi] = ((1.0 - GR) + GR * iou.detach().clamp(0)).to(tobj.dtype)
            lobj = lobj + _bce(pi[..., 4], tobj, self.obj_pw, self.fl_gamma) * self.balance[i]
        lbox, lobj, lcls = lbox * self.gains["box"], lobj * self.gains["obj"], lcls * self.gains["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def _matched_losses(self, ps: Tensor, t: LevelTargets) -> tuple[Tensor, Tensor, Tensor]:
        """Box and class loss over the matched predictions ps (n, 5 + nc); also their IoU."""
        pxy = ps[:, :2].sigmoid() * 2 - 0.5
        pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * t.anchors
        iou = bbox_iou(torch.cat((pxy, pwh), 1), t.tbox, CIoU=True)
        box_l = (1.0 - iou).mean()
        cls_l = ps.new_zeros(())
        if self.nc > 1:  # a single class is fully described by objectness
            tc = torch.full_like(ps[:, 5:], self.cn)
            tc[torch.arange(tc.shape[0], device=tc.device), t.tcls] = self.cp
            cls_l = _bce(ps[:, 5:], tc, self.cls_pw, self.fl_gamma)
        return box_l, cls_l, iou

    def build_targets(self, preds: Sequence[Tensor], targets: Tensor) -> list[LevelTargets]:
        """Assign each (nt, 6) target [img, cls, x, y, w, h] (normalised) to anchors and cells.

        Per level: an anchor matches when max(r, 1/r) < anchor_t for the w and h ratios
        r = target/anchor; each match uses its own cell plus the nearer horizontal and vertical
        neighbour (when the centre is in that half of the cell and not on the border row) —
        up to 3 cells. Ordering is offset-major, then anchor, then target, as in YOLOv5.
        """
        targets = targets.to(preds[0].device, torch.float32)
        anchors_all = self.detect.anchors.to(targets.device, torch.float32)
        offsets = torch.tensor(_OFFSETS, device=targets.device) * NEIGHBOUR_G
        return [self._level_targets(p.shape, anchors_all[i], targets, offsets) for i, p in enumerate(preds)]

    def _level_targets(self, shape: torch.Size, anchors: Tensor, targets: Tensor, offsets: Tensor) -> LevelTargets:
        ny, nx = int(shape[2]), int(shape[3])
        grid = targets.new_tensor([nx, ny])
        gxy_all, gwh_all = targets[:, 2:4] * grid, targets[:, 4:6] * grid
        ratio = gwh_all[None] / anchors[:, None]  # (na, nt, 2)
        keep = torch.maximum(ratio, 1.0 / ratio).amax(dim=2) < self.anchor_t
        a, ti = keep.nonzero(as_tuple=True)  # anchor-major, like YOLOv5's (na, nt) layout
        gxy, gwh = gxy_all[ti], gwh_all[ti]
        inv = grid - gxy
        lo = (gxy % 1 < NEIGHBOUR_G) & (gxy > 1)  # left, top neighbour
        hi = (inv % 1 < NEIGHBOUR_G) & (inv > 1)  # right, bottom neighbour
        use = torch.stack((torch.ones_like(lo[:, 0]), lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]))
        oi, mi = use.nonzero(as_tuple=True)  # (5, m) -> offset-major
        gxy, gwh, a, ti = gxy[mi], gwh[mi], a[mi], ti[mi]
        # Truncation equals floor here: every shifted centre is >= 0 by the conditions above.
        gij = (gxy - offsets[oi]).long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        cell = torch.stack((gi, gj), 1).to(gxy.dtype)
        return LevelTargets(
            b=targets[ti, 0].long(), a=a, gj=gj, gi=gi,
            tbox=torch.cat((gxy - cell, gwh), 1), anchors=anchors[a], tcls=targets[ti, 1].long(),
        )
