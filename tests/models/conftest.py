"""Model tests: one torch thread (small models gain nothing from two; restored afterwards)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models at 64 px gain nothing from 2 threads, and on a busy CI box spinning
    OpenMP workers make them ~10x slower; restored afterwards for the other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@torch.no_grad()
def random_bn_statistics(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (as a trained
    net has; a fresh one has γ = 1, β = 0, mean 0, var 1), in place; returns `model`."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.copy_(0.3 * torch.randn(n, generator=gen))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model
