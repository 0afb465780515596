"""Real learning: training from scratch reaches a useful mAP (slow; run with -m slow)."""

from __future__ import annotations

import pytest

from yolo_ray.config.load import load_hyp
from yolo_ray.config.schema import TrainSettings
from yolo_ray.data.synthetic import write_synthetic_dataset
from yolo_ray.train.trainer import Trainer


@pytest.mark.slow
def test_yolov5n_learns_synthetic_shapes_from_scratch(tmp_path) -> None:
    """yolov5n, 512 synthetic images at 96 px, 20 epochs: mAP@0.5 >= 0.5.

    Measured on a 2-core CPU: mAP@0.5 0.52 at epoch 15 and 0.94 at epoch 22, about 5 s/epoch.
    """
    data = write_synthetic_dataset(tmp_path / "syn", n_train=512, n_val=64, imgsz=96, seed=0)
    settings = TrainSettings(data=str(data), cfg="yolov5n", epochs=20, batch_size=32, imgsz=96,
                             workers=1, device="cpu", cache="ram", progress=False,
                             project=str(tmp_path), name="conv")
    best = []
    Trainer(settings, load_hyp(), hooks=[lambda r: best.append(r.metrics.map50)]).fit()
    assert max(best) >= 0.5, best


@pytest.mark.slow
def test_finetune_yolov5n_on_coco128_keeps_map(tmp_path) -> None:
    """Fine-tuning the official yolov5n.pt on coco128 at 320 px for 5 epochs: no collapse.

    Measured: official weights 0.456 / 0.293 (mAP50 / mAP50-95, fused, val at 320); after 5
    epochs 0.475 / 0.290. YOLOv5 keeps about the same on this set.
    """
    from ..conftest import COCO128_YAML, YOLOV5N_PT

    if not (COCO128_YAML.exists() and YOLOV5N_PT.exists()):
        pytest.skip("needs ../shared (coco128 and yolov5n.pt)")
    settings = TrainSettings(data=str(COCO128_YAML), weights=str(YOLOV5N_PT), epochs=5,
                             batch_size=16, imgsz=320, workers=1, device="cpu", cache="ram",
                             progress=False, project=str(tmp_path), name="ft")
    seen = []
    Trainer(settings, load_hyp(), hooks=[seen.append]).fit()
    final = seen[-1].metrics
    assert final.map50 >= 0.43 and final.map >= 0.27, final
