"""Classic trial checkpoints: a good state.pt loads back exactly; a corrupt one is a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from yolo_ray.cluster.trainable import CKPT_STATE, checkpoint_due, read_trial_state


def saved_state(folder: Path) -> dict:
    state = {"epoch": 3, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "best": 0.25}
    torch.save(state, folder / CKPT_STATE)
    return state


def test_a_good_checkpoint_loads_back_exactly(tmp_path: Path) -> None:
    state = saved_state(tmp_path)
    loaded = read_trial_state(tmp_path)
    assert loaded["epoch"] == 3 and loaded["best"] == 0.25
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])


@pytest.mark.parametrize("damage", ["truncate", "garble", "missing"])
def test_a_corrupt_checkpoint_warns_with_its_path_and_restarts(tmp_path: Path, caplog,
                                                               damage: str) -> None:
    saved_state(tmp_path)
    path = tmp_path / CKPT_STATE
    data = path.read_bytes()
    if damage == "truncate":  # a disk that filled up mid-write
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garble":
        path.write_bytes(b"not a checkpoint" + data[16:])
    else:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="yolo_ray"):
        assert read_trial_state(tmp_path) is None
    [record] = [r for r in caplog.records if r.name == "yolo_ray"]
    assert record.getMessage().startswith(f"{path}: corrupt checkpoint (")
    assert record.getMessage().endswith("the trial restarts at epoch 0")


def test_a_malicious_pickle_is_refused_not_run(tmp_path: Path, caplog) -> None:
    """weights_only=True: a checkpoint that would execute code on load is refused."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Evil()}, tmp_path / CKPT_STATE)
    with caplog.at_level(logging.WARNING, logger="yolo_ray"):
        assert read_trial_state(tmp_path) is None
    assert not marker.exists()


@pytest.mark.parametrize("train_s, cost, budget, due", [
    (0.0, None, 0.05, True),     # the first one measures the cost
    (1.9, 0.1, 0.05, False),     # 0.1 s would be 5.3 % of 1.9 s
    (2.0, 0.1, 0.05, True),      # exactly the budget
    (0.01, 5.0, 1.0, True),      # budget 1: every epoch
    (10.0, 0.2, 0.01, False),
    (20.0, 0.2, 0.01, True),
])
def test_checkpoints_keep_within_their_time_budget(train_s: float, cost: float | None,
                                                   budget: float, due: bool) -> None:
    assert checkpoint_due(train_s, cost, budget) is due


def test_epochs_between_checkpoints_follow_the_budget() -> None:
    """1 s epochs, 0.2 s checkpoints, 5 %: after the first, one checkpoint every 4 epochs."""
    since, cost, saved = 0.0, None, []
    for epoch in range(13):
        since += 1.0
        if checkpoint_due(since, cost, 0.05):
            saved.append(epoch)
            since, cost = 0.0, 0.2
    assert saved == [0, 4, 8, 12]
    assert len(saved) * 0.2 <= 0.05 * 13 + 0.2  # the first one is the only overshoot
