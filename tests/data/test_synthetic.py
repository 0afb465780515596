"""The generated shapes dataset: layout, determinism, label correctness."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo_ray.config.load import load_data_config
from yolo_ray.data.files import list_image_files
from yolo_ray.data.scan import scan_labels
from yolo_ray.data.synthetic import SHAPE_COLOURS, write_synthetic_dataset
from yolo_ray.errors import ConfigError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(label_file: Path) -> np.ndarray:
    return np.array([line.split() for line in label_file.read_text().splitlines()],
                    dtype=float).reshape(-1, 5)


def test_layout_yaml_and_scan(tmp_path: Path) -> None:
    y = write_synthetic_dataset(tmp_path / "ds", n_train=20, n_val=10, imgsz=96, seed=1)
    cfg = load_data_config(y)
    assert cfg.names == ("square", "circle", "triangle") and cfg.root == (tmp_path / "ds").resolve()
    assert "path: ." in y.read_text()
    for split, n, bg in (("train", 20, 2), ("val", 10, 1)):
        files = list_image_files(getattr(cfg, split))
        assert len(files) == n and {p.suffix for p in files} == {".jpg", ".png"}
        scan = scan_labels(files, cfg.nc, None, log=lambda m: None)
        assert (len(scan.images), scan.backgrounds, scan.corrupt) == (n, bg, 0)
        assert all(1 <= len(x) <= 4 for x in scan.labels if len(x))
        assert max(scan.shapes.max(1)) == 96 and scan.shapes.min() == 72  # some 3:4 images


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_synthetic_dataset(tmp_path / "a", n_train=6, n_val=2, imgsz=64, seed=5).parent
    b = write_synthetic_dataset(tmp_path / "b", n_train=6, n_val=2, imgsz=64, seed=5).parent
    c = write_synthetic_dataset(tmp_path / "c", n_train=6, n_val=2, imgsz=64, seed=6).parent
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    write_synthetic_dataset(a, n_train=3, n_val=2, imgsz=64, seed=5)  # regenerating smaller
    assert len(list((a / "images" / "train").iterdir())) == 3


def test_boxes_sit_on_shapes_of_their_class(tmp_path: Path) -> None:
    classes = tuple(SHAPE_COLOURS)
    y = write_synthetic_dataset(tmp_path, n_train=30, n_val=1, imgsz=128, seed=2, classes=classes)
    cfg = load_data_config(y)
    palette = np.array([SHAPE_COLOURS[c] for c in classes], dtype=float)
    seen, checked = set(), 0
    for img_path in list_image_files(cfg.train):
        img = cv2.imread(str(img_path)).astype(float)
        h, w = img.shape[:2]
        lab = img_path.parent.parent.parent / "labels" / "train" / (img_path.stem + ".txt")
        for c, x, yc, bw, bh in _rows(lab):
            side = min(bw * w, bh * h)
            assert 0.1 * min(h, w) - 1 <= side <= 0.5 * min(h, w) + 2
            assert 0 <= x - bw / 2 and x + bw / 2 <= 1 and 0 <= yc - bh / 2 and yc + bh / 2 <= 1
            centre = img[int(yc * h), int(x * w)]
            assert np.abs(palette - centre).sum(1).argmin() == int(c)
            seen.add(int(c))
            checked += 1
    assert checked > 30 and seen == set(range(len(classes)))


def test_rejects_unknown_classes_and_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown synthetic class 'hexagon'|unknown synthetic class hexagon"):
        write_synthetic_dataset(tmp_path, classes=("square", "hexagon"))
    with pytest.raises(ConfigError, match="imgsz >= 32"):
        write_synthetic_dataset(tmp_path, imgsz=16)
