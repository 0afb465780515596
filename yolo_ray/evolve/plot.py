"""evolve.png in YOLOv5's layout: every hyp column against fitness, coloured by point density."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..errors import StoreError
from ..train.results import RESULT_KEYS
from .files import read_evolve_csv
from .records import best_row_index, format_best_lines

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_NAME = "evolve.png"
_COLS, _MIN_ROWS = 5, 6   # YOLOv5's 6 x 5 grid; more rows only past 30 hyps
_LOG = logging.getLogger(__name__)


def log_density(x: np.ndarray, y: np.ndarray, bins: int = 20) -> np.ndarray:
    """log(count) of each point's cell in a bins x bins 2-D histogram (YOLOv5's colouring)."""
    h, xe, ye = np.histogram2d(x, y, bins=bins)
    xi = np.clip(np.digitize(x, xe) - 1, 0, h.shape[0] - 1)
    yi = np.clip(np.digitize(y, ye) - 1, 0, h.shape[1] - 1)
    # Every point lies in its own cell, so each count is >= 1 and the log is finite.
    return np.asarray(np.log(h[xi, yi]), dtype=np.float64)


def _draw(names: Sequence[str], x: np.ndarray, f: np.ndarray, best_x: np.ndarray,
          best_f: float) -> "Figure":
    from matplotlib.figure import Figure  # lazy: plotting is optional for the GA

    fig = Figure(figsize=(10, 12), tight_layout=True)
    nrows = max(_MIN_ROWS, math.ceil(len(names) / _COLS))
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrows, _COLS, i + 1)
        ax.scatter(x[:, i], f, c=log_density(x[:, i], f, 20), cmap="viridis", alpha=0.8,
                   edgecolors="none")
        ax.plot(best_x[i], best_f, "k+", markersize=15)
        ax.set_title(f"{name} = {best_x[i]:.3g}", fontdict={"size": 9})
        if i % _COLS != 0:
            ax.set_yticks([])  # y ticks only on the first column, as YOLOv5
    return fig


def plot_evolve(csv_path: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Write evolve.png beside `csv_path` (ours or YOLOv5-made) and return its path.

    The best row is the eligible row of maximum fitness (every row when no sidecar says
    otherwise); "Best results from row j of <csv>:" and one line per hyp go to `log`
    (default: this module's logger at INFO).

    Raises:
        StoreError: unreadable or malformed csv, or no row with a finite fitness.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(csv_path)
    columns, rows = read_evolve_csv(path)
    fit = np.array([r.fitness for r in rows], dtype=np.float64)
    j = best_row_index(fit, np.array([r.eligible for r in rows], dtype=bool))
    if j is None:
        raise StoreError(f"{path}: no row with a finite fitness to plot")
    names = [c for c in columns if c not in RESULT_KEYS]
    x = np.array([[r.hyp[c] for c in names] for r in rows], dtype=np.float64).reshape(len(rows), -1)
    keep = np.isfinite(fit) & np.isfinite(x).all(axis=1)  # NaN rows cannot be binned
    out = path.with_name(PNG_NAME)
    tmp = path.with_name(f".{PNG_NAME}.{os.getpid()}.tmp")
    with matplotlib.rc_context({"font.size": 8}):  # scoped: no global rcParams change
        fig = _draw(names, x[keep], fit[keep], x[j], float(fit[j]))
        FigureCanvasAgg(fig)
        try:
            fig.savefig(tmp, dpi=200, format="png")
            os.replace(tmp, out)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{out}: cannot write: {e.strerror or e}") from None
    emit = log or _LOG.info
    for line in format_best_lines(columns, rows[j], str(path)):
        emit(line)
    return out


def best_result_lines(csv_path: str | Path) -> list[str]:
    """The "Best results from row j of <csv>:" lines that plot_evolve logs, without plotting."""
    path = Path(csv_path)
    columns, rows = read_evolve_csv(path)
    j = best_row_index(np.array([r.fitness for r in rows]),
                       np.array([r.eligible for r in rows], dtype=bool))
    if j is None:
        raise StoreError(f"{path}: no row with a finite fitness")
    return format_best_lines(columns, rows[j], str(path))
