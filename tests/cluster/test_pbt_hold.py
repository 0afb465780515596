"""Members held at a PBT round barrier on their workers instead of pausing (pbt_hold.py)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from yolo_ray.cluster.pbt_hold import HeldMembers
from yolo_ray.cluster.pbt_state import STATE_NAME
from yolo_ray.evolve.store import EvolutionStore

from .member_trainables import fit_population, one_epoch_rounds, quality_member
from .tune_fakes import K, add_population, make_scheduler, result, run_round

CONTINUE, NOOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.NOOP, TrialScheduler.PAUSE


# ----------------------------------------------------------------------------- the record
def test_held_members_are_at_the_barrier_until_it_passes():
    held = HeldMembers()
    held.hold("a", "save-a")
    held.hold("b", "save-b")
    assert held.waits("a") and held.saves["b"] == "save-b" and not held.waits("c")
    assert held.idle_one() == "a" and held.waits("a")  # handed over: still at the barrier
    held.forget("b")                                    # cloned over: its save stays
    assert held.saves["b"] == "save-b" and held.end_round() == []
    assert not held.waits("a") and not held.saves


def test_a_pickled_record_carries_the_setting_only():
    held = HeldMembers(enabled=False)
    held.hold("a", "save")
    copy = pickle.loads(pickle.dumps(held))
    assert not copy.enabled and not copy.saves and not copy.held


# ----------------------------------------------------------------------------- scheduler
def report(sched, controller, trial, epoch: int, fit: float) -> str:
    res = result(epoch, fit)
    trial.last_result = res
    return sched.on_trial_result(controller, trial, res)


def held_population(space, hyp, root: Path):
    store = EvolutionStore(root / "run", tuple(hyp.keys()))
    sched = make_scheduler(space, hyp, root, store=store, state_path=root / STATE_NAME,
                           hold_at_barrier=True)
    controller, trials = add_population(sched, 4, root)
    return store, sched, controller, trials


def test_members_wait_on_their_workers_with_the_same_decisions(space, hyp, tmp_path):
    fits = [0.4, 0.1, 0.3, 0.2]  # member 1 the worst (bottom 1 of 4), member 0 the best
    store, sched, controller, (m0, m1, m2, m3) = held_population(space, hyp, tmp_path / "h")

    decisions = [report(sched, controller, t, K, f) for t, f in zip((m0, m1, m2), fits)]
    m1.temporary_state.saving_to = object()  # its round-end save still in flight
    decisions.append(report(sched, controller, m3, K, fits[3]))

    assert decisions == [NOOP, NOOP, NOOP, CONTINUE]  # held; the last one trains on
    # Tune cached a STOP for m1 (stopped while saving) that it would apply to m1's next
    # save after its restart, ending the member: dropped.
    assert m1.trial_id not in controller._cached_trial_decisions
    assert controller.saved == [t.trial_id for t in (m0, m1, m2, m3)]  # round-end saves
    assert controller.paused == [m1.trial_id] and m1.status == Trial.PAUSED  # cloned over
    assert m1.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint.path == \
        f"{m0.trial_id}/epoch{K}"  # the parent's round-end save
    assert sorted(controller.trained) == sorted([m0.trial_id, m2.trial_id])  # no restore
    assert not sched._held.waits(m0) and sched.state.round == 1

    # The pausing scheduler, same reports: same plans and rows.
    store_p = EvolutionStore(tmp_path / "p" / "run", tuple(hyp.keys()))
    paused = make_scheduler(space, hyp, tmp_path / "p", store=store_p)
    ctl_p, trials_p = add_population(paused, 4, tmp_path / "p")
    assert run_round(paused, ctl_p, trials_p, K, fits) == [PAUSE] * 4
    assert sched.state.members == paused.state.members
    assert [(dict(r.hyp), r.fitness) for r in store.rows()] == \
        [(dict(r.hyp), r.fitness) for r in store_p.rows()]


def test_a_member_pauses_when_another_waits_for_a_worker(space, hyp, tmp_path):
    _, sched, controller, (m0, m1, m2, m3) = held_population(space, hyp, tmp_path)
    m3.status = Trial.PENDING  # more members than slots: m3 has not trained round 0 yet
    assert report(sched, controller, m0, K, 0.4) == PAUSE
    assert not sched._held.waits(m0)
    sched._parking.cached_workers = lambda: 1  # a kept worker is free for m3: m1 holds
    assert report(sched, controller, m1, K, 0.1) == NOOP and sched._held.waits(m1)


def test_a_held_member_hands_its_worker_to_one_that_cannot_start(space, hyp, tmp_path):
    _, sched, controller, (m0, m1, m2, m3) = held_population(space, hyp, tmp_path)
    report(sched, controller, m0, K, 0.4)
    report(sched, controller, m1, K, 0.1)
    m3.status = Trial.PENDING                 # retried (its node lost): it needs a worker
    sched._parking.can_start = lambda trial: False  # no slot idle, no kept worker free

    assert sched.choose_trial_to_run(controller) is None
    assert controller.paused == [m0.trial_id]  # the first held one gives its worker up
    assert sched.choose_trial_to_run(controller) is None
    assert controller.paused == [m0.trial_id, m1.trial_id]  # m0 paused: the next one

    m3.status = Trial.RUNNING                  # on m0's worker
    report(sched, controller, m2, K, 0.3)
    report(sched, controller, m3, K, 0.2)
    assert sched.state.round == 1 and sched.state.members[1].cloned  # m1 still ranked last
    assert m1.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint.path == \
        f"{m0.trial_id}/epoch{K}"              # m0, paused, is cloned from its held save
    assert controller.trained == [m2.trial_id]  # m0 is PAUSED: Tune restarts it


def test_a_handed_over_member_pauses_with_no_second_save(space, hyp, tmp_path):
    """A held member is idle since its round-end save: handing its worker over pauses it
    with no save of its own, after Tune registered that save when it is still in flight.
    (A second save beside it made Tune register one and drop the other: the checkpoint
    index lagged the worker's, and the member's next save overwrote a registered folder.)"""
    from ray.train._internal.session import _FutureTrainingResult

    _, sched, controller, (m0, m1, m2, m3) = held_population(space, hyp, tmp_path)
    report(sched, controller, m0, K, 0.4)
    report(sched, controller, m1, K, 0.1)
    m0.temporary_state.saving_to = _FutureTrainingResult(None)  # its save still in flight
    m3.status = Trial.PENDING
    sched._parking.can_start = lambda trial: False
    saves = list(controller.saved)

    assert sched.choose_trial_to_run(controller) is None
    assert controller.paused == [] and controller.saved == saves
    assert controller._cached_trial_decisions[m0.trial_id] == PAUSE  # once it is registered
    m0.temporary_state.saving_to = None        # Tune registered it and paused m0
    m0.status = Trial.PAUSED
    assert sched.choose_trial_to_run(controller) is None  # m1's save is done: pause now
    assert controller.paused == [m1.trial_id] and controller.pause_saves == []
    assert controller.saved == saves


def test_a_member_failing_for_good_ends_the_round_with_held_members(space, hyp, tmp_path):
    _, sched, controller, (m0, m1, m2, m3) = held_population(space, hyp, tmp_path)
    for t, f in zip((m0, m1, m2), (0.4, 0.1, 0.3)):
        report(sched, controller, t, K, f)
    m3.status = Trial.ERROR
    sched.on_trial_error(controller, m3)
    sched.choose_trial_to_run(controller)
    assert sched.state.round == 1  # ended with the three left (one cloned over: m1)
    assert controller.paused == [m1.trial_id]
    assert sorted(controller.trained) == sorted([m0.trial_id, m2.trial_id])


# ----------------------------------------------------------------------------- real Ray
MEMBERS, EPOCHS = 4, 4


def counting_members(steps: Path) -> Any:
    """Epochs of 0.3 s (member 3: 1.0 s); fitness accumulates lr0; restores are counted."""
    def train_epoch(self: Any) -> dict:
        time.sleep(1.0 if self.member == 3 else 0.3)
        self.epoch += 1
        self.quality += self.lr
        return {"epoch": self.epoch, "fitness": self.quality, "done": self.epoch >= EPOCHS,
                "restores": self.restores}

    return quality_member(train_epoch, wait_for=(steps, MEMBERS))


def run_members(root: Path, hold: bool) -> tuple[dict, int]:
    steps = root / "steps"
    steps.mkdir(parents=True)
    grid = fit_population(counting_members(steps), MEMBERS,
                          one_epoch_rounds(hold_at_barrier=hold), root / "ray")
    assert all(grid[i].error is None for i in range(len(grid)))
    final = {int(r.config["trial_index"]): (r.metrics["fitness"], r.config["lr0"])
             for r in grid}
    return final, sum(r.metrics["restores"] for r in grid)


@pytest.mark.ray
def test_held_members_skip_the_restore_with_the_same_result(tmp_path):
    final, restores = run_members(tmp_path / "held", hold=True)
    final_p, restores_p = run_members(tmp_path / "paused", hold=False)

    assert final == final_p  # same decisions: fitness and hyps of every member at the end
    # Pausing, every member restores a checkpoint after each of the 3 barriers; held, only
    # the one cloned over per barrier (bottom 1 of 4) does.
    assert restores_p >= MEMBERS * (EPOCHS - 1)
    assert restores == EPOCHS - 1
