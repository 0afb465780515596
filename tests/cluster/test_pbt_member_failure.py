"""A PBT member that fails for good while the others wait at a round barrier (real Ray)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from yolo_ray.cluster.scheduler import MEMBER_KEY

from .member_trainables import epoch_member, fit_population, one_epoch_rounds

MEMBERS, EPOCHS, BROKEN = 3, 3, 2


def member_trainable(steps: Path) -> Any:
    """Member BROKEN raises in its second epoch on every attempt, after the others have
    reported that round and paused at its barrier."""
    def train_epoch(self: Any) -> dict:
        if self.member == BROKEN and self.epoch == 1:
            time.sleep(1.0)
            raise RuntimeError("member 2 breaks in round 1")
        time.sleep(0.2)
        self.epoch += 1
        (steps / f"{self.member}-{self.epoch}").write_text(str(os.getpid()))
        return {"epoch": self.epoch, "fitness": self.epoch + 0.1 * self.member,
                "done": self.epoch >= EPOCHS}

    return epoch_member(train_epoch)


@pytest.mark.ray
def test_members_left_finish_when_one_fails_for_good_at_a_barrier(tmp_path, caplog):
    steps = tmp_path / "steps"
    steps.mkdir()
    # The budget only bounds the test: Ray alone waits here forever (members paused at the
    # barrier, nobody left to report); checked: it then ends at 150 s with members 0 and 1
    # stuck at epoch 2.
    grid = fit_population(member_trainable(steps), MEMBERS, one_epoch_rounds(),
                          tmp_path / "ray", max_failures=1, time_budget_s=150)
    by_member = {grid[i].config[MEMBER_KEY]: grid[i] for i in range(len(grid))}
    assert by_member[BROKEN].error is not None
    assert [by_member[m].metrics["epoch"] for m in (0, 1)] == [EPOCHS, EPOCHS]
    assert all(by_member[m].error is None for m in (0, 1))
    assert sorted(p.name for p in steps.iterdir()) == sorted(
        [f"{m}-{e}" for m in (0, 1) for e in range(1, EPOCHS + 1)] + [f"{BROKEN}-1"])
    assert any(f"member(s) [{BROKEN}] failed for good; round 1 ends with the 2 members left"
               in r.message for r in caplog.records)


def flaky_trainable(steps: Path) -> Any:
    """Member 2 raises once, in its second epoch; every epoch trained appends a line."""
    def train_epoch(self: Any) -> dict:
        flag = steps / "raised"
        if self.member == BROKEN and self.epoch == 1 and not flag.exists():
            flag.touch()
            raise RuntimeError("member 2 breaks once")
        time.sleep(0.2)
        self.epoch += 1
        with open(steps / f"member-{self.member}", "a") as f:
            f.write(f"{self.epoch}\n")
        return {"epoch": self.epoch, "fitness": self.epoch + 0.1 * self.member,
                "done": self.epoch >= EPOCHS}

    return epoch_member(train_epoch)


@pytest.mark.ray
def test_a_retried_member_does_not_rewind_the_others(tmp_path):
    # Tune re-adds a trial it retries (on_trial_add again); that once read as a Tuner.restore
    # and sent every member back to the round's start to train it again.
    steps = tmp_path / "steps"
    steps.mkdir()
    grid = fit_population(flaky_trainable(steps), MEMBERS, one_epoch_rounds(),
                          tmp_path / "ray", max_failures=1)
    assert (steps / "raised").exists()
    assert all(grid[i].error is None for i in range(MEMBERS))
    for m in range(MEMBERS):  # each epoch trained once, in order: nobody went back
        epochs = (steps / f"member-{m}").read_text().split()
        assert epochs == [str(e) for e in range(1, EPOCHS + 1)], (m, epochs)


def dies_in_reset_trainable(steps: Path) -> Any:
    """Member 0's kept worker dies (the whole process) the first time a member takes it over
    at a round barrier, i.e. inside Tune's reset of a cached actor."""
    def train_epoch(self: Any) -> dict:
        time.sleep(0.2)
        self.epoch += 1
        return {"epoch": self.epoch, "fitness": self.epoch + 0.1 * self.member,
                "done": self.epoch >= EPOCHS}

    class DiesInReset(epoch_member(train_epoch)):
        def setup(self, config: dict) -> None:
            super().setup(config)
            self.ready = True  # later reset_config calls are Tune's resets

        def reset_config(self, new_config: dict) -> bool:
            flag = steps / "died"
            if getattr(self, "ready", False) and int(new_config[MEMBER_KEY]) == 0 and \
                    not flag.exists():
                flag.write_text(str(os.getpid()))
                os._exit(1)  # as a machine or OOM kill would: no exception, no cleanup
            return super().reset_config(new_config)

    return DiesInReset


@pytest.mark.ray
def test_a_worker_dying_in_its_reset_costs_one_retry_not_the_member(tmp_path):
    # Ray reports the death twice (the actor's failure, then the reset task's); the member
    # is PENDING during a reset, and Tune ended it for good on the second report.
    steps = tmp_path / "steps"
    steps.mkdir()
    grid = fit_population(dies_in_reset_trainable(steps), 2, one_epoch_rounds(),
                          tmp_path / "ray", max_failures=2)
    assert (steps / "died").exists()
    errors = list((tmp_path / "ray").rglob("error.txt"))
    assert len(errors) == 1 and "Failure # 1" in errors[0].read_text()  # one retry
    assert all(grid[i].error is None and grid[i].metrics["epoch"] == EPOCHS for i in range(2))
