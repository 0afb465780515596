"""Validation results as a typed record with YOLOv5's seven result columns (pure Python)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

# YOLOv5's result column names, in the order of results.csv / evolve.csv.
RESULT_KEYS: tuple[str, ...] = (
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
)


@dataclass(frozen=True)
class Metrics:
    """One validation result: P, R, mAP@0.5, mAP@0.5:0.95 and the three validation losses."""

    precision: float
    recall: float
    map50: float
    map: float
    box_loss: float
    obj_loss: float
    cls_loss: float

    def as_row(self) -> tuple[float, ...]:
        """The seven values in RESULT_KEYS order."""
        return tuple(float(v) for v in astuple(self))

    def as_dict(self) -> dict[str, float]:
        """RESULT_KEYS -> value, for loggers and Tune reports."""
        return dict(zip(RESULT_KEYS, self.as_row()))

    @classmethod
    def from_row(cls, values: Sequence[float]) -> Metrics:
        """Build from seven values in RESULT_KEYS order; raises ValueError on another length."""
        if len(values) != len(RESULT_KEYS):
            raise ValueError(f"a result row has {len(RESULT_KEYS)} values, got {len(values)}")
        return cls(*(float(v) for v in values))

    @classmethod
    def zeros(cls) -> Metrics:
        """All-zero metrics (YOLOv5's value when nothing was detected)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
