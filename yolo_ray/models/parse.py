"""Pure model-yaml parsing: validate rows, apply depth/width scaling, produce layer specs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .registry import get_module

TOP_KEYS = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head",
            "activation", "channel_multiple", "ch", "yaml_file")
REQUIRED_KEYS = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")
# Strings in yaml args that YOLOv5 evaluates; we substitute them from an explicit table.
_NAMED_ARGS = ("nc", "anchors", "None")


@dataclass(frozen=True)
class LayerSpec:
    """One model layer after scaling: constructor `args` are final (c1 inserted, c2 scaled)."""

    i: int
    f: int | tuple[int, ...]  # as written in the yaml (-1 = previous layer)
    n: int  # repeats after depth scaling (inside C3, else n copies in a Sequential)
    module: str  # yaml module name, e.g. 'C3', 'nn.Upsample'
    args: tuple
    c2: int  # output channels


@dataclass(frozen=True)
class ParsedModel:
    """A validated model yaml: layer specs plus the values the model object keeps."""

    layers: tuple[LayerSpec, ...]
    save: tuple[int, ...]  # layers whose outputs are reused later (sorted)
    nc: int
    anchors: int | tuple[tuple[float, ...], ...]  # pixels, one (w,h, w,h…) row per level,
    # or k (k placeholder anchors per level, for AutoAnchor to replace)
    ch: int
    activation: str | None


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of `divisor` that is >= x."""
    return int(math.ceil(x / divisor) * divisor)


def scale_depth(n: int, gd: float) -> int:
    """YOLOv5 repeat scaling: round(n·gd) (banker's rounding), at least 1, only for n > 1."""
    return max(round(n * gd), 1) if n > 1 else n


def parse_model(d: dict, ch: int = 3) -> ParsedModel:
    """Validate a YOLOv5 model dict and turn its rows into LayerSpecs (no torch objects)."""
    where = str(d.get("yaml_file") or "<model yaml>") if isinstance(d, dict) else "<model yaml>"
    _check_top(d, where)
    nc, gd, gw = d["nc"], float(d["depth_multiple"]), float(d["width_multiple"])
    anchors = _check_anchors(d["anchors"], where)
    divisor = _positive_int(d.get("channel_multiple", 8), "channel_multiple", where)
    ch = _positive_int(d.get("ch", ch), "ch", where)
    no = (anchors if isinstance(anchors, int) else len(anchors[0]) // 2) * (nc + 5)
    rows = _rows(d, where)
    chs: list[int] = [ch]
    layers: list[LayerSpec] = []
    save: set[int] = set()
    for i, (section, j, row) in enumerate(rows):
        at = f"{where}: layer {i} ({section} row {j})"
        f, n, name, args = _check_row(row, i, at)
        args = [_substitute(a, nc, anchors) for a in args]
        spec = _layer_spec(i, f, scale_depth(n, gd), name, args, chs, gw, divisor, no, at)
        layers.append(spec)
        save.update(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        chs = [spec.c2] if i == 0 else chs + [spec.c2]  # drop the input channels after layer 0
    return ParsedModel(tuple(layers), tuple(sorted(save)), nc,
                       anchors if isinstance(anchors, int) else tuple(map(tuple, anchors)),
                       ch, d.get("activation"))


def _check_top(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a model yaml must be a mapping")
    unknown = [k for k in d if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys are: "
                          + ", ".join(TOP_KEYS))
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ConfigError(f"{where}: missing key(s): {', '.join(missing)}")
    _positive_int(d["nc"], "nc", where)
    for k in ("depth_multiple", "width_multiple"):
        v = d[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"{where}: {k} must be a positive number, got {v!r}")


def _positive_int(v: Any, key: str, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {v!r}")
    return v


def _check_anchors(a: Any, where: str) -> int | list[list[float]]:
    """Anchors: a list of per-level [w,h, w,h, ...] pixel lists, or an int k (placeholders)."""
    if isinstance(a, int) and not isinstance(a, bool) and a > 0:
        return a  # k anchors per level; Detect gets placeholders (see _layer_spec)
    ok = isinstance(a, (list, tuple)) and a and all(
        isinstance(level, (list, tuple)) and level and len(level) % 2 == 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in level)
        for level in a)
    if not ok or len({len(level) for level in a}) != 1:
        raise ConfigError(f"{where}: anchors must be a list of levels, each [w,h, w,h, ...] "
                          f"with the same number of positive pixel sizes, got {a!r}")
    return [list(level) for level in a]


def _rows(d: dict, where: str) -> list[tuple[str, int, Any]]:
    rows = []
    for section in ("backbone", "head"):
        part = d[section]
        if not isinstance(part, list) or (section == "backbone" and not part):
            raise ConfigError(f"{where}: {section} must be a list of [from, number, module, "
                              f"args] rows, got {part!r}")
        rows += [(section, j, row) for j, row in enumerate(part)]
    return rows


def _check_row(row: Any, i: int, at: str) -> tuple[int | tuple[int, ...], int, str, list]:
    if not isinstance(row, (list, tuple)) or len(row) != 4:
        raise ConfigError(f"{at}: expected [from, number, module, args], got {row!r}")
    f, n, name, args = row
    froms = [f] if _is_int(f) else f
    if not isinstance(froms, list) or not froms or not all(_is_int(x) for x in froms):
        raise ConfigError(f"{at}: 'from' must be an int or a list of ints, got {f!r}")
    for x in froms:
        # -1 is the previous output (the image for layer 0); others must be built already.
        if x != -1 and not (0 <= x < i or (x < -1 and i + x >= 0)):
            raise ConfigError(f"{at}: 'from' index {x} does not refer to an earlier layer "
                              f"(valid: -1, 0..{i - 1} or -{i}..-1)" if i else
                              f"{at}: 'from' index {x} is invalid for the first layer (use -1)")
    if not _is_int(n) or n < 1:
        raise ConfigError(f"{at}: 'number' must be a positive int, got {n!r}")
    get_module(name, at)
    if not isinstance(args, list):
        raise ConfigError(f"{at}: 'args' must be a list, got {args!r}")
    return (f if _is_int(f) else tuple(f)), n, name, args


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _substitute(a: Any, nc: int, anchors: int | list[list[float]]) -> Any:
    if isinstance(a, str) and a in _NAMED_ARGS:
        return {"nc": nc, "anchors": anchors, "None": None}[a]
    return a


def _layer_spec(i: int, f: int | tuple[int, ...], n: int, name: str, args: list,
                chs: list[int], gw: float, divisor: int, no: int, at: str) -> LayerSpec:
    entry = get_module(name, at)
    froms = [f] if isinstance(f, int) else list(f)
    if entry.kind in ("conv", "passthrough") and len(froms) != 1:
        raise ConfigError(f"{at}: {name} takes one input, got from={list(froms)}")
    if entry.kind == "conv":
        c1, c2 = chs[froms[0]], args[0] if args else None
        if not _is_int(c2) or c2 < 1:
            raise ConfigError(f"{at}: {name} needs output channels as its first arg, got {args}")
        if c2 != no:  # the Detect-sized output is never width-scaled
            c2 = make_divisible(c2 * gw, divisor)
        args = [c1, c2, *args[1:]]
        if entry.repeats_inside:
            args.insert(2, n)  # the builder then makes one module instead of n copies
    elif entry.kind == "concat":
        c2 = sum(chs[x] for x in froms)
    elif entry.kind == "detect":
        if len(args) >= 2 and _is_int(args[1]) and args[1] > 0:  # YOLOv5's placeholders
            args = [args[0], [list(range(args[1] * 2))] * len(froms), *args[2:]]
        if len(args) < 2 or not isinstance(args[1], list) or len(args[1]) != len(froms):
            raise ConfigError(f"{at}: Detect needs [nc, anchors] with one anchor level per "
                              f"input ({len(froms)} inputs), got {args}")
        args = [args[0], args[1], [chs[x] for x in froms], *args[2:]]
        c2 = no
    else:
        c2 = chs[froms[0]]
    return LayerSpec(i, f, n, name, tuple(args), c2)
