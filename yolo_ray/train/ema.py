"""Exponential moving average of model weights, YOLOv5's ModelEMA semantics."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """Keeps `decay(u) = d * (1 - exp(-u / tau))`-weighted averages of all float state entries.

    Frozen parameters are skipped (they never change, and lerp-ing them would still cost time);
    `lerp` leaves equal tensors bit-identical, so fixed BatchNorm statistics stay exact too.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0,
                 updates: int = 0) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.updates = updates
        self.decay_max = decay
        self.tau = tau
        self._pairs: tuple[list[torch.Tensor], list[str]] | None = None
        self._sources: tuple[int, list[torch.Tensor]] | None = None
        self._frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    def decay(self) -> float:
        """Current decay for the number of updates done so far."""
        return self.decay_max * (1 - math.exp(-self.updates / self.tau))

    def _targets(self) -> tuple[list[torch.Tensor], list[str]]:
        if self._pairs is None:
            sd = self.ema.state_dict(keep_vars=True)
            keys = [k for k, v in sd.items() if v.dtype.is_floating_point and k not in self._frozen]
            self._pairs = ([sd[k].data for k in keys], keys)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current weights into the average."""
        self.updates += 1
        weight = 1.0 - self.decay()
        targets, keys = self._targets()
        sources = self._source_tensors(model, keys)
        if sources and sources[0].dtype != targets[0].dtype:
            sources = [s.to(t.dtype) for s, t in zip(sources, targets)]
        torch._foreach_lerp_(targets, sources, weight)

    def _source_tensors(self, model: nn.Module, keys: list[str]) -> list[torch.Tensor]:
        # The model's tensors are stable objects (updated in place), so build the list once
        # per model instead of a state_dict per update.
        if self._sources is None or self._sources[0] != id(model):
            msd = model.state_dict(keep_vars=True)
            self._sources = (id(model), [msd[k].detach() for k in keys])
        return self._sources[1]

    def state_dict(self) -> dict:
        """EMA weights plus the update counter, for exact resumption."""
        return {"model": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()` output."""
        self.ema.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        self._pairs = None
        self._sources = None
