"""Evolution records and YOLOv5's evolve.csv line format: pure types, formatting and parsing."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence, overload

import numpy as np
import yaml

from ..errors import StoreError
from ..train.fitness import fitness_from_values
from ..train.results import RESULT_KEYS, Metrics

STATUSES: tuple[str, ...] = ("finished", "early-stopped", "failed")
# Sidecar fields in the order they are written (one JSON object per line).
SIDECAR_FIELDS: tuple[str, ...] = (
    "row", "trial_id", "strategy", "generation", "parent_rows", "seed", "node", "device",
    "start", "end", "wall_time", "status", "freeze", "prune", "cloned", "reason",
)


@dataclass(frozen=True)
class TrialRecord:
    """What a finished, early-stopped or failed trial hands to `EvolutionStore.append`.

    `results` (7 values in RESULT_KEYS order, or a Metrics) is required unless the trial
    failed; failed trials go to the sidecar only. `freeze`/`prune` are sidecar-only genes.
    """

    trial_id: str
    status: str
    hyp: Mapping[str, float]
    results: Sequence[float] | Metrics | None = None
    strategy: str = "classic"
    generation: int | None = None
    parent_rows: tuple[int, ...] = ()
    seed: int | None = None
    node: str | None = None
    device: str | None = None
    start: float | None = None
    end: float | None = None
    freeze: int | None = None
    prune: float | None = None
    cloned: bool = False
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if not self.trial_id:
            raise ValueError("trial_id must be a non-empty string")
        if self.status != "failed" and len(self.result_values()) != len(RESULT_KEYS):
            raise ValueError(f"a {self.status} trial needs {len(RESULT_KEYS)} result values")

    def result_values(self) -> tuple[float, ...]:
        """The seven results as floats (empty when none were given)."""
        if self.results is None:
            return ()
        if isinstance(self.results, Metrics):
            return self.results.as_row()
        return tuple(float(v) for v in self.results)

    def sidecar_entry(self, row: int | None) -> dict[str, Any]:
        """The sidecar JSON object for this trial, keyed by its evolve.csv row (None = none)."""
        wall = (self.end - self.start) if self.start is not None and self.end is not None else None
        values = {"row": row, "wall_time": wall, "parent_rows": [int(i) for i in self.parent_rows]}
        return {k: values[k] if k in values else getattr(self, k) for k in SIDECAR_FIELDS}


@dataclass(frozen=True, eq=False)
class Row:
    """One evolve.csv row read back by column name, with its sidecar entry (`meta`)."""

    index: int                  # 0-based data row (YOLOv5's "generation")
    values: tuple[float, ...]   # the 7 results in RESULT_KEYS order
    hyp: Mapping[str, float]    # hyp columns in the file's order
    fitness: float              # train.fitness of `values` (NaN when a metric is NaN)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """Sidecar status; rows without a sidecar entry (YOLOv5-made) count as finished."""
        return str(self.meta.get("status") or "finished")

    @property
    def eligible(self) -> bool:
        """May be a parent / the best row: finished with a finite fitness."""
        return self.status == "finished" and math.isfinite(self.fitness)

    def gene(self, name: str, default: float) -> float:
        """A gene value from the hyp columns, else from the sidecar (freeze/prune), else default."""
        if name in self.hyp:
            return float(self.hyp[name])
        value = self.meta.get(name)
        return default if value is None else float(value)


class RowTable(Sequence[Row]):
    """An immutable snapshot of rows with precomputed fitness and eligibility arrays."""

    def __init__(self, rows: Sequence[Row], fitness: np.ndarray | None = None,
                 eligible: np.ndarray | None = None) -> None:
        self._rows = tuple(rows)
        self.fitness = (np.array([r.fitness for r in self._rows], dtype=np.float64)
                        if fitness is None else fitness)
        self.eligible = (np.array([r.eligible for r in self._rows], dtype=bool)
                         if eligible is None else eligible)

    @overload
    def __getitem__(self, i: int) -> Row: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Row]: ...

    def __getitem__(self, i: int | slice) -> Row | Sequence[Row]:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Row]:
        return iter(self._rows)


def as_row_table(rows: Sequence[Row]) -> RowTable:
    """`rows` itself when it already is a RowTable, else a new snapshot."""
    return rows if isinstance(rows, RowTable) else RowTable(rows)


def best_row_index(fitness: np.ndarray, eligible: np.ndarray) -> int | None:
    """Row of maximum fitness among eligible rows (first on ties, as np.argmax).

    Falls back to all finite rows when none is eligible; None when no row is finite.
    """
    f = np.asarray(fitness, dtype=np.float64)
    for mask in (np.asarray(eligible, dtype=bool) & np.isfinite(f), np.isfinite(f)):
        if mask.any():
            return int(np.argmax(np.where(mask, f, -np.inf)))
    return None


def format_header(keys: Sequence[str]) -> str:
    """YOLOv5's evolve.csv header: every key '%20s', joined by ',' (no trailing comma)."""
    return ",".join("%20s" % k for k in keys) + "\n"


def format_row(values: Sequence[float]) -> str:
    """YOLOv5's evolve.csv row: every value '%20.5g', joined by ','."""
    return ",".join("%20.5g" % float(v) for v in values) + "\n"


def parse_header(line: str, path: str) -> list[str]:
    """Column names of an evolve.csv header line (stripped); checks the 7 result columns."""
    names = [n.strip() for n in line.split(",")]
    missing = [k for k in RESULT_KEYS if k not in names]
    if missing or "" in names or len(set(names)) != len(names):
        what = f"lacks {', '.join(missing)}" if missing else "has empty or repeated names"
        raise StoreError(f"{path}: line 1: evolve.csv header {what}")
    return names


def parse_values(line: str, ncols: int, path: str, lineno: int) -> list[float]:
    """The floats of one data line; StoreError naming the file and line when malformed."""
    fields = line.split(",")
    if len(fields) != ncols:
        raise StoreError(f"{path}: line {lineno}: expected {ncols} comma-separated values, "
                         f"found {len(fields)}")
    try:
        return [float(f) for f in fields]
    except ValueError:
        raise StoreError(f"{path}: line {lineno}: non-numeric value in {line.strip()!r}") from None


def make_row(index: int, columns: Sequence[str], values: Sequence[float],
             meta: Mapping[str, Any] | None = None) -> Row:
    """Build a Row from one parsed line, by column name."""
    by_name = dict(zip(columns, values))
    results = tuple(by_name[k] for k in RESULT_KEYS)
    hyp = {k: v for k, v in by_name.items() if k not in RESULT_KEYS}
    return Row(index, results, hyp, fitness_from_values(results), dict(meta or {}))


def format_best_lines(columns: Sequence[str], row: Row, csv_path: str) -> list[str]:
    """YOLOv5's plot_evolve log: 'Best results from row j of <csv>:' then '{name:>15}: {v:.3g}'."""
    by_name = dict(zip(RESULT_KEYS, row.values)) | dict(row.hyp)
    lines = [f"Best results from row {row.index} of {csv_path}:"]
    lines += [f"{k:>15}: {by_name[k]:.3g}" for k in columns if k not in RESULT_KEYS]
    return lines


@functools.lru_cache(maxsize=4)
def _hyp_yaml(items: tuple[tuple[str, float], ...]) -> str:
    # The file is rewritten on every row but the best changes rarely; dumping is ~3 ms.
    return yaml.safe_dump(dict(items), sort_keys=False)


def hyp_evolve_text(best: Row, n_rows: int) -> str:
    """hyp_evolve.yaml: YOLOv5's comment header, a blank line, then the best row's hyps."""
    header = [
        "# YOLOv5 Hyperparameter Evolution Results",
        f"# Best generation: {best.index}",
        f"# Last generation: {n_rows - 1}",
        "# " + ", ".join(f"{k.strip():>20s}" for k in RESULT_KEYS),
        "# " + ", ".join(f"{v:>20.5g}" for v in best.values),
    ]
    body = _hyp_yaml(tuple((k, float(v)) for k, v in best.hyp.items()))
    extras = {k: best.meta.get(k) for k in ("freeze", "prune") if best.meta.get(k) is not None}
    # Sidecar-only genes are not hyps (YOLOv5 would reject them as keys): a trailing comment.
    tail = "# sidecar genes: " + ", ".join(f"{k}={v}" for k, v in extras.items()) + "\n"
    return "\n".join(header) + "\n\n" + body + (tail if extras else "")

