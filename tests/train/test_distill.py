"""Distillation: the soft-target loss's values and gradients, and a Trainer that follows a teacher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from yolo_ray.config.load import load_hyp, load_model_yaml
from yolo_ray.config.schema import TrainSettings
from yolo_ray.errors import ConfigError
from yolo_ray.models.yolo import build_model
from yolo_ray.train.checkpoint import save_checkpoint
from yolo_ray.train.distill import distill_loss
from yolo_ray.train.trainer import Trainer
from yolo_ray.train.val_run import load_model_for_inference


def _levels(seed: int, nc: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [2 * torch.randn(2, 3, n, n, 5 + nc, generator=g) for n in (8, 4, 2)]


def test_a_perfect_copy_scores_zero_and_others_more():
    t = _levels(0)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(_levels(1), t)) > 0.1


def test_gradient_descent_moves_the_student_to_the_teacher():
    t = _levels(0)
    s = [x.clone().requires_grad_(True) for x in _levels(1)]
    first = float(distill_loss(s, t).detach())
    opt = torch.optim.SGD(s, lr=50.0)
    for _ in range(200):
        opt.zero_grad()
        distill_loss(s, t).backward()
        opt.step()
    assert float(distill_loss(s, t).detach()) < 0.05 * first
    # objectness is learnt everywhere; the teacher's confident anchors get their boxes too
    conf = t[0][..., 4] > 2.0
    assert (s[0][..., 4] - t[0][..., 4]).abs().mean() < 0.5
    assert (s[0][..., :4][conf] - t[0][..., :4][conf]).abs().mean() < 0.5


def test_background_anchors_carry_no_box_or_class_target():
    """Where the teacher sees nothing (objectness ~ 0), the student's box and class outputs
    are free: changing them moves the loss by almost nothing."""
    t = _levels(0)
    for x in t:
        x[..., 4] = -30.0
    s = [x.clone() for x in t]
    s[0][..., :4] += 5.0
    s[0][..., 5:] -= 5.0
    assert float(distill_loss(s, t)) < 1e-6
    s[0][..., 4] = 5.0  # objectness is learnt everywhere
    assert float(distill_loss(s, t)) > 0.1


def test_mismatched_heads_are_refused():
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(_levels(0, nc=3), _levels(0, nc=4))


def _settings(data: Path, cfg: Path, project: Path, **kw) -> TrainSettings:
    base = dict(data=str(data), cfg=str(cfg), epochs=2, batch_size=8, imgsz=64, workers=0,
                device="cpu", project=str(project), name="exp", progress=False, seed=3,
                noval=True, tensorboard=False)
    base.update(kw)
    return TrainSettings(**base)


def _mean_objectness(weights: Path) -> float:
    model = load_model_for_inference(str(weights)).float().eval()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return float(model(x)[0][..., 4].mean())


def test_trainer_with_distill_follows_the_teacher(synthetic_data, tiny_model_yaml, tmp_path):
    """A teacher that sees objects everywhere (objectness bias +4): the same run ends with a
    clearly higher objectness with --distill than without (detection loss alone lowers it)."""
    yaml = load_model_yaml(str(tiny_model_yaml))
    teacher = build_model(yaml, nc=3)
    with torch.no_grad():
        for conv in teacher.model[-1].m:
            conv.bias.view(teacher.model[-1].na, -1)[:, 4] = 4.0
    path = save_checkpoint(tmp_path / "teacher.pt", {"model": teacher.state_dict(),
                                                      "yaml": yaml, "nc": 3, "epoch": -1})
    hyp = load_hyp().replace(warmup_epochs=0.0)  # 16 images: every step at the full rate
    run = dict(batch_size=64, epochs=10)  # one optimizer step per epoch
    plain = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path, name="plain",
                              tensorboard=True, **run), hyp).fit().last
    taught = Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path, name="taught",
                               distill=str(path), distill_gain=5.0, tensorboard=True, **run),
                     hyp).fit().last
    # gradient clipping (norm 10) bounds each step: ~0.1 of logit per step towards +4
    gap = math.log(_mean_objectness(taught)) - math.log(_mean_objectness(plain))
    assert gap > 0.5
    # The teacher term is in TensorBoard (not in results.csv: YOLOv5's columns) and shrinks.
    taught_curve = _scalars(tmp_path / "taught", "train/distill_loss")
    assert len(taught_curve) == 10 and all(v > 0 for v in taught_curve)
    assert taught_curve[-1] < 0.9 * taught_curve[0]  # 79 -> 66 in 10 clipped steps
    assert _scalars(tmp_path / "plain", "train/distill_loss") == []
    header = (tmp_path / "taught" / "results.csv").read_text().splitlines()[0]
    assert "distill" not in header


def _scalars(run: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return []
    return [e.value for e in acc.Scalars(tag)]


def test_distill_teacher_must_match_the_head(synthetic_data, tiny_model_yaml, tmp_path):
    yaml = load_model_yaml(str(tiny_model_yaml))
    other = build_model(yaml, nc=5)  # the synthetic set has 3 classes
    bad = save_checkpoint(tmp_path / "nc5.pt", {"model": other.state_dict(), "yaml": yaml,
                                                 "nc": 5, "epoch": -1})
    with pytest.raises(ConfigError, match=r"--distill .*nc5\.pt: the teacher's head"):
        Trainer(_settings(synthetic_data, tiny_model_yaml, tmp_path, distill=str(bad)),
                load_hyp()).setup()
    with pytest.raises(ConfigError, match="--distill-gain"):
        _settings(synthetic_data, tiny_model_yaml, tmp_path, distill=str(bad), distill_gain=-1)
