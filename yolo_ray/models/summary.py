"""Model summaries in YOLOv5's format: the layer table and the 'layers, parameters, GFLOPs' line."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """Counts shown in YOLOv5's summary line."""

    layers: int  # len(list(model.modules())), YOLOv5's "layers"
    params: int
    gradients: int  # parameters with requires_grad
    gflops: float  # at the requested image size; 0.0 if it could not be measured


def model_info(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> ModelInfo:
    """Count layers, parameters, trainable parameters and GFLOPs at `imgsz`."""
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelInfo(len(list(model.modules())), params, grads, count_gflops(model, imgsz))


@torch.no_grad()
def count_gflops(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """2 × multiply-accumulates of one image of size `imgsz`.

    Counted: Conv2d/Linear weights (+1 per output for a bias) and BatchNorm (one scale-and-shift
    per element, what it costs once folded into the conv), so fused and unfused models agree;
    this reproduces YOLOv5's README (4.5, 16.5, 49.0, 109.1, 205.7 GFLOPs for n…x at 640).
    Like YOLOv5, the forward runs on a stride-sized image and is scaled by area: every conv
    output side is input/stride, so the count scales exactly with h·w.
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    stride = getattr(model, "stride", None)
    side = max(int(stride.max()) if isinstance(stride, torch.Tensor) else 32, 32)
    counted = [m for m in model.modules() if isinstance(m, _COUNTED)]
    first = next((m for m in counted if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        return 0.0
    macs = 0

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * _macs_per_output(m)

    handles = [m.register_forward_hook(hook) for m in counted]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no BN statistics update; restored per module (freeze may set BN to eval)
    try:
        c_in = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
        model(torch.zeros(1, c_in, side, side, device=first.weight.device,
                          dtype=first.weight.dtype))
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes:
            m.training = mode
    return 2 * macs / 1e9 * (h / side) * (w / side)


_COUNTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def _macs_per_output(m: nn.Module) -> int:
    if isinstance(m, nn.BatchNorm2d):
        return 1
    fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.in_features
    return fan_in + (m.bias is not None)


def format_summary(info: ModelInfo, name: str = "Model") -> str:
    """'YOLOv5s summary: 214 layers, 7,235,389 parameters, 7,235,389 gradients, 16.5 GFLOPs'."""
    flops = f", {info.gflops:.1f} GFLOPs" if info.gflops else ""
    return (f"{name} summary: {info.layers} layers, {info.params:,} parameters, "
            f"{info.gradients:,} gradients{flops}")


def format_layer_table(model: nn.Module) -> str:
    """YOLOv5's build table: index, from, repeats, params, module path, constructor args."""
    lines = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}"]
    for m in model.model:
        spec = getattr(m, "spec", None)
        n = spec.n if spec is not None else 1
        args = list(spec.args) if spec is not None else []
        params = sum(p.numel() for p in m.parameters())
        lines.append(f"{m.i:>3}{m.f!s:>18}{n:>3}{params:10.0f}  {m.type:<40}{args!s:<30}")
    return "\n".join(lines)
