"""The Trainer end to end on tiny synthetic data: files, formats, resume, hooks, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolo_ray.config.load import load_hyp
from yolo_ray.config.schema import TrainSettings
from yolo_ray.errors import ConfigError
from yolo_ray.train.run_log import RESULTS_CSV_KEYS
from yolo_ray.train.trainer import Trainer


def _settings(data: Path, cfg: Path, project: Path, **kw) -> TrainSettings:
    base = dict(data=str(data), cfg=str(cfg), epochs=2, batch_size=8, imgsz=64, workers=0,
                device="cpu", project=str(project), name="exp", progress=False, seed=3)
    base.update(kw)
    return TrainSettings(**base)


def test_two_epochs_write_yolov5_files(synthetic_data, tiny_model_yaml, tmp_path):
    seen = []
    trainer = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path), load_hyp(),
                      hooks=[seen.append])
    result = trainer.fit()
    run = tmp_path / "exp"
    lines = (run / "results.csv").read_text().splitlines()
    assert lines[0] == ",".join("%20s" % k for k in RESULTS_CSV_KEYS)
    assert len(lines) == 3 and all(len(x.split(",")) == 14 for x in lines)
    assert [r.epoch for r in seen] == [0, 1] and result.epochs_run == 2
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / "weights" / name, weights_only=True)
        assert ckpt["model"]["model.24.anchors"].shape == (3, 3, 2)
        assert ckpt["nc"] == 3 and ckpt["yaml"]["width_multiple"] == 0.0625
    assert "train_state" in torch.load(run / "weights" / "last.pt", weights_only=True)
    assert "train_state" not in torch.load(run / "weights" / "best.pt", weights_only=True)
    assert list(run.glob("events.out.tfevents.*"))


def test_tensorboard_holds_epoch_scalars(synthetic_data, tiny_model_yaml, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path, epochs=1), load_hyp()).fit()
    acc = EventAccumulator(str(tmp_path / "exp"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/box_loss", "metrics/mAP_0.5", "x/lr0", "params/trainable"} <= tags


def test_resume_continues_exactly(synthetic_data, tiny_model_yaml, tmp_path):
    hyp = load_hyp()
    straight = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path / "a"), hyp,
                       write_files=False)
    straight.fit()
    first = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path / "b"), hyp)
    first.setup()
    first.train_epoch()  # then "crash": only last.pt of epoch 0 survives
    last = tmp_path / "b" / "exp" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    resumed = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path / "b",
                                weights=str(last), exist_ok=True), hyp,
                      save_dir=tmp_path / "b" / "exp")
    resumed.setup(resume_state=ckpt)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len((tmp_path / "b" / "exp" / "results.csv").read_text().splitlines()) == 3


def test_early_stopping_follows_patience(synthetic_data, tiny_model_yaml, tmp_path):
    seen = []
    trainer = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path, epochs=5,
                                patience=1, noval=True), load_hyp(), hooks=[seen.append],
                      write_files=False)
    trainer.fit()
    assert all(r.validated for r in seen)  # patience forces validation (possible stop)
    best = -1.0
    for r in seen:
        improved = r.fitness > best
        best = max(best, r.fitness)
        # patience 1: the run stops right after the first epoch without improvement
        assert r.stop == (not improved and r.epoch < 4)
        if r.stop:
            assert r is seen[-1]


def test_bad_settings_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="--epochs must be >= 1"):
        TrainSettings(data="x.yaml", epochs=0)
    with pytest.raises(ConfigError, match="--prune must be in"):
        TrainSettings(data="x.yaml", prune_amount=1.0)
    with pytest.raises(ConfigError, match="data file not found"):
        Trainer(TrainSettings(data=str(tmp_path / "none.yaml"), cfg="yolov5n"),
                load_hyp()).setup()
