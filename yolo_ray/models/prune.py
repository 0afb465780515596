"""Pruning: YOLOv5's per-layer L1, a global-L1 variant and structured channel pruning.

The channel half lives in `prune_graph` (coupling groups), `prune_stats` (scores),
`prune_channel` (plans) and `prune_surgery` (applying them); its API is re-exported here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .freeze import is_fused
from .prune_channel import IMPORTANCE, PLAN_FORMAT, ChannelPlan, plan_channel_prune, step_ratios
from .prune_reconstruct import LayerFit, reconstruct_pruned
from .prune_surgery import apply_channel_plan, rebuild_from_plan

__all__ = ["IMPORTANCE", "METHODS", "PLAN_FORMAT", "ChannelPlan", "MaskKeeper", "PruneResult",
           "SparsityReport", "apply_channel_plan", "apply_masks", "check_prune_args",
           "conv_gflops", "plan_channel_prune", "plan_unstructured", "prune_model",
           "rebuild_from_plan", "sparsity_report", "step_ratios"]

METHODS = ("l1", "global-l1", "channel")


# ============================================================================ reports
@dataclass(frozen=True)
class SparsityReport:
    """Zero counts YOLOv5's way (over all parameters) and over conv weights only."""

    params: int
    zeros: int
    sparsity_all: float
    conv_params: int
    conv_zeros: int
    sparsity_conv: float
    gflops: float | None = None  # dense conv GFLOPs at `imgsz` (zeros still cost time)

    def summary(self) -> str:
        """One log line."""
        fl = f", {self.gflops:.2f} GFLOPs" if self.gflops is not None else ""
        return (f"{self.params:,} parameters, sparsity {self.sparsity_all:.3g} "
                f"(conv weights {self.sparsity_conv:.3g}){fl}")


def conv_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs (2·MACs) of every Conv2d for one imgsz×imgsz image, measured by forward hooks."""
    total = [0]

    def count(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        w = m.conv.weight if is_fused(m) else m.weight
        total[0] += 2 * out.numel() * w[0].numel()

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return 0.0
    # A frozen Conv block folded by freeze.py calls F.conv2d itself: count it at the block.
    counted = [m for m in model.modules() if isinstance(m, nn.Conv2d) or is_fused(m)]
    w, handles = convs[0].weight, [m.register_forward_hook(count) for m in counted]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            x = torch.zeros(1, convs[0].in_channels, imgsz, imgsz, device=w.device, dtype=w.dtype)
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total[0] / 1e9


def sparsity_report(model: nn.Module, imgsz: int | None = None) -> SparsityReport:
    """Count exact zeros; `imgsz` also measures conv GFLOPs (None skips the forward)."""
    params = zeros = 0
    for p in model.parameters():
        params += p.numel()
        zeros += int((p == 0).sum())
    conv = [w for _, w in _conv_weights(model)]
    cp = sum(w.numel() for w in conv)
    cz = sum(int((w == 0).sum()) for w in conv)
    gf = conv_gflops(model, imgsz) if imgsz else None
    return SparsityReport(params, zeros, zeros / max(params, 1), cp, cz, cz / max(cp, 1), gf)


def check_prune_args(amount: float, method: str) -> None:
    """ConfigError unless 0 <= amount < 1 and the method is known."""
    if not isinstance(amount, (int, float)) or not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"--prune amount must be in [0, 1), got {amount!r}")
    if method not in METHODS:
        raise ConfigError(f"--prune-method {method!r} is not one of {', '.join(METHODS)}")


# ============================================================================ unstructured
def _conv_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(f"{n}.weight" if n else "weight", m.weight) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d)]


def _keep_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    # Stable argsort: ties (rare for trained floats) go to the lower index, deterministically.
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        mask[torch.argsort(scores, stable=True)[:n_prune]] = False
    return mask


def plan_unstructured(model: nn.Module, amount: float,
                      method: str = "l1") -> dict[str, torch.Tensor]:
    """Keep-masks (bool, True = keep) for every Conv2d weight, incl. Detect's (pure).

    'l1' is YOLOv5's `prune()`: per layer, the round(amount·numel) smallest |w| go.
    'global-l1' removes round(amount·total) smallest |w| over all conv weights together.
    """
    check_prune_args(amount, method)
    if method == "channel":
        raise ConfigError("plan_unstructured: use plan_channel_prune for method 'channel'")
    convs = _conv_weights(model)
    if not convs:
        raise ConfigError("cannot prune: the model has no Conv2d layers")
    with torch.no_grad():
        if method == "l1":
            return {n: _keep_mask(w.detach().abs().flatten(), round(amount * w.numel())).view_as(w)
                    for n, w in convs}
        flat = torch.cat([w.detach().abs().flatten().float().cpu() for _, w in convs])
        mask = _keep_mask(flat, round(amount * flat.numel()))
        out, start = {}, 0
        for n, w in convs:
            out[n] = mask[start:start + w.numel()].view_as(w).to(w.device)
            start += w.numel()
        return out


class MaskKeeper:
    """Keeps pruned weights at zero during fine-tuning (`--prune-at start`).

    Masks gradients with tensor hooks (like torch.nn.utils.prune's reparametrisation: pruned
    entries get no momentum and do not count in grad-norm clipping) and `apply()` re-zeroes
    the weights after each optimizer step (weight decay / Adam could otherwise move them).
    state_dict keys stay plain `weight`, so checkpoints and EMA need nothing special.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in masks if n not in params]
        if missing:
            raise ConfigError(f"pruning masks name unknown parameters: {missing[:3]}")
        self.model = model
        self._pairs = [(params[n], m) for n, m in masks.items()]
        self._hooks = [p.register_hook(self._grad_hook(i)) for i, (p, _) in enumerate(self._pairs)
                       if p.requires_grad]
        self.apply()

    def _mask(self, i: int, like: torch.Tensor) -> torch.Tensor:
        p, m = self._pairs[i]
        if m.device != like.device:  # the model moved (trainer .to(device)); move once
            m = m.to(like.device)
            self._pairs[i] = (p, m)
        return m

    def _grad_hook(self, i: int):
        return lambda grad: grad * self._mask(i, grad)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (call after every optimizer step)."""
        for i, (p, _) in enumerate(self._pairs):
            p.mul_(self._mask(i, p))

    def finalize(self, imgsz: int | None = None) -> SparsityReport:
        """Re-apply the masks, drop the hooks (pruning becomes permanent) and report."""
        self.apply()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return sparsity_report(self.model, imgsz)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor],
                imgsz: int | None = None) -> tuple[nn.Module, SparsityReport]:
    """A pruned copy of `model` (masks made permanent) and its sparsity report."""
    new = copy.deepcopy(model)
    params = dict(new.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(params[n].device))
    return new, sparsity_report(new, imgsz)


# ============================================================================ one call
@dataclass
class PruneResult:
    """What `prune_model` returns: a new model, before/after reports and what to keep."""

    model: nn.Module
    before: SparsityReport
    report: SparsityReport
    method: str
    amount: float
    plan: dict[str, Any] | None = None   # channel plan (as_dict) to save with the checkpoint
    mask_keeper: MaskKeeper | None = None
    fits: tuple[LayerFit, ...] = ()      # channel with reconstruct=True: one per refitted conv

    def summary(self) -> str:
        """One log line: before → after."""
        return (f"{self.before.params:,} → {self.report.params:,} parameters, "
                f"sparsity {self.report.sparsity_all:.3g} (conv {self.report.sparsity_conv:.3g})"
                + (f", {self.before.gflops:.2f} → {self.report.gflops:.2f} GFLOPs"
                   if self.report.gflops is not None and self.before.gflops is not None else ""))


def prune_model(model: nn.Module, amount: float, method: str = "l1", keep_masks: bool = False,
                importance: str = "l1", imgsz: int | None = 640,
                calib: Any = None, scope: str = "global",
                reconstruct: bool = False, divisor: int = 1) -> PruneResult:
    """Plan and apply pruning in one call; `model` itself is not modified.

    Args:
        keep_masks: for 'l1'/'global-l1' fine-tuning (`--prune-at start`): the result carries
            a `MaskKeeper` bound to the new model; call `mask_keeper.apply()` after every
            optimizer step. Channel pruning needs no masks (removed channels cannot regrow).
        importance: channel ranking, see `plan_channel_prune` ('activation' needs `calib`).
        imgsz: image size for the GFLOPs in the reports (None: skip).
        scope: for 'channel': 'global' (lowest importance network-wide) or 'layer' (every
            group loses `amount` of its channels), see `plan_channel_prune`.
        calib: for 'channel': calibration images (N, 3, H, W) in [0, 1] (or an iterable of
            batches) for importance 'activation', for the removed channels' mean values and
            for `reconstruct`.
        divisor: for 'channel': kept counts are multiples of it (see `plan_channel_prune`).
        reconstruct: for 'channel': refit every conv after the surgery, layer by layer, to
            the unpruned model's outputs on `calib` (least squares; see `prune_reconstruct`).
    """
    check_prune_args(amount, method)
    if reconstruct and (method != "channel" or calib is None):
        raise ConfigError("reconstruction is for --method channel and needs calibration "
                          "images")
    before = sparsity_report(model, imgsz)
    if method == "channel":
        plan = plan_channel_prune(model, amount, importance, divisor, calib, scope)
        new = apply_channel_plan(model, plan, calib=calib)
        fits = tuple(reconstruct_pruned(model, new, plan.keep, calib)) if reconstruct else ()
        return PruneResult(new, before, sparsity_report(new, imgsz), method, amount,
                           plan=new.channel_plan.as_dict(), fits=fits)
    masks = plan_unstructured(model, amount, method)
    prior = getattr(model, "channel_plan", None)  # an earlier channel pruning stays in force
    plan = prior.as_dict() if prior else None
    if keep_masks:
        new = copy.deepcopy(model)
        keeper = MaskKeeper(new, masks)
        return PruneResult(new, before, sparsity_report(new, imgsz), method, amount, plan, keeper)
    new, report = apply_masks(model, masks, imgsz)
    return PruneResult(new, before, report, method, amount, plan)
