"""Shared fixtures for the evolution tests: the default space, base hyps and a store folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_ray.config.load import load_hyp
from yolo_ray.config.schema import Hyp
from yolo_ray.evolve.space import SearchSpace, load_search_space
from yolo_ray.train.results import RESULT_KEYS

# YOLOv5's scratch-low hyp order with `anchors` appended, as in spec §1.3 (36 columns).
YOLOV5_COLUMNS: tuple[str, ...] = RESULT_KEYS + (
    "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
    "warmup_bias_lr", "box", "cls", "cls_pw", "obj", "obj_pw", "iou_t", "anchor_t",
    "fl_gamma", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
    "perspective", "flipud", "fliplr", "mosaic", "mixup", "copy_paste", "anchors",
)


@pytest.fixture()
def space() -> SearchSpace:
    return load_search_space()


@pytest.fixture()
def base_hyp() -> Hyp:
    return load_hyp()


def yolov5_csv_text(rows: list[list[float]]) -> str:
    """An evolve.csv as YOLOv5's print_mutation writes it (header '%20s', rows '%20.5g')."""
    lines = [",".join(f"{k:>20}" for k in YOLOV5_COLUMNS)]
    lines += [",".join(f"{v:>20.5g}" for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def write_yolov5_csv(path: Path, n: int = 12) -> list[list[float]]:
    """Write a YOLOv5-format evolve.csv of `n` rows around the scratch-low hyps."""
    base = [0.01, 0.01, 0.937, 0.0005, 3.0, 0.8, 0.1, 0.05, 0.5, 1.0, 1.0, 1.0, 0.2, 4.0,
            0.0, 0.015, 0.7, 0.4, 0.0, 0.1, 0.5, 0.0, 0.0, 0.0, 0.5, 1.0, 0.0, 0.0, 3.0]
    rows = []
    for i in range(n):
        scale = 1.0 + 0.01 * ((i * 7) % 5)
        results = [0.5 + 0.01 * i, 0.4, 0.3 + 0.02 * ((i * 5) % 7), 0.2 + 0.01 * ((i * 3) % 11),
                   0.05, 0.03, 0.01]
        rows.append([float(f"{v:.5g}") for v in results + [v * scale for v in base]])
    path.write_text(yolov5_csv_text(rows))
    return rows
