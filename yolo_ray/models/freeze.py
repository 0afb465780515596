"""Layer freezing: YOLOv5's `--freeze` selection (pure) plus an explicit BatchNorm policy."""

from __future__ import annotations

import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

# Named forms accepted by `--freeze` besides integers. 'backbone' is len(yaml['backbone'])
# (10 for the five standard yamls); 'all-but-detect' (alias 'all-but-head', YOLOv5's
# "--freeze 24" recipe) freezes every layer except the last one, the Detect layer.
NAMED_FREEZE = ("backbone", "all-but-detect", "all-but-head")


@dataclass(frozen=True)
class FreezeReport:
    """What `apply_freeze` did.

    Attributes:
        frozen_layers: frozen module indices (sorted).
        trainable_params: number of trainable parameter elements left.
        frozen_params: number of frozen parameter elements.
        no_grad_prefix: k such that layers 0..k-1 run without autograd (0 = none).
        frozen_names: names of the frozen parameters (YOLOv5 'model.{i}.' prefixes).
        bn_stats_fixed: True if frozen BatchNorm layers keep their running statistics.
        fused_convs: number of frozen Conv+BN pairs folded into one conv for speed.
    """

    frozen_layers: tuple[int, ...]
    trainable_params: int
    frozen_params: int
    no_grad_prefix: int
    frozen_names: tuple[str, ...] = ()
    bn_stats_fixed: bool = True
    fused_convs: int = 0


# ----------------------------------------------------------------------------- pure selection
def _as_int(value: str | int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"--freeze: expected an integer or one of {NAMED_FREEZE}, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"--freeze: {value!r} is not an integer layer count/index nor one of "
            f"{', '.join(NAMED_FREEZE)}") from None


def _named_count(name: str, model_yaml: dict | None, n_layers: int) -> int:
    if name == "backbone":
        if not model_yaml or not isinstance(model_yaml.get("backbone"), list):
            raise ConfigError("--freeze backbone: the model yaml has no 'backbone' list to count")
        return len(model_yaml["backbone"])
    return n_layers - 1  # all-but-detect / all-but-head: everything except the final layer


def parse_freeze_spec(
    values: Sequence[str | int], model_yaml: dict | None, n_layers: int
) -> tuple[int, ...]:
    """Turn `--freeze` values into the sorted tuple of frozen layer indices.

    One value N freezes layers 0..N-1 (0 = nothing), as YOLOv5 does; two or more values
    freeze exactly those indices (so a single index alone cannot be expressed, as in
    YOLOv5). A lone named form ('backbone', 'all-but-detect'/'all-but-head') stands for a
    count.

    Raises:
        ConfigError: negative values, indices/counts beyond the model, unknown names, or a
            selection that freezes every layer (nothing left to train).
    """
    if isinstance(values, (str, int)):
        values = [values]
    vals = list(values)
    if not vals:
        return ()
    if len(vals) == 1:
        v = vals[0]
        named = isinstance(v, str) and v.strip().lower() in NAMED_FREEZE
        count = _named_count(v.strip().lower(), model_yaml, n_layers) if named else _as_int(v)
        if count < 0:
            raise ConfigError(f"--freeze: layer count must be >= 0, got {count}")
        if count > n_layers:
            raise ConfigError(
                f"--freeze {v}: the model has only {n_layers} layers (0..{n_layers - 1})")
        indices = tuple(range(count))
    else:
        ints = [_as_int(v) for v in vals]
        bad = [i for i in ints if i < 0 or i >= n_layers]
        if bad:
            raise ConfigError(
                f"--freeze: layer indices {bad} are outside the model's 0..{n_layers - 1}")
        indices = tuple(sorted(set(ints)))
    if n_layers and len(indices) >= n_layers:
        raise ConfigError(
            f"--freeze: freezing all {n_layers} layers leaves nothing to train "
            f"(use at most {n_layers - 1}, e.g. {n_layers - 1} keeps only Detect trainable)")
    return indices


def _prefixes(indices: Iterable[int]) -> tuple[str, ...]:
    # The trailing dot keeps 'model.1.' from matching 'model.10.'.
    return tuple(f"model.{i}." for i in indices)


def select_frozen(model: nn.Module | Iterable[str], indices: Iterable[int]) -> list[str]:
    """Names of the parameters YOLOv5 freezes for these layer indices (pure).

    YOLOv5 semantics: a parameter is frozen if any 'model.{i}.' prefix is a substring of its
    name. `model` may be a module or an iterable of parameter names.
    """
    if isinstance(model, nn.Module):
        names = [n for n, _ in model.named_parameters()]
    else:
        names = list(model)
    prefixes = _prefixes(indices)
    return [n for n in names if any(p in n for p in prefixes)]


# ----------------------------------------------------------------------------- BN policy
def _keep_bn_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: a frozen BatchNorm always normalises with (and keeps) running stats.

    A hook, not a `train()` override, because it survives any `model.train()` call (ours,
    the trainer's, EMA copies via deepcopy) without owning DetectionModel.
    """
    module.training = False


def _bn_hook_keys(bn: nn.Module) -> list[int]:
    return [k for k, h in bn._forward_pre_hooks.items() if h is _keep_bn_eval]


def _set_bn_fixed(bn: nn.Module, fixed: bool) -> None:
    for k in _bn_hook_keys(bn):
        del bn._forward_pre_hooks[k]
    if fixed:
        bn.register_forward_pre_hook(_keep_bn_eval)
        bn.eval()


def is_bn_fixed(bn: nn.Module) -> bool:
    """True if `apply_freeze` pinned this BatchNorm's running statistics."""
    return bool(_bn_hook_keys(bn))


def set_train_mode(model: nn.Module, report: FreezeReport | None = None,
                   training: bool = True) -> nn.Module:
    """Call instead of `model.train()`: train mode, but BN layers fixed by `apply_freeze` stay eval.

    The BN pre-hook already enforces this at forward time (so a plain `model.train()` is
    safe too); this just makes the `.training` flags read correctly in between. `report`
    is accepted for symmetry with the trainer's call and not needed.
    """
    model.train(training)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and is_bn_fixed(m):
            m.eval()
    return model


# ----------------------------------------------------------------------------- fused frozen conv
def _is_conv_bn(m: nn.Module) -> bool:
    return (isinstance(getattr(m, "conv", None), nn.Conv2d)
            and isinstance(getattr(m, "bn", None), nn.BatchNorm2d) and hasattr(m, "act"))


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one conv equal to conv → BN(eval): W·γ/√(σ²+ε), β − γμ/√(σ²+ε)."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight * scale.reshape(-1, 1, 1, 1)
        b = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            b = b + conv.bias * scale
    return w.detach(), b.detach()


def _fold_key(m: nn.Module) -> tuple:
    # In-place updates (optimizer, EMA lerp, load_state_dict's copy_) bump `_version`;
    # .to()/resize/replacement change data_ptr. Either invalidates the cached fold.
    ts = (m.conv.weight, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var)
    return tuple((t.data_ptr(), t._version, t.dtype) for t in ts) + (m.bn.eps,)


def _fused_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Replacement forward for a frozen Conv whose BN is fixed: one conv with folded BN."""
    if not isinstance(self.bn, nn.BatchNorm2d):  # DetectionModel.fuse() already folded it
        return type(self).forward(self, x)
    key = _fold_key(self)
    cache = self.__dict__.get("_yr_fold")
    if cache is None or cache[0] != key:
        cache = (key, *fold_conv_bn(self.conv, self.bn))
        self.__dict__["_yr_fold"] = cache  # plain attribute: never in state_dict
    c = self.conv
    return self.act(F.conv2d(x, cache[1], cache[2], c.stride, c.padding, c.dilation, c.groups))


def _set_fused(m: nn.Module, fused: bool) -> None:
    m.__dict__.pop("_yr_fold", None)
    if fused:
        m.forward = types.MethodType(_fused_forward, m)
    elif "forward" in m.__dict__:
        del m.forward  # back to the class's forward


def is_fused(m: nn.Module) -> bool:
    """True if `apply_freeze` replaced this Conv's forward by the folded conv."""
    fwd = m.__dict__.get("forward")
    return fwd is not None and getattr(fwd, "__func__", None) is _fused_forward


def refresh(model: nn.Module, report: FreezeReport | None = None) -> int:
    """Drop cached folded weights (e.g. after `load_state_dict`); returns how many were dropped.

    Not required for correctness (the cache is keyed on tensor versions and storage), but
    frees the stale copies at once.
    """
    n = 0
    for m in model.modules():
        n += m.__dict__.pop("_yr_fold", None) is not None
    return n


# ----------------------------------------------------------------------------- apply
def _layers(model: nn.Module) -> list[nn.Module]:
    seq = getattr(model, "model", None)
    if not isinstance(seq, nn.Sequential):
        raise ConfigError("freeze: expected a DetectionModel with a `.model` nn.Sequential")
    return list(seq)


def _first_trainable_layer(layers: list[nn.Module]) -> int:
    for i, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return i
    return len(layers)


def _reset(layers: list[nn.Module]) -> None:
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                _set_bn_fixed(m, False)
            if is_fused(m):
                _set_fused(m, False)


def _fix_layer(layer: nn.Module, fuse: bool) -> int:
    n_fused = 0
    for m in layer.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _set_bn_fixed(m, True)
        if fuse and _is_conv_bn(m):
            _set_fused(m, True)
            n_fused += 1
    return n_fused


def apply_freeze(model: nn.Module, indices: Iterable[int],
                 bn_stats_fixed: bool = True) -> FreezeReport:
    """Freeze layers in place (call after loading weights, before building the optimizer).

    Every parameter first gets requires_grad=True, then those selected by `select_frozen`
    get False (YOLOv5). The contiguous frozen prefix 0..k-1 runs without autograd
    (`model.no_grad_prefix = k`), which changes no value, only memory and time.

    Args:
        bn_stats_fixed: True (default) keeps frozen layers' BatchNorm in eval mode whatever
            `model.train()` says (running stats never change) and folds their Conv+BN into a
            single conv at forward time (state_dict keys untouched; the fold is re-computed
            whenever the weights are reloaded, moved or modified). False reproduces YOLOv5
            exactly: frozen BN layers keep updating running stats in train mode.

    Raises:
        ConfigError: indices outside the model, or nothing left trainable.
    """
    layers = _layers(model)
    idx = tuple(sorted(set(int(i) for i in indices)))
    bad = [i for i in idx if i < 0 or i >= len(layers)]
    if bad:
        raise ConfigError(
            f"--freeze: layer indices {bad} are outside the model's 0..{len(layers) - 1}")
    frozen = set(select_frozen(model, idx))
    params = list(model.named_parameters())
    n_frozen = sum(p.numel() for n, p in params if n in frozen)
    n_train = sum(p.numel() for n, p in params if n not in frozen)
    if n_train == 0:  # checked before touching the model
        raise ConfigError(
            f"--freeze {list(idx)}: every parameter would be frozen; nothing left to train")
    for name, p in params:
        p.requires_grad_(name not in frozen)
    _reset(layers)
    n_fused = sum(_fix_layer(layers[i], fuse=True) for i in idx) if bn_stats_fixed else 0
    k = _first_trainable_layer(layers) if idx else 0
    model.no_grad_prefix = k
    return FreezeReport(idx, n_train, n_frozen, k, tuple(sorted(frozen)), bn_stats_fixed, n_fused)


def format_freeze(report: FreezeReport) -> str:
    """One log line in the spirit of YOLOv5's 'freezing ...' messages."""
    if not report.frozen_layers:
        return "freeze: nothing frozen"
    bn = ("BN stats fixed, Conv+BN folded" if report.bn_stats_fixed
          else "BN stats update (YOLOv5 mode)")
    return (f"freeze: layers {list(report.frozen_layers)} ({report.frozen_params:,} params frozen, "
            f"{report.trainable_params:,} trainable); layers 0..{report.no_grad_prefix - 1} run "
            f"without autograd; {bn}")
