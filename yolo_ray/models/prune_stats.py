"""Per-channel statistics and importance scores used to rank channels for pruning."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .prune_graph import ChannelGraph


def channel_score(block: nn.Module, importance: str) -> torch.Tensor:
    if importance == "bn":
        return block.bn.weight.detach().abs().float().cpu()
    w = block.conv.weight.detach().abs().float().cpu()
    return w.flatten(1).mean(1)  # mean, so blocks with different kernels weigh alike


Moments = dict[int, tuple[torch.Tensor, torch.Tensor]]  # space -> per-channel mean, variance
# Probabilists' Gauss-Hermite rule: E f(z), z ~ N(0, 1)  ≈  Σ w_i f(z_i).
_GH_Z, _GH_W = (torch.tensor(a, dtype=torch.float64)
                for a in np.polynomial.hermite_e.hermegauss(32))
_GH_W = _GH_W / _GH_W.sum()


@torch.no_grad()
def moments_from_bn(model: nn.Module, g: ChannelGraph) -> Moments:
    """Mean and variance of every conv-written (or residual-summed) channel, data-free.

    A BN output is γ·z + β with z ≈ N(0, 1) (the running statistics normalise it), so a Conv
    block's channel is act(γz + β); residual sums add their terms (taken as independent).
    """
    per_term: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    out: Moments = {}
    for s in range(len(g.parent)):
        if g.size[s] is None or any(g.origin[t] is None for t in g.terms[s]):
            continue
        mean = var = torch.zeros(g.size[s], dtype=torch.float64)
        for t in g.terms[s]:
            if t not in per_term:
                blk = model.get_submodule(g.origin[t])
                gamma = blk.bn.weight.detach().double().cpu()
                beta = blk.bn.bias.detach().double().cpu()
                y = blk.act(gamma[:, None] * _GH_Z + beta[:, None])
                m = y @ _GH_W
                per_term[t] = (m, (y * y @ _GH_W - m * m).clamp_min(0))
            mean, var = mean + per_term[t][0], var + per_term[t][1]
        out[s] = (mean.float(), var.float())
    return out


@torch.no_grad()
def moments_from_data(model: nn.Module, g: ChannelGraph, calib: Any) -> Moments:
    """Per-channel mean and variance of every space measured on calibration images.

    `calib`: a float image batch (N, 3, H, W) in [0, 1], or an iterable of such batches.
    """
    paths = {s: p for s, p in g.where.items() if g.size[s] is not None}
    acc: dict[str, list] = {}

    def hook(name: str):
        def fn(m: nn.Module, args: tuple, y: torch.Tensor) -> None:
            y = y.detach().double()
            a = acc.setdefault(name, [0.0, 0.0, 0])
            a[0] = a[0] + y.sum((0, 2, 3)).cpu()
            a[1] = a[1] + y.pow(2).sum((0, 2, 3)).cpu()
            a[2] += y.numel() // y.shape[1]
        return fn

    handles = [model.get_submodule(p).register_forward_hook(hook(p)) for p in set(paths.values())]
    was = model.training
    try:
        model.eval()
        p0 = next(model.parameters())
        for x in ([calib] if isinstance(calib, torch.Tensor) else calib):
            model(x.to(p0.device, p0.dtype))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out: Moments = {}
    for s, p in paths.items():
        if p in acc:
            sm, sq, n = acc[p]
            mean = sm / n
            out[s] = (mean.float(), (sq / n - mean * mean).clamp_min(0).float())
    return out


def channel_moments(model: nn.Module, g: ChannelGraph, calib: Any = None) -> Moments:
    return moments_from_data(model, g, calib) if calib is not None else moments_from_bn(model, g)


@torch.no_grad()
def perturbation_scores(model: nn.Module, g: ChannelGraph,
                        moments: Moments) -> dict[int, torch.Tensor]:
    """Per group root: Σ over consumers of the share of the consumer's output signal that
    removing each channel (replaced by its mean) destroys: Var(x_c)·‖W[:, c]‖² (after the
    consumer's BN scaling γ/σ) over the same summed over all its input channels. Shares are
    comparable across layers, so channels can be ranked network-wide."""
    scores: dict[int, torch.Tensor] = {}
    for path, segs in g.consumers:
        conv = model.get_submodule(path)
        w = conv.weight.detach().float().cpu()
        block = model.get_submodule(path.rpartition(".")[0]) if path.endswith(".conv") else None
        bn = getattr(block, "bn", None)
        if isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None:
            rv = bn.running_var.float().cpu()
            scale = bn.weight.detach().float().cpu() / (rv + bn.eps).sqrt()
            w = w * scale[:, None, None, None]
        if any(g.size[s] is None for s in segs):
            continue  # locked: offsets unknown
        wn = w.pow(2).sum((0, 2, 3))
        var = torch.cat([moments[s][1] if s in moments else torch.zeros(g.size[s]) for s in segs])
        part = wn * var
        part = part / part.sum().clamp_min(1e-12)  # fraction of this consumer's signal
        off = 0
        for s in segs:
            r = g.find(s)
            p = part[off:off + g.size[s]]
            scores[r] = scores[r] + p if r in scores else p
            off += g.size[s]
    return scores
