"""Fixtures for data tests: tiny image/label folders, hyps, a synthetic dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo_ray.config.load import CONFIGS_DIR, load_hyp
from yolo_ray.config.schema import Hyp

SHARED = Path(__file__).resolve().parents[3] / "shared"
COCO128 = SHARED / "datasets" / "coco128"


def make_image(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    """Write a random-noise image (format from the suffix) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


MakeSample = Callable[..., tuple[Path, Path]]


@pytest.fixture
def make_sample(tmp_path: Path) -> MakeSample:
    """make_sample(name, label_text|None, w, h, suffix) -> (image, label file) in tmp/images|labels."""

    def _make(name: str, label: str | None, w: int = 64, h: int = 48,
              suffix: str = ".jpg") -> tuple[Path, Path]:
        img = make_image(tmp_path / "images" / f"{name}{suffix}", w, h, seed=len(name))
        lab = tmp_path / "labels" / f"{name}.txt"
        lab.parent.mkdir(parents=True, exist_ok=True)
        if label is not None:
            lab.write_text(label)
        return img, lab

    return _make


@pytest.fixture(scope="session")
def hyp_zero() -> Hyp:
    """YOLOv5's hyp.no-augmentation.yaml: every augmentation hyp is 0."""
    return load_hyp(CONFIGS_DIR / "hyps" / "hyp.no-augmentation.yaml")


@pytest.fixture(scope="session")
def hyp_low() -> Hyp:
    """The default hyp.scratch-low.yaml."""
    return load_hyp()


@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 + 8 image synthetic dataset at 64 px (data.yaml path)."""
    from yolo_ray.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=24, n_val=8,
                                   imgsz=64, seed=3)
