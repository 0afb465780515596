"""Channel prune plans (pure): which output channels every prunable group keeps.

Coupling groups live in `prune_graph`, channel statistics and scores in `prune_stats`, and
the surgery that applies a plan in `prune_surgery`.
"""

from __future__ import annotations

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
    """Channels kept per group when the `n_remove` lowest scores network-wide go, no group
    losing more than `max_frac` of its width (nor all of it); counts rounded up to `divisor`."""
    roots = list(groups)
    floor = {r: max(1, math.ceil(groups[r] * (1 - max_frac))) for r in roots}
    if not roots:
        return {}
    allv = torch.cat([score_of[r].float() for r in roots])
    owner = torch.cat([torch.full((groups[r],), i) for i, r in enumerate(roots)]).tolist()
    keep, removed = dict(groups), 0
    for j in torch.argsort(allv, stable=True).tolist():
        if removed >= n_remove:
            break
        r = roots[owner[j]]
        if keep[r] > floor[r]:
            keep[r] -= 1
            removed += 1
    return {r: min(groups[r], math.ceil(k / divisor) * divisor) for r, k in keep.items()}


def _n_keep(width: int, amount: float, divisor: int) -> int:
    n = max(1, width - round(amount * width))
    return min(width, math.ceil(n / divisor) * divisor)


def plan_channel_prune(model: nn.Module, amount: float, importance: str = "l1",
                       divisor: int = 1, calib: Any = None, scope: str = "global",
                       max_frac: float = 0.5) -> ChannelPlan:
    """Choose output channels to keep in every prunable channel group (pure).

    A group is a set of conv outputs that must share channels: a plain conv output, or a
    C3 chain joined by residual adds (cv1 and every Bottleneck.cv2). scope 'layer': each group
    keeps max(1, width − round(amount·width)) channels (rounded up to `divisor`) with the
    largest importance; 'global' (default): the same total number of channels goes, the
    lowest-importance ones network-wide, no group losing more than `max_frac` of its width.
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
    n_keep = {r: _n_keep(w, amount, divisor) for r, w in groups.items()}
    if scope == "global":
        n_keep = _global_keep(groups, score_of, sum(groups.values()) - sum(n_keep.values()),
                              max_frac, divisor)
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
