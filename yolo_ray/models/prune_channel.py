"""Channel prune plans (pure): which output channels every prunable group keeps.

Coupling groups live in `prune_graph`, channel statistics and scores in `prune_stats`, and
the surgery that applies a plan in `prune_surgery`.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .prune_graph import build_graph, prunable_groups
from .prune_stats import channel_moments, channel_score, perturbation_scores

IMPORTANCE = ("perturb", "activation", "bn", "l1")
PLAN_FORMAT = "yolo-ray-channel-plan/1"


@dataclass(frozen=True)
class ChannelPlan:
    """Kept output channels per Conv block path (e.g. 'model.2.cv1'), relative to the yaml."""

    keep: dict[str, tuple[int, ...]]
    amount: float = 0.0
    importance: str = "bn"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (json / torch.load(weights_only=True) friendly) for checkpoints."""
        return {"format": PLAN_FORMAT, "amount": self.amount, "importance": self.importance,
                "keep": {k: list(v) for k, v in self.keep.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | ChannelPlan) -> ChannelPlan:
        """Inverse of `as_dict`; ConfigError for anything else."""
        if isinstance(d, ChannelPlan):
            return d
        if (not isinstance(d, dict) or d.get("format") != PLAN_FORMAT
                or not isinstance(d.get("keep"), dict)):
            raise ConfigError(f"not a channel prune plan (expected format {PLAN_FORMAT!r})")
        keep = {str(k): tuple(int(i) for i in v) for k, v in d["keep"].items()}
        return cls(keep, float(d.get("amount", 0.0)), str(d.get("importance", "bn")))


def _global_keep(groups: dict[int, int], score_of: dict[int, torch.Tensor], n_remove: int,
                 max_frac: float, divisor: int) -> dict[int, int]:
    """Channels kept per group when about `n_remove` of the lowest scores network-wide go.

    Removal is by chunks: a group gives up its least important `divisor` channels at a time
    (its first chunk aligns it to a multiple of `divisor`), the chunk with the lowest mean
    score first, so every count that changes stays a multiple of `divisor`; no group loses
    more than `max_frac` of its width (nor all of it). Stops at the chunk count nearest
    `n_remove`. With divisor 1 this is the plain network-wide ranking.
    """
    keep = dict(groups)
    floor = {r: min(w, math.ceil(max(1, math.ceil(w * (1 - max_frac))) / divisor) * divisor)
             for r, w in groups.items()}
    ranked = {r: torch.sort(score_of[r].float(), stable=True).values.tolist() for r in groups}

    def chunk(r: int) -> tuple[float, int] | None:
        size = keep[r] % divisor or divisor
        if keep[r] - size < floor[r]:
            return None
        gone = groups[r] - keep[r]
        return sum(ranked[r][gone:gone + size]) / size, size

    heap = [(c[0], r, c[1]) for r in groups if (c := chunk(r)) is not None]
    heapq.heapify(heap)
    removed = 0
    while heap and removed < n_remove:
        _, r, size = heapq.heappop(heap)
        if removed + size - n_remove > n_remove - removed:
            break  # this chunk would overshoot by more than stopping here falls short
        keep[r] -= size
        removed += size
        if (c := chunk(r)) is not None:
            heapq.heappush(heap, (c[0], r, c[1]))
    return keep


def _n_keep(width: int, amount: float, divisor: int) -> int:
    """Kept channels of a `width` group losing `amount` of them: at least 1; with a divisor,
    the multiple of `divisor` nearest that count (at least `divisor`, at most `width`)."""
    n = max(1, width - round(amount * width))
    if divisor == 1 or n == width:
        return n
    return min(width, max(divisor, round(n / divisor) * divisor))


def plan_channel_prune(model: nn.Module, amount: float, importance: str = "l1",
                       divisor: int = 1, calib: Any = None, scope: str = "global",
                       max_frac: float = 0.5) -> ChannelPlan:
    """Choose output channels to keep in every prunable channel group (pure).

    A group is a set of conv outputs that must share channels: a plain conv output, or a
    C3 chain joined by residual adds (cv1 and every Bottleneck.cv2). scope 'layer': each group
    keeps max(1, width − round(amount·width)) channels (the nearest multiple of `divisor`)
    with the largest importance; 'global' (default): the same total number of channels goes,
    the lowest-importance ones network-wide (in chunks of `divisor` per group), no group
    losing more than `max_frac` of its width. `divisor` > 1 keeps counts where vectorised
    kernels are efficient: oneDNN blocks fp32 channels by 16 on AVX-512 CPUs and by 8 on
    AVX2 (a 16 → 11 cut computes as 16 there), tensor cores like multiples of 8.
    Importance:

    - 'l1' (default): mean |w| per filter. With scope 'global' it is the best of these on
      the released yolov5n without fine-tuning (coco128 mAP50 0.44 → 0.42 / 0.38 at 5 / 10 %).
    - 'perturb' (data-free): the share of each consumer's (BN-scaled) output signal
      the channel carries, Var(x_c)·‖W_next[:, c]‖² / Σ_c', with Var(x_c) from its BN as
      act(γz + β), z ~ N(0, 1); summed over consumers (and a residual chain's tensors).
    - 'activation': the same with means/variances measured on `calib` images (required).
    - 'bn': BN |γ| (network slimming; only meaningful after sparsity training: on the
      released yolov5n it ranks badly, mAP50 0.08 at 5 %).

    Consumers (next convs, C3.cv3's and SPPF.cv2's concatenated inputs, Concat layers,
    Detect's input convs) lose the matching input channels; Detect outputs never change.
    The image input, grouped convs and unknown layer types are left alone.
    """
    if not isinstance(amount, (int, float)) or not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"--prune amount must be in [0, 1), got {amount!r}")
    if importance not in IMPORTANCE:
        raise ConfigError(
            f"channel importance {importance!r} is not one of {', '.join(IMPORTANCE)}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"channel prune scope {scope!r} is not 'global' or 'layer'")
    if importance == "activation" and calib is None:
        raise ConfigError("channel importance 'activation' needs calibration images (calib=)")
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        raise ConfigError("cannot prune: the model has no Conv2d layers")
    g, mods, keep = build_graph(model), dict(model.named_modules()), {}
    groups = prunable_groups(g)
    if importance in ("perturb", "activation") and groups:
        scores = perturbation_scores(model, g, channel_moments(model, g, calib))
    score_of = {r: (scores.get(r, torch.zeros(w)) if importance in ("perturb", "activation")
                    else sum(channel_score(mods[p], importance) for p in g.producers[r]))
                for r, w in groups.items()}
    if scope == "global":
        n_remove = sum(w - _n_keep(w, amount, 1) for w in groups.values())
        n_keep = _global_keep(groups, score_of, n_remove, max_frac, divisor)
    else:
        n_keep = {r: _n_keep(w, amount, divisor) for r, w in groups.items()}
    for root, width in groups.items():
        n = n_keep[root]
        if n >= width:
            continue
        score = score_of[root]
        idx = tuple(sorted(torch.argsort(score, descending=True, stable=True)[:n].tolist()))
        keep.update({p: idx for p in g.producers[root]})
    return ChannelPlan(keep, float(amount), importance)


def step_ratios(amount: float, steps: int) -> list[float]:
    """Per-step fractions for gradual pruning: step k removes r_k of the channels left, so
    that after k steps amount·k/steps of the original channels are gone (pure)."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"--steps must be a positive integer, got {steps!r}")
    if not isinstance(amount, (int, float)) or not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"--prune amount must be in [0, 1), got {amount!r}")
    gone = [amount * k / steps for k in range(steps + 1)]
    return [(gone[k] - gone[k - 1]) / (1 - gone[k - 1]) for k in range(1, steps + 1)]
