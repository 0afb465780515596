"""YOLOv5's optimiser set-up: three parameter groups, one-cycle LR lambdas and warmup."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config.schema import Hyp

NOMINAL_BATCH = 64  # YOLOv5's nbs: gradients accumulate up to this many images per step


@dataclass(frozen=True)
class ParamGroups:
    """Trainable parameters split as YOLOv5 does (frozen ones are left out)."""

    biases: list[nn.Parameter]      # group 0: no decay, warmup_bias_lr
    weights: list[nn.Parameter]     # group 1: decay
    norm_weights: list[nn.Parameter]  # group 2: BatchNorm weights, no decay


def split_param_groups(model: nn.Module) -> ParamGroups:
    """Walk modules (non-recursive params) and sort trainable params into YOLOv5's groups."""
    biases, weights, norms = [], [], []
    for module in model.modules():
        is_norm = "Norm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue  # frozen: no optimizer state at all
            if name == "bias":
                biases.append(p)
            elif name == "weight" and is_norm:
                norms.append(p)
            else:
                weights.append(p)
    return ParamGroups(biases, weights, norms)


def accumulate_steps(batch_size: int) -> int:
    """Batches per optimizer step so each step sees about 64 images."""
    return max(round(NOMINAL_BATCH / batch_size), 1)


def scaled_weight_decay(weight_decay: float, batch_size: int) -> float:
    """YOLOv5 scales weight decay by the effective batch relative to 64."""
    return weight_decay * batch_size * accumulate_steps(batch_size) / NOMINAL_BATCH


def build_optimizer(
    groups: ParamGroups, name: str, lr: float, momentum: float, decay: float
) -> torch.optim.Optimizer:
    """SGD (nesterov) / Adam / AdamW over the three groups (order: biases, weights, norms)."""
    spec = [
        {"params": groups.biases, "weight_decay": 0.0},
        {"params": groups.weights, "weight_decay": decay},
        {"params": groups.norm_weights, "weight_decay": 0.0},
    ]
    # foreach: one fused kernel per group instead of a Python loop per tensor (torch only
    # defaults to it on CUDA); same arithmetic.
    if name == "SGD":
        return torch.optim.SGD(spec, lr=lr, momentum=momentum, nesterov=True, foreach=True)
    if name == "Adam":
        return torch.optim.Adam(spec, lr=lr, betas=(momentum, 0.999), foreach=True)
    if name == "AdamW":
        return torch.optim.AdamW(spec, lr=lr, betas=(momentum, 0.999), foreach=True)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_lambda(epochs: int, lrf: float, cosine: bool) -> Callable[[float], float]:
    """One-cycle LR multiplier per epoch: linear (default) or cosine, from 1 to lrf."""
    if cosine:
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda e: (1 - e / epochs) * (1.0 - lrf) + lrf


def warmup_iterations(hyp: Hyp, batches_per_epoch: int) -> int:
    """Number of warmup iterations: max(round(warmup_epochs * nb), 100)."""
    return max(round(hyp.warmup_epochs * batches_per_epoch), 100)


def apply_warmup(
    optimizer: torch.optim.Optimizer, hyp: Hyp, ni: int, nw: int, epoch_lr_factor: float,
    batch_size: int,
) -> int:
    """Set warmup lr/momentum for iteration ni (< nw); returns the accumulate count to use."""
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, NOMINAL_BATCH / batch_size]).round()))
    target = hyp.lr0 * epoch_lr_factor
    for j, group in enumerate(optimizer.param_groups):
        start = hyp.warmup_bias_lr if j == 0 else 0.0
        group["lr"] = float(np.interp(ni, xi, [start, target]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(ni, xi, [hyp.warmup_momentum, hyp.momentum]))
        elif "betas" in group:
            beta1 = float(np.interp(ni, xi, [hyp.warmup_momentum, hyp.momentum]))
            group["betas"] = (beta1, group["betas"][1])
    return accumulate


def set_hyp_on_optimizer(optimizer: torch.optim.Optimizer, hyp: Hyp, batch_size: int) -> None:
    """Apply new lr0/momentum/weight_decay after a hyp change (PBT explore) mid-training."""
    decay = scaled_weight_decay(hyp.weight_decay, batch_size)
    for j, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = hyp.lr0
        if j == 1:
            group["weight_decay"] = decay
        if "momentum" in group:
            group["momentum"] = hyp.momentum
        elif "betas" in group:
            group["betas"] = (hyp.momentum, group["betas"][1])
