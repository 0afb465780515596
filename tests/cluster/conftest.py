"""Fixtures shared by the scheduler tests: YOLOv5's default hyps and search space."""

from __future__ import annotations

import pytest

from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.space import SearchSpace, load_search_space


@pytest.fixture
def space() -> SearchSpace:
    """YOLOv5's gains and limits, without the anchors gene (PBT cannot change the model)."""
    return load_search_space().without("anchors")


@pytest.fixture
def hyp():
    """hyp.scratch-low.yaml."""
    return load_hyp(None)
