"""Least-squares reconstruction after channel pruning: refit each conv to the unpruned outputs.

Removing channels changes every later layer's input. Layer by layer in forward order, each conv
of the pruned model is refitted (weights and a constant) so that, on calibration images and
given the inputs the *pruned* network now feeds it, its output matches the unpruned conv's
output on the channels it kept (He et al. 2017, "Channel pruning for accelerating very deep
neural networks"; ThiNet). Earlier layers' errors are therefore corrected, not compounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@dataclass(frozen=True)
class LayerFit:
    """One refitted conv: its path and the residual share of the target's energy."""

    path: str
    error_before: float   # ‖Y − Ŷ‖² / ‖Y − mean(Y)‖² with the weights the surgery left
    error_after: float    # the same after the least-squares fit


def _batches(calib: Any) -> list[torch.Tensor]:
    return [calib] if isinstance(calib, torch.Tensor) else list(calib)


def _capture(model: nn.Module, path: str, x: torch.Tensor, want_input: bool) -> torch.Tensor:
    """The input (or output) of module `path` on `x`, stopping the forward pass right there."""
    box: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        box["v"] = (args[0] if want_input else out).detach()
        raise _Stop

    h = model.get_submodule(path).register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return box["v"]


def conv_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Paths of the model's Conv2d modules in the order a forward pass calls them."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        model(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return order


def _columns(x: torch.Tensor, conv: nn.Conv2d, bias: bool) -> torch.Tensor:
    """im2col of `x` for `conv` as (Cin·kh·kw [+1], N·L) float64, a row of ones if `bias`."""
    cols = F.unfold(x.float(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    if bias:
        cols = torch.cat([cols, torch.ones_like(cols[:, :1])], 1)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1).double()


def _kept(path: str, keep: dict[str, tuple[int, ...]]) -> list[int] | None:
    """The output channels the plan kept for conv `path` (a Conv block's `.conv`), relative
    to the unpruned model; None when it keeps them all (or it is no block's conv: Detect)."""
    idx = keep.get(path.rpartition(".")[0]) if path.endswith(".conv") else None
    return list(idx) if idx else None


def _block_bn(model: nn.Module, path: str) -> nn.BatchNorm2d | None:
    if not path.endswith(".conv"):
        return None
    bn = getattr(model.get_submodule(path.rpartition(".")[0]), "bn", None)
    return bn if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None else None


@torch.no_grad()
def _fit_conv(original: nn.Module, pruned: nn.Module, path: str, out_idx: list[int] | None,
              batches: list[torch.Tensor], ridge: float) -> LayerFit:
    conv: nn.Conv2d = pruned.get_submodule(path)
    bn = _block_bn(pruned, path)
    # A constant goes into the conv's bias, or into the BN that follows it (its running mean).
    has_const = conv.bias is not None or bn is not None
    d = conv.weight[0].numel() + int(has_const)
    f64 = dict(dtype=torch.float64, device=conv.weight.device)  # the model's device (GPU too)
    gram = torch.zeros(d, d, **f64)
    cross = torch.zeros(len(out_idx) if out_idx is not None else conv.out_channels, d, **f64)
    y_sum = y_sq = torch.zeros((), **f64)
    n = 0
    for x in batches:
        cols = _columns(_capture(pruned, path, x, True), conv, has_const)
        y = _capture(original, path, x, False)
        y = (y[:, out_idx] if out_idx is not None else y).transpose(0, 1).flatten(1).double()
        gram += cols @ cols.T
        cross += y @ cols.T
        y_sum, y_sq, n = y_sum + y.sum(1), y_sq + (y * y).sum(1), n + y.shape[1]
    w0 = conv.weight.detach().flatten(1).double()
    const0 = torch.zeros(w0.shape[0], 1, **f64)
    if conv.bias is not None:
        const0 = conv.bias.detach().double()[:, None]
    elif bn is not None:  # the surgery's mean compensation, as a constant added before the BN
        mu_orig = _block_bn(original, path).running_mean.double()
        mu_orig = mu_orig[out_idx] if out_idx is not None else mu_orig
        const0 = (mu_orig - bn.running_mean.double())[:, None]
    start = torch.cat([w0, const0], 1) if has_const else w0
    # Ridge towards the surgery's weights: layers with few positions (deep, low resolution)
    # would otherwise overfit the calibration images.
    reg = ridge * gram.diagonal().mean().clamp_min(1e-12)
    a = gram + reg * torch.eye(d, **f64)
    fit = torch.linalg.solve(a, (cross + reg * start).T).T
    total = (y_sq - y_sum * y_sum / n).sum().clamp_min(1e-12)

    def sse(w: torch.Tensor) -> torch.Tensor:  # Σ‖y − w·cols‖² from the accumulated moments
        return (y_sq.sum() - 2 * (w * cross).sum() + ((w @ gram) * w).sum()).clamp_min(0)

    before, after = float(sse(start) / total), float(sse(fit) / total)
    if after > before:  # never make a layer worse than the surgery left it
        fit = start
        after = before
    conv.weight.copy_(fit[:, :conv.weight[0].numel()].reshape_as(conv.weight))
    if conv.bias is not None:
        conv.bias.copy_(fit[:, -1])
    elif bn is not None:
        _restate_bn(bn, _block_bn(original, path), out_idx, fit, gram, n)
    return LayerFit(path, before, after)


def _restate_bn(bn: nn.BatchNorm2d, bn_orig: nn.BatchNorm2d, out_idx: list[int] | None,
                fit: torch.Tensor, gram: torch.Tensor, n: int) -> None:
    """Give the BN after a refitted conv the statistics its output now has.

    The fit defines out = γ(ŷ + c − μ)/σ + β (ŷ = the new conv output, c its fitted constant,
    μ, σ the unpruned BN's). A least-squares ŷ has less variance than the unpruned output, so
    a training-mode BN (batch statistics) would compute a different function and fine-tuning
    would start from a worse net than the one validated. Same function, restated with ŷ's own
    mean m and variance s² (measured on the calibration images): running stats m, s²;
    γ' = γ·√(s² + eps)/σ; β' = β + γ(m + c − μ)/σ.
    """
    pick = (lambda t: t[out_idx]) if out_idx is not None else (lambda t: t)
    mu, var = pick(bn_orig.running_mean).double(), pick(bn_orig.running_var).double()
    sigma = (var + bn.eps).sqrt()
    w = fit.clone()
    w[:, -1] = 0.0  # ŷ without the constant
    m = (w @ gram[:, -1]) / n  # gram's last row/column: the sums of the columns (ones-row)
    s2 = (((w @ gram) * w).sum(1) / n - m * m).clamp_min(0)
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    new_sigma = (s2 + bn.eps).sqrt()
    ref = bn.running_mean
    bn.bias.copy_((beta + gamma * (m + fit[:, -1] - mu) / sigma).to(ref))
    bn.weight.copy_((gamma * new_sigma / sigma).to(ref))
    bn.running_mean.copy_(m.to(ref))
    bn.running_var.copy_(s2.to(ref))


def reconstruct_pruned(original: nn.Module, pruned: nn.Module, keep: dict[str, tuple[int, ...]],
                       calib: Any, ridge: float = 1e-3,
                       log: Any = None) -> list[LayerFit]:
    """Refit `pruned`'s convs in place, in forward order, to `original`'s outputs on `calib`.

    `keep` is the plan that turned `original` into `pruned` (Conv block path -> kept output
    channels, relative to `original`). `calib`: a float image batch (N, 3, H, W) in [0, 1]
    or an iterable of batches. Both models are put in eval mode for the fit and given back
    in the mode they were in. Grouped convs and the first conv (it sees the image itself)
    are left as they are.
    """
    batches = _batches(calib)
    if not batches:
        raise ValueError("reconstruction needs at least one calibration batch")
    modes = (original.training, pruned.training)
    original.eval()
    pruned.eval()
    p0 = next(pruned.parameters())
    batches = [b.to(p0.device, p0.dtype) for b in batches]
    fits = []
    try:
        for path in conv_order(pruned, batches[0])[1:]:
            if pruned.get_submodule(path).groups != 1:
                continue
            fits.append(_fit_conv(original, pruned, path, _kept(path, keep), batches, ridge))
            if log is not None:
                log(fits[-1])
    finally:
        original.train(modes[0])
        pruned.train(modes[1])
    return fits


@torch.no_grad()
def block_residuals(original: nn.Module, pruned: nn.Module, keep: dict[str, tuple[int, ...]],
                    paths: Iterable[str], images: Any) -> dict[str, float]:
    """Residual share ‖Y − Ŷ‖² / ‖Y − mean(Y)‖² of each layer's output, pruned vs unpruned.

    `paths`: refitted conv paths (`LayerFit.path`); a Conv block's conv is compared after its
    BN and activation (the block's output, on the channels `keep` kept), any other conv
    (Detect's) as it is. On images the refit did not see, this is what tells a calibration
    set that was large enough from one the deep, low-resolution layers memorised.
    """
    targets = {(path.rpartition(".")[0] if path.endswith(".conv") else path): _kept(path, keep)
               for path in paths}
    err = dict.fromkeys(targets, 0.0)
    moments: dict[str, list] = {}   # per channel: ΣY, ΣY², count (exact over all batches)
    modes = (original.training, pruned.training)
    original.eval()
    pruned.eval()
    device = next(pruned.parameters()).device
    try:
        for x in _batches(images):
            x = x.to(device)
            ours, theirs = _outputs(pruned, targets, x), _outputs(original, targets, x)
            for b, idx in targets.items():
                y = (theirs[b][:, idx] if idx is not None else theirs[b]).double()
                err[b] += float(((y - ours[b].double()) ** 2).sum())
                y_ch = y.transpose(0, 1).flatten(1)
                s1, s2, n = moments.get(b, (0.0, 0.0, 0))
                moments[b] = [s1 + y_ch.sum(1), s2 + (y_ch * y_ch).sum(1), n + y_ch.shape[1]]
    finally:
        original.train(modes[0])
        pruned.train(modes[1])
    total = {b: float((s2 - s1 * s1 / n).sum()) for b, (s1, s2, n) in moments.items()}
    return {b: err[b] / max(total[b], 1e-12) for b in targets}


def _outputs(model: nn.Module, paths: Iterable[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of the modules at `paths` in one forward pass of `model` on `x`."""
    box: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, _a, out, p=p: box.__setitem__(p, out.detach())) for p in paths]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return box


def calibration_batches(images: Iterable[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first `n` images of uint8 (or [0, 1] float) batches, as float batches in [0, 1]."""
    out, got = [], 0
    for b in images:
        b = b.float() / 255.0 if not b.is_floating_point() else b
        out.append(b[: n - got])
        got += len(out[-1])
        if got >= n:
            break
    return out
