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


def test_calib_sweep_reports_residuals_and_held_out_map(synthetic_data: Path, tiny_model_yaml,
                                                        tmp_path: Path, capsys):
    """`--calib-sweep`: one row per calibration size with its own image count, residuals on
    seen and held-out images, the worst layer and a held-out mAP."""
    from bench.prune import main
    from yolo_ray.models.yolo import build_model
    from yolo_ray.train.checkpoint import save_checkpoint

    model = build_model(str(tiny_model_yaml), nc=3)
    weights = save_checkpoint(tmp_path / "w.pt", {"model": model.state_dict(),
                                                  "yaml": dict(model.yaml), "nc": 3,
                                                  "names": ["a", "b", "c"], "epoch": -1})
    assert main(["--weights", str(weights), "--data", str(synthetic_data), "--img", "64",
                 "--calib-sweep", "2", "4", "--amounts", "0.5", "--scopes", "layer",
                 "--divisor", "1", "--batch", "4", "--threads", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| channel/layer")]
    assert [r.split(" | ")[2] for r in rows] == ["2", "4"]
    for r in rows:
        seen, unseen = (float(v) for v in r.split(" | ")[3:5])
        assert 0.0 <= seen < unseen  # 2-4 random images: the refit fits them better
        assert 0.0 <= float(r.split(" | ")[6].rstrip(" |")) <= 1.0
