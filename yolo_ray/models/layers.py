"""YOLOv5 building blocks: Conv, Bottleneck, C3, SPPF, Concat and the Detect head."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# Detect returns the per-level raw maps when training, (decoded, raw) in eval mode.
DetectOutput = list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]

# YOLOv5's BatchNorm settings (set by its initialize_weights); numerical parity needs them.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int | Sequence[int], p: int | Sequence[int] | None = None,
            d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size for odd kernels ('same'), per dimension."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_activation(act: bool | nn.Module) -> nn.Module:
    """True → SiLU (YOLOv5's default), False/None → Identity, a module → itself."""
    if act is True:
        return nn.SiLU(inplace=True)
    if isinstance(act, nn.Module):
        return act
    return nn.Identity()


class Conv(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → activation; `fuse()` folds the BN into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None,
                 g: int = 1, d: int = 1, act: bool | nn.Module = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:  # None after fuse()
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold BN into a biased conv (inference only); the BN submodule is removed."""
        if self.bn is None:
            return
        self.conv = fuse_conv_and_bn(self.conv, self.bn)
        self.bn = None


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """W' = W·γ/√(var+eps), b' = β + (b − μ)·γ/√(var+eps); returns a new frozen Conv2d."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.requires_grad_(False)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 conv, with a residual add when shapes allow it."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1,
                 e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with 3 convs: cv3(cat[m(cv1(x)), cv2(x)])."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: one k×k max-pool applied 3× in series (= SPP(5,9,13))."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along `d` (channels by default)."""

    def __init__(self, d: int = 1) -> None:
        super().__init__()
        self.d = d

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """YOLOv5 head: one 1×1 conv per level; decodes boxes to pixels in eval mode.

    `anchors` (nl, na, 2) is a persistent buffer in **grid units** once the model is built
    (pixels / stride); `stride` is a non-persistent buffer so it follows `.to(device)` but
    stays out of the state_dict, as in YOLOv5.
    """

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (),
                 ch: Sequence[int] = ()) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # x, y, w, h, obj, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", a)
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._grids: dict[tuple, torch.Tensor] = {}  # (level, ny, nx, device, dtype) -> grid

    def forward(self, xs: list[torch.Tensor]) -> DetectOutput:
        """Training: list of (bs, na, ny, nx, no). Eval: (pred (bs, N, no) in pixels, list)."""
        out = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            out.append(x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return out
        return torch.cat([self._decode(i, x) for i, x in enumerate(out)], 1), out

    def _decode(self, i: int, x: torch.Tensor) -> torch.Tensor:
        bs, _, ny, nx, _ = x.shape
        y = x.sigmoid()
        grid = self._grid(i, ny, nx, x.device, x.dtype)
        # Anchors are recomputed each call (tiny) so AutoAnchor edits are never stale.
        anchor_px = (self.anchors[i] * self.stride[i]).to(x.dtype).view(1, self.na, 1, 1, 2)
        xy = (y[..., :2] * 2 + grid) * self.stride[i]
        wh = (y[..., 2:4] * 2) ** 2 * anchor_px
        return torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no)

    def _grid(self, i: int, ny: int, nx: int, device: torch.device,
              dtype: torch.dtype) -> torch.Tensor:
        key = (i, ny, nx, device, dtype)
        grid = self._grids.get(key)
        if grid is None:
            yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                    torch.arange(nx, device=device, dtype=dtype), indexing="ij")
            # Cell offsets (x, y) − 0.5 so that 2σ(t) − 0.5 + cell becomes 2σ(t) + grid.
            grid = (torch.stack((xv, yv), 2) - 0.5).view(1, 1, ny, nx, 2)
            self._grids[key] = grid
        return grid

    @torch.no_grad()
    def initialize_biases(self) -> None:
        """RetinaNet-style prior: objectness ≈ 8 objects per 640² image, class prob ≈ 0.6/nc."""
        for conv, s in zip(self.m, self.stride.tolist(), strict=True):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5:5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))
