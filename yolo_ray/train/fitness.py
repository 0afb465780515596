"""The single fitness definition: a weighted sum of P, R, mAP@0.5 and mAP@0.5:0.95 (pure Python)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .results import Metrics

# Weights for (precision, recall, mAP@0.5, mAP@0.5:0.95), as YOLOv5 (spec §1.2).
FITNESS_WEIGHTS: tuple[float, float, float, float] = (0.0, 0.0, 0.1, 0.9)


def fitness_from_values(
    values: Sequence[float], weights: Sequence[float] = FITNESS_WEIGHTS
) -> float:
    """Fitness of a result row; only its first four columns (P, R, mAP50, mAP50-95) are used.

    A NaN in any of those four columns marks a failed result (a diverged or crashed trial):
    the fitness is then float('nan') so callers can exclude the row (rank it last or drop it)
    instead of comparing NaN, which silently loses every comparison.

    Raises:
        ValueError: fewer than four values, or not four weights.
    """
    if len(weights) != 4:
        raise ValueError(f"fitness needs 4 weights, got {len(weights)}")
    if len(values) < 4:
        raise ValueError(f"fitness needs at least 4 values (P, R, mAP50, mAP50-95), got {len(values)}")
    head = [float(v) for v in values[:4]]
    if any(math.isnan(v) for v in head):
        return float("nan")
    return float(sum(w * v for w, v in zip(weights, head)))


def fitness(metrics: Metrics, weights: Sequence[float] = FITNESS_WEIGHTS) -> float:
    """0.0·P + 0.0·R + 0.1·mAP@0.5 + 0.9·mAP@0.5:0.95; NaN for a failed result (see above)."""
    return fitness_from_values(metrics.as_row(), weights)
