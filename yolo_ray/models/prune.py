"""Pruning: YOLOv5's per-layer L1, a global-L1 variant and structured channel pruning."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .freeze import is_fused

METHODS = ("l1", "global-l1", "channel")
IMPORTANCE = ("bn", "l1")
PLAN_FORMAT = "yolo-ray-channel-plan/1"


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


# ============================================================================ channel plan
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
    return g.new(conv.out_channels, path if ok else None, locked=not ok)


def _c3(g: _Graph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    cur, b = _unit(g, f"{path}.cv1", m.cv1, ins), _unit(g, f"{path}.cv2", m.cv2, ins)
    for j, bott in enumerate(m.m):
        h = _unit(g, f"{path}.m.{j}.cv1", bott.cv1, [cur])
        out = _unit(g, f"{path}.m.{j}.cv2", bott.cv2, [h])
        # x + cv2(cv1(x)): both sides keep the same channels
        cur = g.residual(cur, out) if getattr(bott, "add", False) else out
    return [_unit(g, f"{path}.cv3", m.cv3, [cur, b])]


def _bottleneck(g: _Graph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    out = _unit(g, f"{path}.cv2", m.cv2, [_unit(g, f"{path}.cv1", m.cv1, ins)])
    if getattr(m, "add", False):
        if len(ins) != 1:
            g.lock([*ins, out])
            return [out]
        return [g.residual(ins[0], out)]
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


def _n_keep(width: int, amount: float, divisor: int) -> int:
    n = max(1, width - round(amount * width))
    return min(width, math.ceil(n / divisor) * divisor)


def plan_channel_prune(model: nn.Module, amount: float, importance: str = "bn",
                       divisor: int = 1) -> ChannelPlan:
    """Choose output channels to keep in every prunable channel group (pure).

    A group is a set of conv outputs that must share channels: a plain conv output, or a
    C3 chain joined by residual adds (cv1 and every Bottleneck.cv2). Each group keeps
    max(1, width − round(amount·width)) channels (rounded up to `divisor`) with the largest
    summed importance: BN |γ| ('bn', network-slimming style) or mean |w| per filter ('l1').
    Consumers (next convs, C3.cv3's and SPPF.cv2's concatenated inputs, Concat layers,
    Detect's input convs) lose the matching input channels; Detect outputs never change.
    The image input, grouped convs and unknown layer types are left alone.
    """
    check_prune_args(amount, "channel")
    if importance not in IMPORTANCE:
        raise ConfigError(
            f"channel importance {importance!r} is not one of {', '.join(IMPORTANCE)}")
    if not _conv_weights(model):
        raise ConfigError("cannot prune: the model has no Conv2d layers")
    g, mods, keep = _build_graph(model), dict(model.named_modules()), {}
    for root, width in _groups(g).items():
        n = _n_keep(width, amount, divisor)
        if n >= width:
            continue
        score = sum(_channel_score(mods[p], importance) for p in g.producers[root])
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


def _removed_values(model: nn.Module, g: _Graph, segments: list[int],
                    kept: dict[int, tuple[int, ...]]) -> torch.Tensor:
    """Per consumer input channel: what a removed channel carried, taken as act(β); else 0.

    A channel with BN |γ| ≈ 0 outputs the constant act(β) (summed along a residual chain);
    folding that constant into the consumer keeps its output (Network Slimming leaves it out).
    """
    vals = []
    for s in segments:
        v, k = torch.zeros(g.size[s]), kept.get(g.find(s))
        if k is not None:
            drop = torch.ones(g.size[s])
            drop[list(k)] = 0.0
            for t in g.terms[s]:
                if g.origin[t] is not None:
                    blk = model.get_submodule(g.origin[t])
                    v += blk.act(blk.bn.bias.detach().float().cpu().clone()) * drop
        vals.append(v)
    return torch.cat(vals)


@torch.no_grad()
def _compensate(model: nn.Module, g: _Graph, kept: dict[int, tuple[int, ...]]) -> None:
    """Move removed channels' constant outputs into consumer BN means (or Detect biases)."""
    shifts = []
    for path, segs in g.consumers:
        if any(g.find(s) in kept for s in segs):
            conv = model.get_submodule(path)
            w = conv.weight.detach().float().cpu().sum((2, 3))
            shift = w @ _removed_values(model, g, segs, kept)
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


def _apply_inplace(model: nn.Module, plan: ChannelPlan, compensate: bool = True) -> nn.Module:
    g = _build_graph(model)
    kept = _check_plan(g, plan.keep)
    if compensate:
        _compensate(model, g, kept)
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


def apply_channel_plan(model: nn.Module, plan: ChannelPlan | dict) -> nn.Module:
    """A copy of `model` with the plan's channels removed (plan relative to `model`'s shapes).

    The result's `.channel_plan` is the plan relative to the yaml architecture (composed with
    any earlier pruning): save `.channel_plan.as_dict()` with the weights and use
    `rebuild_from_plan` to get the same shapes back.
    """
    return _apply_inplace(copy.deepcopy(model), ChannelPlan.from_dict(plan))


def rebuild_from_plan(model_yaml: dict | str, nc: int | None,
                      plan: ChannelPlan | dict) -> nn.Module:
    """Build the yaml's model and shrink it to the plan's shapes, ready for load_state_dict."""
    from .yolo import build_model

    # No compensation: every tensor is about to be overwritten by the checkpoint's.
    return _apply_inplace(build_model(model_yaml, nc=nc), ChannelPlan.from_dict(plan), False)


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

    def summary(self) -> str:
        """One log line: before → after."""
        return (f"{self.before.params:,} → {self.report.params:,} parameters, "
                f"sparsity {self.report.sparsity_all:.3g} (conv {self.report.sparsity_conv:.3g})"
                + (f", {self.before.gflops:.2f} → {self.report.gflops:.2f} GFLOPs"
                   if self.report.gflops is not None and self.before.gflops is not None else ""))


def prune_model(model: nn.Module, amount: float, method: str = "l1", keep_masks: bool = False,
                importance: str = "bn", imgsz: int | None = 640) -> PruneResult:
    """Plan and apply pruning in one call; `model` itself is not modified.

    Args:
        keep_masks: for 'l1'/'global-l1' fine-tuning (`--prune-at start`): the result carries
            a `MaskKeeper` bound to the new model; call `mask_keeper.apply()` after every
            optimizer step. Channel pruning needs no masks (removed channels cannot regrow).
        imgsz: image size for the GFLOPs in the reports (None: skip).
    """
    check_prune_args(amount, method)
    before = sparsity_report(model, imgsz)
    if method == "channel":
        new = apply_channel_plan(model, plan_channel_prune(model, amount, importance))
        return PruneResult(new, before, sparsity_report(new, imgsz), method, amount,
                           plan=new.channel_plan.as_dict())
    masks = plan_unstructured(model, amount, method)
    prior = getattr(model, "channel_plan", None)  # an earlier channel pruning stays in force
    plan = prior.as_dict() if prior else None
    if keep_masks:
        new = copy.deepcopy(model)
        keeper = MaskKeeper(new, masks)
        return PruneResult(new, before, sparsity_report(new, imgsz), method, amount, plan, keeper)
    new, report = apply_masks(model, masks, imgsz)
    return PruneResult(new, before, report, method, amount, plan)
