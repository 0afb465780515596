"""Explicit table from model-yaml module names to classes (no eval) and how each is parsed."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .layers import C3, SPPF, Bottleneck, Concat, Conv, Detect


@dataclass(frozen=True)
class ModuleEntry:
    """How parse.py treats a yaml module name.

    kind: 'conv' (args start with c2; c1 is inserted and c2 width-scaled), 'concat' (output
    channels = sum of inputs), 'detect' (input channels appended), 'passthrough' (output
    channels = input channels, e.g. Upsample).
    repeats_inside: the repeat count is passed as the 3rd constructor arg (C3 family)
    instead of stacking copies in a Sequential.
    """

    cls: Callable[..., nn.Module]
    kind: str
    repeats_inside: bool = False


MODULES: dict[str, ModuleEntry] = {
    "Conv": ModuleEntry(Conv, "conv"),
    "Bottleneck": ModuleEntry(Bottleneck, "conv"),
    "C3": ModuleEntry(C3, "conv", repeats_inside=True),
    "SPPF": ModuleEntry(SPPF, "conv"),
    "Concat": ModuleEntry(Concat, "concat"),
    "Detect": ModuleEntry(Detect, "detect"),
    "nn.Upsample": ModuleEntry(nn.Upsample, "passthrough"),
    "nn.Identity": ModuleEntry(nn.Identity, "passthrough"),
    "nn.MaxPool2d": ModuleEntry(nn.MaxPool2d, "passthrough"),
}

# Activations a model yaml may select with `activation:` (YOLOv5 evals e.g. 'nn.SiLU()').
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "nn.SiLU": nn.SiLU,
    "nn.ReLU": nn.ReLU,
    "nn.ReLU6": nn.ReLU6,
    "nn.LeakyReLU": nn.LeakyReLU,
    "nn.Hardswish": nn.Hardswish,
    "nn.Mish": nn.Mish,
    "nn.GELU": nn.GELU,
    "nn.Identity": nn.Identity,
}


def get_module(name: object, where: str) -> ModuleEntry:
    """Look up a yaml module name; `where` (file and row) goes into the error message."""
    entry = MODULES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ConfigError(
            f"{where}: unknown module {name!r}; valid modules are: {', '.join(MODULES)}")
    return entry


def module_type_name(cls: Callable[..., nn.Module]) -> str:
    """Qualified class path shown in the layer table (YOLOv5 shows e.g. models.common.Conv)."""
    return f"{cls.__module__}.{getattr(cls, '__qualname__', cls)}"


_ACT_RE = re.compile(r"^\s*(nn\.\w+)\s*(?:\((.*)\))?\s*$")


def build_activation(spec: object, where: str) -> nn.Module:
    """Build the yaml `activation:` (e.g. 'nn.LeakyReLU(0.1)') from ACTIVATIONS, no eval."""
    m = _ACT_RE.match(spec) if isinstance(spec, str) else None
    if m is None or m.group(1) not in ACTIVATIONS:
        raise ConfigError(f"{where}: invalid activation {spec!r}; use one of "
                          f"{', '.join(ACTIVATIONS)}, optionally with numeric args, e.g. "
                          "'nn.LeakyReLU(0.1)'")
    args = []
    for token in filter(None, (t.strip() for t in (m.group(2) or "").split(","))):
        try:
            args.append(float(token))
        except ValueError:
            raise ConfigError(f"{where}: activation {spec!r}: argument {token!r} is not a "
                              "number") from None
    act = ACTIVATIONS[m.group(1)](*args)
    if hasattr(act, "inplace"):
        act.inplace = True  # as YOLOv5's initialize_weights does
    return act
