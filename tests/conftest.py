"""Shared fixtures: paths to ../shared, a tiny model yaml, a synthetic dataset, a seeded rng."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COCO128_YAML = SHARED / "datasets" / "coco128.yaml"
YOLOV5N_PT = SHARED / "weights" / "yolov5n.pt"

# Tests run on 2 cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# ray.init() without an address joins any `ray start` cluster found on this machine (its
# /tmp/ray/ray_current_cluster file): tests always start their own local Ray instead.
os.environ.setdefault("RAY_ADDRESS", "local")

TINY_MODEL_YAML = """\
# yolov5 layout at width 0.05 / depth 0.33: the same 25 layers, a few thousand parameters
nc: 3
depth_multiple: 0.33
width_multiple: 0.0625
anchors:
  - [10,13, 16,30, 33,23]
  - [30,61, 62,45, 59,119]
  - [116,90, 156,198, 373,326]
backbone:
  [[-1, 1, Conv, [64, 6, 2, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 3, C3, [128]],
   [-1, 1, Conv, [256, 3, 2]],
   [-1, 6, C3, [256]],
   [-1, 1, Conv, [512, 3, 2]],
   [-1, 9, C3, [512]],
   [-1, 1, Conv, [1024, 3, 2]],
   [-1, 3, C3, [1024]],
   [-1, 1, SPPF, [1024, 5]],
  ]
head:
  [[-1, 1, Conv, [512, 1, 1]],
   [-1, 1, nn.Upsample, [None, 2, 'nearest']],
   [[-1, 6], 1, Concat, [1]],
   [-1, 3, C3, [512, False]],
   [-1, 1, Conv, [256, 1, 1]],
   [-1, 1, nn.Upsample, [None, 2, 'nearest']],
   [[-1, 4], 1, Concat, [1]],
   [-1, 3, C3, [256, False]],
   [-1, 1, Conv, [256, 3, 2]],
   [[-1, 14], 1, Concat, [1]],
   [-1, 3, C3, [512, False]],
   [-1, 1, Conv, [512, 3, 2]],
   [[-1, 10], 1, Concat, [1]],
   [-1, 3, C3, [1024, False]],
   [[17, 20, 23], 1, Detect, [nc, anchors]],
  ]
"""


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator (no global randomness in tests either)."""
    return np.random.default_rng(0)


@pytest.fixture
def tiny_model_yaml(tmp_path: Path) -> Path:
    """A full-layout YOLOv5 yaml at tiny width for fast CPU tests."""
    p = tmp_path / "yolov5-tiny.yaml"
    p.write_text(TINY_MODEL_YAML)
    return p


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated YOLO dataset (data yaml path), shared by the session."""
    from yolo_ray.data.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_dataset(out, n_train=16, n_val=8, imgsz=64, seed=0)


def requires_shared(*paths: Path):
    """Skip when ../shared (real data/weights) is not beside the project."""
    missing = [p for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"missing {missing}")
