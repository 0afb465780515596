"""plot_evolve: YOLOv5 layout on our and YOLOv5-made files, best-row lines, lazy imports."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolo_ray.errors import StoreError
from yolo_ray.evolve.plot import best_result_lines, log_density, plot_evolve
from yolo_ray.evolve.store import EvolutionStore
from yolo_ray.train.results import RESULT_KEYS

from .conftest import YOLOV5_COLUMNS, write_yolov5_csv


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_yolov5_csv_round_trips_through_seeding_and_plot(tmp_path: Path) -> None:
    src = tmp_path / "yolov5" / "evolve.csv"
    src.parent.mkdir()
    rows = write_yolov5_csv(src, 12)
    EvolutionStore(tmp_path / "run", YOLOV5_COLUMNS[7:]).seed_from_csv(src)
    csv = tmp_path / "run" / "evolve.csv"
    lines: list[str] = []
    out = plot_evolve(csv, log=lines.append)
    assert out == tmp_path / "run" / "evolve.png" and out.stat().st_size > 10_000
    assert _png_size(out) == (2000, 2400)                     # 10 x 12 in at 200 dpi
    fit = [0.1 * r[2] + 0.9 * r[3] for r in rows]
    j = int(np.argmax(fit))
    assert lines[0] == f"Best results from row {j} of {csv}:"
    assert lines[1] == f"{'lr0':>15}: {rows[j][7]:.3g}"
    assert len(lines) == 1 + len(YOLOV5_COLUMNS) - 7
    assert best_result_lines(csv) == lines
    assert best_result_lines(src) == [lines[0].replace(str(csv), str(src))] + lines[1:]
    assert not list(csv.parent.glob(".*tmp*"))               # atomic: no temp left behind


def test_more_than_thirty_genes_and_nan_rows(tmp_path: Path) -> None:
    names = RESULT_KEYS + tuple(f"g{i}" for i in range(33))
    rng = np.random.default_rng(0)
    body = [",".join(f"{v:>20.5g}" for v in rng.random(len(names))) for _ in range(5)]
    body.append(",".join(f"{v:>20.5g}" for v in [float("nan")] * len(names)))  # YOLOv5 nan row
    csv = tmp_path / "evolve.csv"
    csv.write_text(",".join(f"{k:>20}" for k in names) + "\n" + "\n".join(body) + "\n")
    assert _png_size(plot_evolve(csv, log=lambda s: None)) == (2000, 2400)


def test_no_finite_fitness_is_an_error(tmp_path: Path) -> None:
    csv = tmp_path / "evolve.csv"
    csv.write_text(",".join(f"{k:>20}" for k in RESULT_KEYS + ("lr0",)) + "\n"
                   + ",".join(["nan"] * 8) + "\n")
    with pytest.raises(StoreError, match="no row with a finite fitness"):
        plot_evolve(csv)


def test_log_density_is_higher_where_points_crowd() -> None:
    x = np.array([0.0, 0.0, 0.0, 1.0])
    y = np.array([0.5, 0.5, 0.5, 0.9])
    c = log_density(x, y, 20)
    assert c[0] == pytest.approx(np.log(3)) and c[3] == 0.0


def test_evolve_imports_no_torch_ray_or_matplotlib() -> None:
    code = ("import sys, yolo_ray.evolve.space, yolo_ray.evolve.operators, yolo_ray.evolve.ga, "
            "yolo_ray.evolve.store, yolo_ray.evolve.plot;"
            "print(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'torch', 'ray', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
