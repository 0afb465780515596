"""A worker's death reported twice by Tune is handled once (fake controller; the real-Ray
case is tests/cluster/test_pbt_member_failure.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from yolo_ray.cluster.tune_failures import count_each_failure_once
from yolo_ray.config.load import load_hyp


class Trial:
    """Hashable and weak-referenceable, as Tune's Trial."""

    def __init__(self, name: str) -> None:
        self.name = name


class Controller:
    """The part of TuneController that failures go through."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []
        self._resetting_trials: set[Any] = set()

    def _trial_task_failure(self, trial: Any, exception: Exception) -> None:
        self.handled.append((trial.name, str(exception)))


def test_the_same_failure_is_handled_once_and_ends_the_reset():
    ctl = Controller()
    before = dict(ctl.__dict__)
    trial, other = Trial("t0"), Trial("t1")
    ctl._resetting_trials.add(trial)
    count_each_failure_once(SimpleNamespace(_tune_controller=ctl))  # as schedulers get it
    count_each_failure_once(ctl)                                   # twice: wrapped once
    died = RuntimeError("worker died")
    ctl._trial_task_failure(trial, exception=died)  # the actor's failure ...
    ctl._trial_task_failure(trial, died)            # ... and the same, as the task's
    ctl._trial_task_failure(other, died)            # another trial's report counts
    ctl._trial_task_failure(trial, RuntimeError("again, later"))  # a new failure counts
    assert ctl.handled == [("t0", "worker died"), ("t1", "worker died"), ("t0", "again, later")]
    assert ctl._resetting_trials == set()
    assert type(ctl).__name__ == "OnceFailingController" and type(ctl).__mro__[1] is Controller
    assert ctl.__dict__.keys() == before.keys()  # Tune snapshots the instance dict


def test_the_classic_scheduler_installs_it(tmp_path):
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.cluster.tuner import build_scheduler

    request = EvolveRequest(run_dir=tmp_path, data="d.yaml", hyp=load_hyp(None),
                            strategy="classic")
    ctl = Controller()
    build_scheduler(request).on_trial_add(SimpleNamespace(_tune_controller=ctl), None)
    trial, died = Trial("t0"), RuntimeError("worker died")
    ctl._trial_task_failure(trial, died)
    ctl._trial_task_failure(trial, died)
    assert ctl.handled == [("t0", "worker died")]
