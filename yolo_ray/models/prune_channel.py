"""Structured channel pruning: channel groups, importance, plans and their application."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

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


@dataclass
class _Graph:
    """Channel spaces: sets of channels that must be removed together (union-find)."""

    parent: list[int] = field(default_factory=list)
    size: list[int | None] = field(default_factory=list)
    locked: list[bool] = field(default_factory=list)
    producers: dict[int, list[str]] = field(default_factory=dict)  # space -> Conv block paths
    consumers: list[tuple[str, list[int]]] = field(default_factory=list)  # Conv2d path, inputs
    origin: list[str | None] = field(default_factory=list)  # Conv block that wrote the space
    terms: dict[int, list[int]] = field(default_factory=dict)  # spaces summed into this tensor
    where: dict[int, str] = field(default_factory=dict)  # space -> module whose output it is

    def new(self, size: int | None, producer: str | None = None, locked: bool = False) -> int:
        s = len(self.parent)
        self.parent.append(s)
        self.size.append(size)
        self.locked.append(locked or size is None)
        self.producers[s] = [producer] if producer else []
        self.origin.append(producer)
        self.terms[s] = [s]
        return s

    def residual(self, a: int, b: int) -> int:
        """The space of `a + b` (a residual add): one channel set shared by a, b and the sum."""
        s = self.new(self.size[a])
        self.terms[s] = self.terms[a] + self.terms[b]
        self.union(a, b)
        self.union(a, s)
        return s

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.producers[ra] += self.producers.pop(rb)
        self.locked[ra] = self.locked[ra] or self.locked[rb] or self.size[ra] != self.size[rb]

    def lock(self, spaces: list[int]) -> None:
        for s in spaces:
            self.locked[self.find(s)] = True

    def consume(self, conv_path: str, segments: list[int]) -> None:
        if any(self.size[s] is None for s in segments):
            self.lock(segments)  # unknown widths: offsets of the other segments are unknown
        self.consumers.append((conv_path, list(segments)))


def _unit(g: _Graph, path: str, m: nn.Module, ins: list[int]) -> int:
    """A Conv block (conv → bn → act): consumes `ins`, produces one new space."""
    conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
    if not isinstance(conv, nn.Conv2d):
        g.lock(ins)
        return g.new(None)
    g.consume(f"{path}.conv", ins)
    ok = conv.groups == 1 and isinstance(bn, nn.BatchNorm2d)
    if conv.groups != 1:
        g.lock(ins)
    s = g.new(conv.out_channels, path if ok else None, locked=not ok)
    g.where[s] = path
    return s


def _c3(g: _Graph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    cur, b = _unit(g, f"{path}.cv1", m.cv1, ins), _unit(g, f"{path}.cv2", m.cv2, ins)
    for j, bott in enumerate(m.m):
        h = _unit(g, f"{path}.m.{j}.cv1", bott.cv1, [cur])
        out = _unit(g, f"{path}.m.{j}.cv2", bott.cv2, [h])
        # x + cv2(cv1(x)): both sides keep the same channels
        if getattr(bott, "add", False):
            cur = g.residual(cur, out)
            g.where[cur] = f"{path}.m.{j}"
        else:
            cur = out
    return [_unit(g, f"{path}.cv3", m.cv3, [cur, b])]


def _bottleneck(g: _Graph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    out = _unit(g, f"{path}.cv2", m.cv2, [_unit(g, f"{path}.cv1", m.cv1, ins)])
    if getattr(m, "add", False):
        if len(ins) != 1:
            g.lock([*ins, out])
            return [out]
        s = g.residual(ins[0], out)
        g.where[s] = path
        return [s]
    return [out]


def _sppf(g: _Graph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    a = _unit(g, f"{path}.cv1", m.cv1, ins)
    return [_unit(g, f"{path}.cv2", m.cv2, [a, a, a, a])]  # cat(x, pool(x), pool², pool³)


def _detect(g: _Graph, path: str, m: nn.Module, inputs: list[list[int]]) -> list[int]:
    for k in range(len(m.m)):
        g.consume(f"{path}.m.{k}", inputs[k])  # output (na·no) never pruned
    return []


def _build_graph(model: nn.Module) -> _Graph:
    g, outs = _Graph(), {}
    image = g.new(None)
    blocks = {"Conv": lambda g, p, m, i: [_unit(g, p, m, i)], "C3": _c3,
              "Bottleneck": _bottleneck, "SPPF": _sppf}
    for i, layer in enumerate(model.model):
        srcs = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        ins = [[image] if (i == 0 and j == -1) else outs[j if j >= 0 else i + j] for j in srcs]
        kind, path = type(layer).__name__, f"model.{i}"
        if kind in blocks and len(ins) == 1:
            outs[i] = blocks[kind](g, path, layer, ins[0])
        elif kind == "Concat" and getattr(layer, "d", 1) == 1:
            outs[i] = [s for segs in ins for s in segs]
        elif kind == "Upsample" and len(ins) == 1:
            outs[i] = ins[0]
        elif kind == "Detect":
            outs[i] = _detect(g, path, layer, ins)
        else:  # unknown layer type: leave everything it touches alone
            g.lock([s for segs in ins for s in segs])
            outs[i] = [g.new(None)]
    return g


def _groups(g: _Graph) -> dict[int, int]:
    """Producer-carrying roots that may be pruned -> width."""
    return {r: g.size[r] for r, ps in g.producers.items()
            if ps and g.find(r) == r and not g.locked[r]}


def _channel_score(block: nn.Module, importance: str) -> torch.Tensor:
    if importance == "bn":
        return block.bn.weight.detach().abs().float().cpu()
    w = block.conv.weight.detach().abs().float().cpu()
    return w.flatten(1).mean(1)  # mean, so blocks with different kernels weigh alike


Moments = dict[int, tuple[torch.Tensor, torch.Tensor]]  # space -> per-channel mean, variance
# Probabilists' Gauss-Hermite rule: E f(z), z ~ N(0, 1)  ≈  Σ w_i f(z_i).
_GH_Z, _GH_W = (torch.tensor(a, dtype=torch.float64) for a in np.polynomial.hermite_e.hermegauss(32))
_GH_W = _GH_W / _GH_W.sum()


@torch.no_grad()
def _moments_from_bn(model: nn.Module, g: _Graph) -> Moments:
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
def _moments_from_data(model: nn.Module, g: _Graph, calib: Any) -> Moments:
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


def _moments(model: nn.Module, g: _Graph, calib: Any = None) -> Moments:
    return _moments_from_data(model, g, calib) if calib is not None else _moments_from_bn(model, g)


@torch.no_grad()
def _perturbation_scores(model: nn.Module, g: _Graph, moments: Moments) -> dict[int, torch.Tensor]:
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
            scale = bn.weight.detach().float().cpu() / (bn.running_var.float().cpu() + bn.eps).sqrt()
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
    g, mods, keep = _build_graph(model), dict(model.named_modules()), {}
    groups = _groups(g)
    if importance in ("perturb", "activation") and groups:
        scores = _perturbation_scores(model, g, _moments(model, g, calib))
    score_of = {r: (scores.get(r, torch.zeros(w)) if importance in ("perturb", "activation")
                    else sum(_channel_score(mods[p], importance) for p in g.producers[r]))
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


def _check_plan(g: _Graph, keep: dict[str, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
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


def _input_index(g: _Graph, segments: list[int], kept: dict[int, tuple[int, ...]]) -> list[int]:
    idx, offset = [], 0
    for s in segments:
        k = kept.get(g.find(s))
        idx += [offset + j for j in (k if k is not None else range(g.size[s]))]
        offset += g.size[s]
    return idx


def _removed_values(g: _Graph, segments: list[int], kept: dict[int, tuple[int, ...]],
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
def _compensate(model: nn.Module, g: _Graph, kept: dict[int, tuple[int, ...]],
                calib: Any = None) -> None:
    """Move removed channels' mean outputs into consumer BN means (or Detect biases)."""
    shifts, moments = [], _moments(model, g, calib)
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
    g = _build_graph(model)
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


