"""Channel surgery: apply a ChannelPlan (slice convs and BNs, fold removed channels' means)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .prune_channel import ChannelPlan
from .prune_graph import ChannelGraph, build_graph
from .prune_stats import Moments, channel_moments


def _check_plan(g: ChannelGraph, keep: dict[str, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    owner = {p: r for r, ps in g.producers.items() for p in ps}
    unknown = sorted(set(keep) - set(owner))
    if unknown:
        raise ConfigError(f"channel plan names layers this model does not have: {unknown[:5]}")
    out: dict[int, tuple[int, ...]] = {}
    for p, idx in keep.items():
        r = g.find(owner[p])
        if not idx:
            raise ConfigError(f"channel plan removes every output channel of {p}")
        if g.locked[r]:
            raise ConfigError(f"channel plan prunes {p}, whose channels cannot be pruned here")
        if sorted(set(idx)) != list(idx) or idx[0] < 0 or idx[-1] >= g.size[r]:
            raise ConfigError(f"channel plan for {p}: indices must be sorted, unique and in "
                              f"0..{g.size[r] - 1}")
        if out.setdefault(r, idx) != idx or any(q not in keep for q in g.producers[r]):
            raise ConfigError(f"channel plan for {p} differs from the layers it is coupled with "
                              f"({', '.join(g.producers[r])})")
    return out


def _input_index(g: ChannelGraph, segments: list[int],
                 kept: dict[int, tuple[int, ...]]) -> list[int]:
    idx, offset = [], 0
    for s in segments:
        k = kept.get(g.find(s))
        idx += [offset + j for j in (k if k is not None else range(g.size[s]))]
        offset += g.size[s]
    return idx


def _removed_values(g: ChannelGraph, segments: list[int], kept: dict[int, tuple[int, ...]],
                    moments: Moments) -> torch.Tensor:
    """Per consumer input channel: a removed channel's mean value (else 0).

    Replacing a removed channel by its mean (the best constant) and folding that into the
    consumer keeps the consumer's output on average; for BN γ ≈ 0 it is exact (act(β)).
    """
    vals = []
    for s in segments:
        v, k = torch.zeros(g.size[s]), kept.get(g.find(s))
        if k is not None and s in moments:
            drop = torch.ones(g.size[s])
            drop[list(k)] = 0.0
            v = moments[s][0] * drop
        vals.append(v)
    return torch.cat(vals)


@torch.no_grad()
def _compensate(model: nn.Module, g: ChannelGraph, kept: dict[int, tuple[int, ...]],
                calib: Any = None) -> None:
    """Move removed channels' mean outputs into consumer BN means (or Detect biases)."""
    shifts, moments = [], channel_moments(model, g, calib)
    for path, segs in g.consumers:
        if any(g.find(s) in kept for s in segs):
            conv = model.get_submodule(path)
            w = conv.weight.detach().float().cpu().sum((2, 3))
            shift = w @ _removed_values(g, segs, kept, moments)
            shifts.append((path, conv, shift))
    for path, conv, shift in shifts:  # write after all reads: values come from producer BNs
        block = model.get_submodule(path.rpartition(".")[0]) if path.endswith(".conv") else None
        bn = getattr(block, "bn", None)
        if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
            bn.running_mean -= shift.to(bn.running_mean)  # BN sees conv(x) − shift from now on
        elif conv.bias is not None:
            conv.bias += shift.to(conv.bias)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    old = model.get_submodule(path)
    for h in old._forward_pre_hooks.values():  # e.g. freeze's fixed-BN hook
        module.register_forward_pre_hook(h)
    module.train(old.training)
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _slice_conv(model: nn.Module, path: str, out_idx: Any, in_idx: Any) -> None:
    old: nn.Conv2d = model.get_submodule(path)
    w, b = old.weight.detach(), old.bias.detach() if old.bias is not None else None
    if out_idx is not None:
        o = torch.as_tensor(out_idx, device=w.device)
        w, b = w[o], b[o] if b is not None else None
    if in_idx is not None:
        w = w[:, torch.as_tensor(in_idx, device=w.device)]
    new = nn.Conv2d(w.shape[1] * old.groups, w.shape[0], old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, b is not None, old.padding_mode,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    for p_new, p_old in zip(new.parameters(), old.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    _set(model, path, new)


def _slice_bn(model: nn.Module, path: str, idx: tuple[int, ...]) -> None:
    old: nn.BatchNorm2d = model.get_submodule(path)
    new = nn.BatchNorm2d(len(idx), old.eps, old.momentum, old.affine, old.track_running_stats,
                         device=old.weight.device, dtype=old.weight.dtype)
    o = torch.as_tensor(idx, device=old.weight.device)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new, name).copy_(getattr(old, name)[o])
        new.num_batches_tracked.copy_(old.num_batches_tracked)
    new.weight.requires_grad_(old.weight.requires_grad)
    new.bias.requires_grad_(old.bias.requires_grad)
    _set(model, path, new)


def _compose(prior: ChannelPlan | None, plan: ChannelPlan) -> ChannelPlan:
    """The plan relative to the yaml architecture after applying `plan` on top of `prior`."""
    keep = dict(prior.keep) if prior else {}
    for p, idx in plan.keep.items():
        keep[p] = tuple(keep[p][j] for j in idx) if p in keep else idx
    return ChannelPlan(keep, plan.amount, plan.importance)


def _apply_inplace(model: nn.Module, plan: ChannelPlan, compensate: bool = True,
                   calib: Any = None) -> nn.Module:
    g = build_graph(model)
    kept = _check_plan(g, plan.keep)
    if compensate and kept:
        _compensate(model, g, kept, calib)
    out_idx = {f"{p}.conv": kept[r] for r in kept for p in g.producers[r]}
    in_idx = {c: _input_index(g, segs, kept) for c, segs in g.consumers
              if any(g.find(s) in kept for s in segs)}
    for path in sorted(set(out_idx) | set(in_idx)):
        _slice_conv(model, path, out_idx.get(path), in_idx.get(path))
    for r in kept:
        for p in g.producers[r]:
            _slice_bn(model, f"{p}.bn", kept[r])
    for layer in model.model:
        if hasattr(layer, "np"):
            layer.np = sum(x.numel() for x in layer.parameters())
    model.channel_plan = _compose(getattr(model, "channel_plan", None), plan)
    return model


def apply_channel_plan(model: nn.Module, plan: ChannelPlan | dict,
                       calib: Any = None) -> nn.Module:
    """A copy of `model` with the plan's channels removed (plan relative to `model`'s shapes).

    Each removed channel's mean value is folded into its consumers (BN running mean or
    Detect bias); the means come from `calib` images when given, else from the BN statistics.

    The result's `.channel_plan` is the plan relative to the yaml architecture (composed with
    any earlier pruning): save `.channel_plan.as_dict()` with the weights and use
    `rebuild_from_plan` to get the same shapes back.
    """
    return _apply_inplace(copy.deepcopy(model), ChannelPlan.from_dict(plan), calib=calib)


def rebuild_from_plan(model_yaml: dict | str, nc: int | None,
                      plan: ChannelPlan | dict) -> nn.Module:
    """Build the yaml's model and shrink it to the plan's shapes, ready for load_state_dict."""
    from .yolo import build_model

    # No compensation: every tensor is about to be overwritten by the checkpoint's.
    return _apply_inplace(build_model(model_yaml, nc=nc), ChannelPlan.from_dict(plan), False)
