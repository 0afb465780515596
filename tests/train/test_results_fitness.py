"""Metrics rows, RESULT_KEYS and the single fitness definition."""

import ast
import math
from pathlib import Path

import pytest

from yolo_ray.train import fitness as fitness_mod
from yolo_ray.train import results as results_mod
from yolo_ray.train.fitness import FITNESS_WEIGHTS, fitness, fitness_from_values
from yolo_ray.train.results import RESULT_KEYS, Metrics


def test_result_keys_are_yolov5_columns():
    assert RESULT_KEYS == (
        "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95",
        "val/box_loss", "val/obj_loss", "val/cls_loss",
    )


def test_row_round_trip():
    m = Metrics(0.5, 0.6, 0.7, 0.4, 0.03, 0.02, 0.01)
    assert m.as_row() == (0.5, 0.6, 0.7, 0.4, 0.03, 0.02, 0.01)
    assert Metrics.from_row(m.as_row()) == m
    assert m.as_dict()["metrics/mAP_0.5:0.95"] == 0.4
    with pytest.raises(ValueError):
        Metrics.from_row([0.1] * 6)


def test_fitness_hand_computed():
    assert FITNESS_WEIGHTS == (0.0, 0.0, 0.1, 0.9)
    m = Metrics(0.5, 0.6, 0.7, 0.4, 0.03, 0.02, 0.01)
    assert fitness(m) == pytest.approx(0.1 * 0.7 + 0.9 * 0.4)  # 0.43
    assert fitness(Metrics(1, 1, 0, 0, 9, 9, 9)) == 0.0  # P, R and losses weigh nothing
    assert fitness(Metrics(0, 0, 1, 1, 0, 0, 0)) == pytest.approx(1.0)


def test_fitness_from_values_uses_first_four_columns():
    row = (0.5, 0.6, 0.7, 0.4, 0.03, 0.02, 0.01, 0.01, 0.2)  # result row + genes
    assert fitness_from_values(row) == pytest.approx(0.43)
    assert fitness_from_values(row[:4]) == pytest.approx(0.43)
    assert fitness_from_values(row, weights=(0.25, 0.25, 0.25, 0.25)) == pytest.approx(0.55)
    with pytest.raises(ValueError):
        fitness_from_values((0.1, 0.2, 0.3))


def test_nan_marks_failed_result():
    assert math.isnan(fitness(Metrics(0.5, float("nan"), 0.7, 0.4, 0, 0, 0)))
    assert math.isnan(fitness_from_values((0.5, 0.6, float("nan"), 0.4)))
    # NaN in a loss column does not matter: losses are not part of fitness.
    assert fitness_from_values((0.5, 0.6, 0.7, 0.4, float("nan"))) == pytest.approx(0.43)


@pytest.mark.parametrize("module", [results_mod, fitness_mod])
def test_pure_python(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not imported & {"torch", "numpy", "ray"}
