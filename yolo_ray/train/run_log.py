"""Per-epoch run records: YOLOv5's results.csv format and TensorBoard scalars."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .results import RESULT_KEYS, Metrics

RESULTS_CSV_KEYS = ("epoch", "train/box_loss", "train/obj_loss", "train/cls_loss",
                    *RESULT_KEYS[:4], *RESULT_KEYS[4:], "x/lr0", "x/lr1", "x/lr2")


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch produced; hooks (logging, Tune reporting) receive this."""

    epoch: int
    train_losses: tuple[float, float, float]
    metrics: Metrics                # last validation (zeros before the first one, as YOLOv5)
    validated: bool                 # whether `metrics` comes from this epoch
    fitness: float
    best_fitness: float
    lrs: tuple[float, ...]
    epoch_time: float
    images: int
    stop: bool = False              # early stopping decided to stop after this epoch
    distill_loss: float | None = None  # --distill's teacher term per image (TensorBoard only:
                                       # results.csv keeps YOLOv5's columns)

    def csv_values(self) -> tuple[float, ...]:
        """Values in RESULTS_CSV_KEYS order."""
        lrs = (tuple(self.lrs) + (0.0, 0.0, 0.0))[:3]
        return (float(self.epoch), *self.train_losses, *self.metrics.as_row(), *lrs)


def format_csv_line(values: tuple[float, ...] | list[float]) -> str:
    """YOLOv5's numeric line: every value `%20.5g`, comma separated, no trailing comma."""
    return ",".join("%20.5g" % v for v in values) + "\n"


def format_csv_header(keys: tuple[str, ...] | list[str]) -> str:
    """YOLOv5's header line: every key `%20s`, comma separated."""
    return ",".join("%20s" % k for k in keys) + "\n"


def append_results_csv(path: Path, record: EpochRecord) -> None:
    """Append one epoch to results.csv (header first when the file is new), durably."""
    line = format_csv_line(record.csv_values())
    if not path.exists():
        line = format_csv_header(RESULTS_CSV_KEYS) + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class TensorBoardLog:
    """Thin wrapper over torch's SummaryWriter; no-op when disabled."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer: Any = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Write several scalars at one step."""
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def text(self, tag: str, text: str) -> None:
        """Write a text entry (e.g. the resolved settings)."""
        if self.writer is not None:
            self.writer.add_text(tag, text)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """TensorBoard tags for one epoch, named like results.csv columns."""
    values = dict(zip(RESULTS_CSV_KEYS[1:], record.csv_values()[1:]))
    values["metrics/fitness"] = record.fitness
    if record.distill_loss is not None:
        values["train/distill_loss"] = record.distill_loss
    return values
