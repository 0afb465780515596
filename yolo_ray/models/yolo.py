"""DetectionModel: a YOLOv5 network built from a model yaml, with YOLOv5's state_dict names."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.load import load_model_yaml
from ..errors import ConfigError
from .layers import Conv, Detect, DetectOutput
from .parse import LayerSpec, ParsedModel, parse_model
from .registry import MODULES, build_activation, module_type_name

# Image sides tried (smallest first) for the one probe forward that measures the strides;
# a side is accepted once every output is at least 2 cells, so the ratio is unambiguous.
# (YOLOv5 always probes at 256; 64 gives the same [8, 16, 32] at 1/16 of the cost.)
STRIDE_PROBES = (64, 256, 1024)


class DetectionModel(nn.Module):
    """YOLOv5 detection model.

    Attributes: `model` (nn.Sequential; layer attrs `i`, `f`, `type`, `np`, `spec`), `save`
    (indices whose outputs later layers reuse), `nc`, `names`, `yaml` (the model dict),
    `no_grad_prefix` (layers with index < this run under torch.no_grad(), for freezing), and
    the properties `detect` (the Detect layer) and `stride` (tensor, e.g. [8, 16, 32]).
    """

    def __init__(self, cfg: dict, nc: int | None = None,
                 anchors: int | Sequence[Sequence[float]] | None = None, ch: int = 3) -> None:
        super().__init__()
        self.yaml: dict[str, Any] = copy.deepcopy(cfg)
        if nc is not None:
            self.yaml["nc"] = nc  # YOLOv5: "Overriding model.yaml nc=80 with nc=…"
        if anchors is not None:
            self.yaml["anchors"] = (round(anchors) if isinstance(anchors, (int, float))
                                    else [list(level) for level in anchors])  # yaml-dumpable
        where = str(self.yaml.get("yaml_file") or "<model yaml>")
        parsed = parse_model(self.yaml, ch)
        self.model = nn.Sequential(*(_build_layer(s, where) for s in parsed.layers))
        self.save: list[int] = list(parsed.save)
        self.nc: int = parsed.nc
        self.names: list[str] = [str(i) for i in range(parsed.nc)]
        self.no_grad_prefix: int = 0
        _share_activation(self.model, parsed, where)
        if not isinstance(self.model[-1], Detect):
            raise ConfigError(f"{where}: the last layer must be Detect, got "
                              f"{parsed.layers[-1].module}")
        _init_detect(self, parsed.ch)

    @property
    def detect(self) -> Detect:
        """The Detect head (last layer); a property so it is not registered twice."""
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        """Output strides per detection level, e.g. tensor([8., 16., 32.])."""
        return self.detect.stride

    def forward(self, x: torch.Tensor) -> DetectOutput:
        """Run the layers; Detect's output is returned (training list or eval tuple)."""
        k = self.no_grad_prefix if torch.is_grad_enabled() else 0
        save = self.save
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:  # gather inputs from earlier layers
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if m.i < k:  # frozen prefix: no autograd graph, backward stops here
                with torch.no_grad():
                    x = m(x)
            else:
                x = m(x)
            y.append(x if m.i in save else None)
        return x

    def fuse(self) -> DetectionModel:
        """Fold every BatchNorm into its conv (inference only; fused convs are frozen)."""
        for m in self.model.modules():
            if isinstance(m, Conv):
                m.fuse()
        for m in self.model:
            m.np = sum(p.numel() for p in m.parameters())
        return self


def build_model(cfg: str | Path | dict, nc: int | None = None,
                anchors: int | Sequence[Sequence[float]] | None = None) -> DetectionModel:
    """Build a DetectionModel from a name ('yolov5s'), a yaml path or a model dict."""
    d = load_model_yaml(cfg) if isinstance(cfg, (str, Path)) else cfg
    if not isinstance(d, dict):
        raise ConfigError(f"model config must be a name, a yaml path or a dict, got {type(d)}")
    return DetectionModel(d, nc=nc, anchors=anchors)


def check_anchor_order(detect: Detect) -> bool:
    """Flip anchor levels if their mean area does not grow with stride; True if flipped."""
    area = detect.anchors.prod(-1).mean(-1).view(-1)
    da, ds = area[-1] - area[0], detect.stride[-1] - detect.stride[0]
    if da != 0 and da.sign() != ds.sign():
        with torch.no_grad():
            detect.anchors.copy_(detect.anchors.flip(0))
        return True
    return False


def _build_layer(spec: LayerSpec, where: str) -> nn.Module:
    entry = MODULES[spec.module]
    copies = 1 if entry.repeats_inside else spec.n
    try:
        layers = [entry.cls(*spec.args) for _ in range(copies)]
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where}: layer {spec.i} ({spec.module}): invalid args "
                          f"{list(spec.args)}: {e}") from None
    m = layers[0] if copies == 1 else nn.Sequential(*layers)
    m.i, m.f, m.spec = spec.i, spec.f if isinstance(spec.f, int) else list(spec.f), spec
    m.type = module_type_name(entry.cls)  # shadows Module.type(), as YOLOv5 does
    m.np = sum(p.numel() for p in m.parameters())
    return m


def _share_activation(model: nn.Module, parsed: ParsedModel, where: str) -> None:
    """Give every default-activation Conv one shared activation module, like YOLOv5.

    YOLOv5's Conv uses a single class-level SiLU, so `len(list(model.modules()))` (its
    "layers" count, e.g. 214 for YOLOv5s) counts it once; the yaml `activation:` key swaps it.
    """
    act = (build_activation(parsed.activation, where) if parsed.activation
           else nn.SiLU(inplace=True))
    for conv in [m for m in model.modules() if isinstance(m, Conv)]:
        if isinstance(conv.act, nn.SiLU):
            conv.act = act


@torch.no_grad()
def _init_detect(model: DetectionModel, ch: int) -> None:
    """Measure strides with one probe forward, fix anchor order, go to grid units, init biases."""
    detect = model.detect
    detect.stride.copy_(torch.tensor(_measure_strides(model, ch)))
    check_anchor_order(detect)
    detect.anchors /= detect.stride.view(-1, 1, 1)
    detect.initialize_biases()


def _measure_strides(model: DetectionModel, ch: int) -> list[float]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # eval: the probe must not update BN statistics
    try:
        for side in STRIDE_PROBES:
            _, raw = model(torch.zeros(1, ch, side, side))
            if min(r.shape[2] for r in raw) >= 2:
                break
    finally:
        for m, mode in modes:
            m.training = mode
    return [side / r.shape[2] for r in raw]
