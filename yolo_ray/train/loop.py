"""One training epoch (torchvision engine style): warmup, accumulation, AMP, clip, EMA."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import Hyp
from ..errors import YoloRayError
from .distill import Distiller
from .ema import ModelEMA
from .optim import apply_warmup

GRAD_CLIP_NORM = 10.0


class NonFiniteLossError(YoloRayError):
    """Training diverged (NaN/inf loss); the trial cannot produce a meaningful result."""


@dataclass
class EpochContext:
    """Everything one epoch needs, passed explicitly (no global state)."""

    model: nn.Module
    loader: Iterable
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    compute_loss: Callable
    ema: ModelEMA
    hyp: Hyp
    epoch: int
    epochs: int
    lr_factor: Callable[[float], float]
    batch_size: int
    device: torch.device
    nw: int                       # warmup iterations
    accumulate: int
    last_opt_step: int
    imgsz: int
    grid: int                     # max stride (multi-scale sizes are multiples of it)
    amp: bool = False
    multi_scale: bool = False
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    after_step: Callable[[], None] | None = None   # e.g. re-apply pruning masks
    progress: bool = False
    channels_last: bool = False
    distiller: Distiller | None = None             # teacher soft targets added to the loss


@dataclass(frozen=True)
class EpochStats:
    """Mean train losses (box, obj, cls), learning rates and the step counter after an epoch."""

    losses: tuple[float, float, float]
    lrs: tuple[float, ...]
    last_opt_step: int
    images: int
    batches: int
    distill_loss: float | None = None   # mean teacher term (--distill), None without a teacher


def _multi_scale(imgs: torch.Tensor, ctx: EpochContext) -> torch.Tensor:
    lo, hi = int(ctx.imgsz * 0.5), int(ctx.imgsz * 1.5 + ctx.grid)
    sz = int(ctx.rng.integers(lo, hi)) // ctx.grid * ctx.grid
    factor = sz / max(imgs.shape[2:])
    if factor == 1:
        return imgs
    shape = [math.ceil(x * factor / ctx.grid) * ctx.grid for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=shape, mode="bilinear", align_corners=False)


def _optimizer_step(ctx: EpochContext, params: list[torch.Tensor]) -> None:
    ctx.scaler.unscale_(ctx.optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_norm=GRAD_CLIP_NORM)
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.after_step is not None:
        ctx.after_step()
    ctx.ema.update(ctx.model)


def train_one_epoch(ctx: EpochContext) -> EpochStats:
    """Train for one pass over `ctx.loader`; returns mean losses and the new step counter."""
    nb = len(ctx.loader)  # type: ignore[arg-type]
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    mloss = torch.zeros(3)
    mdistill = 0.0
    accumulate, last_opt_step, images = ctx.accumulate, ctx.last_opt_step, 0
    epoch_lr = ctx.lr_factor(ctx.epoch)
    bar = _progress(ctx, nb)
    ctx.optimizer.zero_grad(set_to_none=True)
    for i, (imgs, targets, _paths, _shapes) in enumerate(bar):
        ni = i + nb * ctx.epoch
        x = imgs.to(ctx.device, non_blocking=True).float() / 255.0
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if ni <= ctx.nw:
            accumulate = apply_warmup(ctx.optimizer, ctx.hyp, ni, ctx.nw, epoch_lr, ctx.batch_size)
        if ctx.multi_scale:
            x = _multi_scale(x, ctx)
        with torch.autocast(ctx.device.type, enabled=ctx.amp and ctx.device.type == "cuda"):
            preds = ctx.model(x)
            loss, items = ctx.compute_loss(preds, targets.to(ctx.device))
            if ctx.distiller is not None:
                taught = ctx.distiller.loss(x, preds)
                loss = loss + taught
                mdistill = (mdistill * i + float(taught.detach()) / x.shape[0]) / (i + 1)
        if not torch.isfinite(loss).all():
            what = "NaN" if torch.isnan(loss).any() else "infinite"
            raise NonFiniteLossError(
                f"loss became {what} at epoch {ctx.epoch} batch {i} (non-finite training "
                "loss); the hyperparameters make training diverge")
        ctx.scaler.scale(loss).backward()
        if ni - last_opt_step >= accumulate:
            _optimizer_step(ctx, params)
            last_opt_step = ni
        mloss = (mloss * i + items.detach().cpu()) / (i + 1)
        images += imgs.shape[0]
        if ctx.progress:
            bar.set_postfix_str(_postfix(ctx, mloss, targets, x))
    lrs = tuple(float(g["lr"]) for g in ctx.optimizer.param_groups)
    return EpochStats(tuple(float(v) for v in mloss), lrs, last_opt_step, images, nb,
                      mdistill if ctx.distiller is not None else None)


def _progress(ctx: EpochContext, nb: int):
    if not ctx.progress:
        return ctx.loader
    from tqdm import tqdm

    return tqdm(ctx.loader, total=nb, file=sys.stderr, desc=f"{ctx.epoch}/{ctx.epochs - 1}",
                bar_format="{l_bar}{bar:10}{r_bar}", leave=True)


def _postfix(ctx: EpochContext, mloss: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> str:
    mem = (f"{torch.cuda.memory_reserved() / 1e9:.3g}G"
           if ctx.device.type == "cuda" else "cpu")
    box, obj, cls = mloss.tolist()
    return f"mem {mem} box {box:.4g} obj {obj:.4g} cls {cls:.4g} inst {len(targets)} size {x.shape[-1]}"
