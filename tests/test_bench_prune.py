"""bench/prune.py's held-out split: no row is validated on an image the refit or a fine-tune saw."""

from __future__ import annotations

from pathlib import Path

from bench.prune import holdout_split
from yolo_ray.config.load import load_data_config
from yolo_ray.data.loader import create_val_loader
from yolo_ray.data.files import list_image_files


def test_holdout_split_halves_the_training_images_without_overlap(synthetic_data: Path,
                                                                   tmp_path: Path):
    images = list_image_files(load_data_config(synthetic_data).train)
    split = load_data_config(holdout_split(str(synthetic_data), tmp_path / "split"))
    fit, held = list_image_files(split.train), list_image_files(split.val)
    assert fit == images[0::2] and held == images[1::2]
    assert len(fit) == len(held) == len(images) // 2 == 8
    assert not set(fit) & set(held)
    assert split.names == load_data_config(synthetic_data).names
    # The split's val loader finds the held-out images' labels where they always were.
    loader = create_val_loader(split, 64, 4, workers=0, log=lambda *a, **k: None)
    assert len(loader.dataset) == 8
    assert sum(len(t) for t in loader.dataset.labels) > 0
