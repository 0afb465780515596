"""Knowledge distillation for fine-tuning a pruned model: the unpruned model's head as soft targets.

Every YOLOv5 head output goes through a sigmoid (box xy/wh, objectness, classes), so the
teacher's sigmoids are soft targets for the student's logits (binary cross-entropy). A
coco128-sized set gives a few hundred boxes; the teacher gives a target at every anchor of
every (augmented) image, which is what lets a short fine-tune recover a pruned net.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distill_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Soft-target BCE of the student's raw head outputs against the teacher's (pure).

    Per level (bs, na, ny, nx, 5 + nc): objectness at every anchor (mean); box (summed over
    its 4 outputs) and classes (mean over classes) at each anchor weighted by the teacher's
    objectness, normalised by that weight's sum, so background anchors do not drown them.
    The teacher's own entropy is subtracted, so a perfect copy scores 0.
    """
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"student head output {tuple(s.shape)} != teacher's {tuple(t.shape)}")
        s, t = s.float(), t.detach().float()
        p = t.sigmoid()
        gap = (F.binary_cross_entropy_with_logits(s, p, reduction="none")
               - F.binary_cross_entropy_with_logits(t, p, reduction="none"))
        w = p[..., 4]
        norm = w.sum().clamp_min(1.0)
        total = total + gap[..., 4].mean() + (gap[..., :4].sum(-1) * w).sum() / norm
        if s.shape[-1] > 5:
            total = total + (gap[..., 5:].mean(-1) * w).sum() / norm
    return total


class Distiller:
    """A frozen teacher and a gain: `loss(x, preds)` adds to the detection loss."""

    def __init__(self, teacher: nn.Module, gain: float = 1.0) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.gain = float(gain)

    def loss(self, x: Tensor, preds: Sequence[Tensor]) -> Tensor:
        """gain · distill_loss · batch size (scaled like ComputeLoss's total)."""
        with torch.no_grad():
            out = self.teacher(x)
        raw = out[1] if isinstance(out, tuple) else out  # eval mode: (inference, raw levels)
        return self.gain * distill_loss(preds, raw) * x.shape[0]
