"""Channel coupling groups of a DetectionModel: which conv outputs must lose the same channels."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class ChannelGraph:
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


def _unit(g: ChannelGraph, path: str, m: nn.Module, ins: list[int]) -> int:
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


def _c3(g: ChannelGraph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
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


def _bottleneck(g: ChannelGraph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    out = _unit(g, f"{path}.cv2", m.cv2, [_unit(g, f"{path}.cv1", m.cv1, ins)])
    if getattr(m, "add", False):
        if len(ins) != 1:
            g.lock([*ins, out])
            return [out]
        s = g.residual(ins[0], out)
        g.where[s] = path
        return [s]
    return [out]


def _sppf(g: ChannelGraph, path: str, m: nn.Module, ins: list[int]) -> list[int]:
    a = _unit(g, f"{path}.cv1", m.cv1, ins)
    return [_unit(g, f"{path}.cv2", m.cv2, [a, a, a, a])]  # cat(x, pool(x), pool², pool³)


def _detect(g: ChannelGraph, path: str, m: nn.Module, inputs: list[list[int]]) -> list[int]:
    for k in range(len(m.m)):
        g.consume(f"{path}.m.{k}", inputs[k])  # output (na·no) never pruned
    return []


def build_graph(model: nn.Module) -> ChannelGraph:
    g, outs = ChannelGraph(), {}
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


def prunable_groups(g: ChannelGraph) -> dict[int, int]:
    """Producer-carrying roots that may be pruned -> width."""
    return {r: g.size[r] for r, ps in g.producers.items()
            if ps and g.find(r) == r and not g.locked[r]}
