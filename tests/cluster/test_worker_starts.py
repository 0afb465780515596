"""A trial whose own new worker is starting is left to it, not handed a reused one."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from yolo_ray.cluster import scheduler as pbt_scheduler
from yolo_ray.cluster import tune_failures, worker_starts
from yolo_ray.cluster.tune_failures import count_each_failure_once
from yolo_ray.cluster.tuner import _FIFO
from yolo_ray.cluster.worker_starts import (LeaveStartingTrials, leave_starting_workers,
                                            own_worker_starting)

from .member_trainables import epoch_member, fit_population, one_epoch_rounds


class Controller:
    """The TuneController parts read: trial -> tracked actor, Ray actors placed, started."""

    def __init__(self, trials: list[Any]) -> None:
        self.trials = trials
        self._trial_to_actor: dict[Any, str] = {}
        self._actor_manager = SimpleNamespace(_live_actors_to_ray_actors_resources={})
        self._started_actors: set[str] = set()

    def get_trials(self) -> list[Any]:
        return self.trials

    def give(self, trial: Any, actor: str, *, placed: bool, started: bool = False) -> None:
        self._trial_to_actor[trial] = actor
        if placed:
            self._actor_manager._live_actors_to_ray_actors_resources[actor] = ("handle", None)
        if started:
            self._started_actors.add(actor)


class FakeTrial:
    def __init__(self, status: str) -> None:
        self.status = status


def trial(status: str) -> FakeTrial:
    return FakeTrial(status)


def test_only_a_placed_worker_not_yet_started_counts_as_starting():
    a, b, c, d = (trial(Trial.PENDING) for _ in range(4))
    ctl = Controller([a, b, c, d])
    ctl.give(b, "b", placed=False)               # waiting for a slot
    ctl.give(c, "c", placed=True)                # process starting
    ctl.give(d, "d", placed=True, started=True)  # up
    assert [own_worker_starting(ctl, t) for t in (a, b, c, d)] == [False, False, True, False]
    wrapper = SimpleNamespace(_tune_controller=ctl)  # what Tune hands a scheduler
    assert own_worker_starting(wrapper, c)
    del ctl._started_actors  # a Tune without the parts: the old behaviour
    assert not own_worker_starting(ctl, c)


def test_fifo_skips_trials_whose_worker_is_starting():
    starting, waiting, paused = trial(Trial.PENDING), trial(Trial.PENDING), trial(Trial.PAUSED)
    ctl = Controller([trial(Trial.TERMINATED), starting, waiting, paused])
    ctl.give(starting, "s", placed=True)
    ctl.give(waiting, "w", placed=False)
    sched = _FIFO()
    assert FIFOScheduler().choose_trial_to_run(ctl) is starting  # Ray's choice
    assert sched.choose_trial_to_run(ctl) is waiting
    waiting.status = Trial.RUNNING
    assert sched.choose_trial_to_run(ctl) is paused
    paused.status = Trial.RUNNING
    assert sched.choose_trial_to_run(ctl) is None
    assert isinstance(sched, LeaveStartingTrials)


class Reusing(Controller):
    """A controller whose cached-worker hand-out and failure handler record their calls."""

    def __init__(self, trials: list[Any]) -> None:
        super().__init__(trials)
        self.reused: list[Any] = []
        self.failures: list[Exception] = []

    def _maybe_reuse_cached_actor(self, trial: Any) -> bool:
        self.reused.append(trial)
        return True

    def _trial_task_failure(self, trial: Any, exception: Exception) -> None:
        self.failures.append(exception)


@pytest.mark.parametrize("order", ["leave first", "count first"])
def test_the_controller_keeps_cached_workers_from_starting_trials(order):
    starting, waiting = trial(Trial.PENDING), trial(Trial.PENDING)
    ctl = Reusing([starting, waiting])
    ctl.give(starting, "s", placed=True)
    ctl.give(waiting, "w", placed=False)
    mends = [leave_starting_workers, count_each_failure_once]
    for mend in (mends if order == "leave first" else mends[::-1]) * 2:  # each added once
        mend(SimpleNamespace(_tune_controller=ctl))
    assert ctl._maybe_reuse_cached_actor(starting) is False
    assert ctl._maybe_reuse_cached_actor(waiting) is True
    assert ctl.reused == [waiting]
    boom = RuntimeError("worker died")
    ctl._trial_task_failure(waiting, boom)
    ctl._trial_task_failure(waiting, boom)  # Ray's second report of the same death
    assert ctl.failures == [boom]
    mro = type(ctl).__mro__
    assert sum(c in worker_starts._LEAVING.values() for c in mro) == 1
    assert sum(c in tune_failures._ONCE.values() for c in mro) == 1


# ----------------------------------------------------------------------------- real Ray
MEMBERS, SLOTS, EPOCHS = 4, 2, 2


def slow_starting_member(steps: Path) -> Any:
    """Every worker process but the first takes 5 s to set up (a busy box); epochs take
    2 s, so the first worker is free again while the second starts, and long enough for Ray
    to give a freed slot to the next member's request (it took over 1 s in some runs)."""
    def train_epoch(self: Any) -> dict:
        time.sleep(2.0)
        self.epoch += 1
        (steps / f"{self.member}-{self.epoch}").write_text(str(os.getpid()))
        return {"epoch": self.epoch, "fitness": self.epoch + 0.1 * self.member,
                "done": self.epoch >= EPOCHS}

    class Member(epoch_member(train_epoch)):
        def setup(self, config: dict) -> None:
            try:
                os.close(os.open(steps / "first", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                time.sleep(5.0)
            super().setup(config)

    return Member


SCHEDULERS = {"pbt": one_epoch_rounds, "classic fifo": _FIFO}


def workers_placed(tmp_path: Path, strategy: str) -> int:
    """Run MEMBERS trials (PBT members, or classic trials of EPOCHS epochs) on SLOTS slots;
    how many worker actors Ray created (given a slot, whether or not their process got as
    far as setting up)."""
    import ray
    from ray._private import state

    steps = tmp_path / "steps"
    steps.mkdir()
    created: list[int] = []

    def count() -> None:
        created.append(sum(a.get("ActorClassName", "").endswith("Trainable")
                           for a in state.actors().values()))

    grid = fit_population(slow_starting_member(steps), MEMBERS, SCHEDULERS[strategy](),
                          tmp_path / "ray", slots=SLOTS, on_end=count)
    assert [grid[i].metrics["epoch"] for i in range(len(grid))] == [EPOCHS] * MEMBERS
    assert len(list(steps.glob("*-*"))) == MEMBERS * EPOCHS
    assert not ray.is_initialized()
    return created[0]


@pytest.mark.ray
@pytest.mark.parametrize("strategy", SCHEDULERS)
def test_a_starting_worker_is_not_killed_for_a_kept_one(tmp_path, strategy):
    assert workers_placed(tmp_path, strategy) == SLOTS


@pytest.mark.ray
@pytest.mark.parametrize("strategy", SCHEDULERS)
def test_without_the_guard_tune_kills_starting_workers(tmp_path, monkeypatch, strategy):
    # What the guard avoids, and the check that the test above can fail: the first worker
    # frees up while the others start; Tune hands it to the member whose own worker is
    # starting, kills that process, and the freed slot starts the next member's.
    monkeypatch.setattr(pbt_scheduler, "own_worker_starting", lambda *a: False)
    monkeypatch.setattr(worker_starts, "own_worker_starting", lambda *a: False)
    assert workers_placed(tmp_path, strategy) > SLOTS
