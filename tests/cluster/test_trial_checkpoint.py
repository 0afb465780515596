"""Classic trial checkpoints: a good state.pt loads back exactly; a corrupt one is a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from yolo_ray.cluster.trainable import CKPT_STATE, read_trial_state


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
