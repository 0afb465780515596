"""Model tests: one torch thread (small models gain nothing from two; restored afterwards)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models at 64 px gain nothing from 2 threads, and on a busy CI box spinning
    OpenMP workers make them ~10x slower; restored afterwards for the other test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
