"""Stand-ins for the parts of Ray Tune's controller and trials that our PBT scheduler touches.

Shared by tests/cluster/test_scheduler.py and bench/pbt_driver.py: the real scheduler, store
and state file run against them, with no Ray workers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from yolo_ray.cluster.pbt_state import CKPT_META
from yolo_ray.cluster.scheduler import MEMBER_KEY, GAPopulationBasedTraining
from yolo_ray.evolve.space import SearchSpace
from yolo_ray.train.results import RESULT_KEYS

K = 2  # epochs per round


class FakeCheckpoint:
    """Stands in for ray.tune.Checkpoint: a path, truthy."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FakeCheckpoint({self.path})"


class FakeTrial:
    """The attributes of ray.tune.experiment.Trial that PBT touches."""

    def __init__(self, index: int, config: dict[str, Any], root: Path) -> None:
        self.trial_id = f"fake_{index:05d}"
        self.config = dict(config)
        self.evaluated_params: dict[str, Any] = {}
        self.experiment_tag = str(index)
        self.status = Trial.RUNNING
        self.last_result: dict[str, Any] = {}
        self.temporary_state = SimpleNamespace(saving_to=None)
        manager = SimpleNamespace(checkpoint_config=SimpleNamespace(num_to_keep=4),
                                  _latest_checkpoint_result=None)
        self.run_metadata = SimpleNamespace(checkpoint_manager=manager)
        self.local_experiment_path = self.local_dir = str(root)
        import pyarrow.fs as pafs

        self.storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(),
                                       trial_fs_path=str(root / self.trial_id))

    @property
    def checkpoint(self) -> Any:
        latest = self.run_metadata.checkpoint_manager._latest_checkpoint_result
        return latest.checkpoint if latest else None

    def is_finished(self) -> bool:
        return self.status in (Trial.TERMINATED, Trial.ERROR)

    def set_experiment_tag(self, tag: str) -> None:
        self.experiment_tag = tag

    def set_config(self, config: dict[str, Any]) -> None:
        self.config = config

    def __repr__(self) -> str:
        return self.trial_id


class FakeController:
    """The TuneController methods PBT calls; records saves and pauses."""

    search_alg = None

    def __init__(self, trials: list[FakeTrial]) -> None:
        self.trials = trials
        self.saved: list[str] = []
        self.paused: list[str] = []
        self.pause_saves: list[str] = []  # pauses that order a save of their own
        self.trained: list[str] = []  # next steps the scheduler started itself (held members)
        self._cached_trial_decisions: dict[str, str] = {}

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def get_live_trials(self) -> list[FakeTrial]:
        return [t for t in self.trials if not t.is_finished()]

    def _schedule_trial_save(self, trial: FakeTrial, result: dict | None = None) -> Any:
        self.saved.append(trial.trial_id)
        return FakeCheckpoint(f"{trial.trial_id}/epoch{result['epoch'] if result else '?'}")

    def _schedule_trial_train(self, trial: FakeTrial) -> None:
        self.trained.append(trial.trial_id)

    def pause_trial(self, trial: FakeTrial, should_checkpoint: bool = True) -> None:
        if not should_checkpoint and trial.temporary_state.saving_to is not None:
            # Tune stops a trial that is saving with a STOP cached for after that save
            self._cached_trial_decisions[trial.trial_id] = TrialScheduler.STOP
        self.paused.append(trial.trial_id)
        if should_checkpoint:
            self.pause_saves.append(trial.trial_id)
        trial.status = Trial.PAUSED


def write_checkpoint(trial: FakeTrial, index: int, member: int, epoch: int) -> None:
    """A checkpoint folder in `trial`'s storage, as found on resume (meta.json only)."""
    folder = Path(trial.storage.trial_fs_path) / f"checkpoint_{index:06d}"
    folder.mkdir(parents=True)
    (folder / CKPT_META).write_text(json.dumps({"member": member, "epoch": epoch}))


def result(epoch: int, fit: float) -> dict[str, Any]:
    """A Tune result whose fitness (0.1·mAP50 + 0.9·mAP50-95) equals `fit`."""
    values = dict(zip(RESULT_KEYS, (0.5, 0.5, fit, fit, 0.05, 0.05, 0.01)))
    return {"epoch": epoch, "fitness": fit, **values}


def make_scheduler(space: SearchSpace, hyp: Any, tmp_path: Path, **kw: Any
                   ) -> GAPopulationBasedTraining:
    kw.setdefault("log_config", False)
    kw.setdefault("hold_at_barrier", False)  # the pausing path; test_pbt_hold asks for it
    return GAPopulationBasedTraining(space, hyp, K, seed=kw.pop("seed", 0), **kw)


def add_population(sched: GAPopulationBasedTraining, n: int, root: Path
                   ) -> tuple[FakeController, list[FakeTrial]]:
    trials = [FakeTrial(i, {MEMBER_KEY: i, "settings": {"epochs": 3 * K}}, root) for i in range(n)]
    controller = FakeController(trials)
    for t in trials:
        sched.on_trial_add(controller, t)
    assert sched.choose_trial_to_run(controller) is None  # Tune's next step: all running
    return controller, trials


def run_round(sched: GAPopulationBasedTraining, controller: FakeController,
              trials: list[FakeTrial], epoch: int, fits: list[float]) -> list[str]:
    """Every trial reports `epoch`; returns the decisions (the controller pauses on PAUSE)."""
    decisions = []
    for t, f in zip(trials, fits):
        res = result(epoch, f)
        for e in range(epoch - K + 1, epoch):  # epochs inside the round: PBT must ignore them
            assert sched.on_trial_result(controller, t, result(e, 0.0)) == TrialScheduler.CONTINUE
        d = sched.on_trial_result(controller, t, res)
        t.last_result = res
        if d == TrialScheduler.PAUSE and t.status == Trial.RUNNING:
            t.run_metadata.checkpoint_manager._latest_checkpoint_result = SimpleNamespace(
                checkpoint=FakeCheckpoint(f"{t.trial_id}/epoch{epoch}"), metrics=res)
            t.status = Trial.PAUSED
        decisions.append(d)
    for t in trials:  # the controller starts everyone on the next round
        t.status = Trial.RUNNING
    return decisions
