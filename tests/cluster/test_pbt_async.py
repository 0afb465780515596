"""Asynchronous PBT rounds (pbt_async.py) against the stand-in Tune controller (no Ray workers)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from yolo_ray.cluster.pbt_async import LAG_ROUNDS
from yolo_ray.cluster.pbt_state import STATE_NAME, PBTState
from yolo_ray.cluster.scheduler import MEMBER_KEY, GAPopulationBasedTraining
from yolo_ray.errors import ConfigError
from yolo_ray.evolve.pbt_genes import explore, member_rng
from yolo_ray.evolve.store import EvolutionStore

from .tune_fakes import (
    K,
    FakeController,
    FakeTrial,
    add_population,
    make_scheduler,
    result,
    write_checkpoint,
)

CONTINUE, PAUSE, NOOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.NOOP


def async_population(space, hyp, tmp_path, n, **kw):
    kw.setdefault("store", EvolutionStore(tmp_path / "run", tuple(hyp.keys())))
    sched = make_scheduler(space, hyp, tmp_path, asynchronous=True, **kw)
    controller, trials = add_population(sched, n, tmp_path)
    return sched, controller, trials


def end_round(sched: GAPopulationBasedTraining, controller: FakeController, trial: FakeTrial,
              fit: float) -> str:
    """`trial` trains its next round (K epochs on its own clock) and reports its end."""
    start = int(sched._trial_state[trial].last_train_time)
    for epoch in range(start + 1, start + K):
        assert sched.on_trial_result(controller, trial, result(epoch, 0.0)) == CONTINUE
    res = result(start + K, fit)
    decision = sched.on_trial_result(controller, trial, res)
    trial.last_result = res
    return decision


def genes(trial, sched):
    return {k: trial.config[k] for k in sched.genes}


def restored_path(trial) -> str:
    return trial.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint.path


def test_a_member_is_ranked_in_its_rounds_cohort_and_clones_that_rounds_save(
        space, hyp, tmp_path):
    sched, controller, trials = async_population(space, hyp, tmp_path, 4)
    m0, m1, m2, m3 = trials
    start = {t.trial_id: genes(t, sched) for t in trials}

    assert end_round(sched, controller, m0, 0.5) == CONTINUE   # alone in round 0: trains on
    assert end_round(sched, controller, m1, 0.1) == PAUSE      # worse of 2: clones member 0
    # Tune pauses it after registering its own round-end save (a later cohort member may
    # clone that one); it restores member 0's when it restarts.
    assert controller.paused == [] and m1.trial_id in controller.saved
    m1.status = Trial.PAUSED
    assert sched.choose_trial_to_run(controller) is m1
    assert restored_path(m1) == f"{m0.trial_id}/epoch{K}"
    m1.status = Trial.RUNNING  # Tune restarts the clone on its worker
    assert m1.config[MEMBER_KEY] == 1
    rng = member_rng(0, 1, 1)
    rng.random()  # YOLOv5's parent draw among one candidate still takes its one number
    want, _ = explore(sched._ga, sched._space, start[m0.trial_id], rng)
    assert genes(m1, sched) == want                # the parent's round-0 genes, explored
    assert sched._trial_state[m1].last_train_time == K   # its own clock, not the parent's

    # Member 0 ends round 1 while 2 and 3 have not ended round 0: two rounds ahead of the
    # slowest, so it waits on its worker (no pause, no save beyond its round end).
    assert end_round(sched, controller, m0, 0.9) == NOOP
    assert m0.status == Trial.RUNNING and m0 in sched._held.held
    assert sched.state.members[0].round == 2

    # Member 2 ends round 0 worst of three: it clones member 0's *round-0* save, not round 1's.
    assert end_round(sched, controller, m2, 0.05) == PAUSE
    m2.status = Trial.PAUSED
    assert sched.choose_trial_to_run(controller) is m2
    assert restored_path(m2) == f"{m0.trial_id}/epoch{K}"
    m2.status = Trial.RUNNING
    assert controller.trained == []                          # member 3 is still at round 0
    assert end_round(sched, controller, m3, 0.3) == CONTINUE  # 2nd of 4: keeps its weights
    assert controller.trained == [m0.trial_id]   # everyone ended round 0: member 0 goes on
    assert m0 not in sched._held.held
    assert controller.saved.count(m0.trial_id) == 2          # one save per round end
    plans = sched.state.members
    assert [(p.round, p.source, p.cloned) for p in (plans[1], plans[2], plans[3])] == \
        [(1, 0, True), (1, 0, True), (1, 3, False)]
    rows = sched._store.rows()
    assert plans[2].parent_row == next(r.index for r in rows
                                       if r.meta["trial_id"].endswith("-m0-r0"))


def simulate(sched, controller, trials, rounds, seed):
    """Members end rounds in a random order (those Tune would run); returns the largest
    spread of rounds ended between live members seen."""
    rng = np.random.default_rng(seed)
    spread = 0
    while any(not t.is_finished() for t in trials):
        while (started := sched.choose_trial_to_run(controller)) is not None:
            started.status = Trial.RUNNING
        movable = [t for t in trials if t.status == Trial.RUNNING and t not in sched._held.held]
        assert movable, "no member can train: the lag bound deadlocked"
        trial = movable[rng.integers(len(movable))]
        fit = float(rng.random())
        if sched._trial_state[trial].last_train_time + K == rounds * K:
            sched.on_trial_complete(controller, trial, result(rounds * K, fit))
            trial.status = Trial.TERMINATED
        elif end_round(sched, controller, trial, fit) == PAUSE:
            trial.status = Trial.PAUSED
        done = [sched._rounds_done(t) for t in trials if not t.is_finished()]
        spread = max(spread, max(done, default=0) - min(done, default=0))
    return spread


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_order_gives_one_row_per_member_and_round(space, hyp, tmp_path, seed):
    sched, controller, trials = async_population(space, hyp, tmp_path, 6,
                                                 state_path=tmp_path / STATE_NAME)
    rounds = 5
    spread = simulate(sched, controller, trials, rounds, seed)

    rows = sched._store.rows()
    assert sorted((r.meta["trial_id"].rsplit("-m", 1)[1]) for r in rows) == \
        sorted(f"{m}-r{r}" for m in range(6) for r in range(rounds))
    assert spread <= LAG_ROUNDS + 1
    by_index = {r.index: r for r in rows}
    cloned = 0
    for row in rows:
        gen = int(row.meta["generation"])
        parents = row.meta.get("parent_rows") or []
        if gen == 0:
            assert not parents
            continue
        parent = by_index[int(parents[0])]
        assert int(parent.meta["generation"]) == gen - 1     # same-round weights, own clock
        if row.meta.get("cloned"):
            cloned += 1
            assert parent.meta["trial_id"].split("-m")[1] != row.meta["trial_id"].split("-m")[1]
    assert cloned > 0
    state = PBTState.load(tmp_path / STATE_NAME)
    assert not state.synchronous and set(state.rows) == {r.meta["trial_id"] for r in rows}


def test_with_more_members_than_workers_members_take_turns(space, hyp, tmp_path):
    sched, controller, trials = async_population(space, hyp, tmp_path, 4)
    for t in trials[2:]:
        t.status = Trial.PENDING  # two slots: members 2 and 3 wait for a worker
    assert end_round(sched, controller, trials[0], 0.5) == PAUSE  # hands its worker over
    assert sched.choose_trial_to_run(controller) in trials[2:]


def test_a_member_ahead_hands_its_worker_over_each_time_one_waits(space, hyp, tmp_path):
    """More members than slots: a member waiting ahead of the slowest hands its worker to a
    member that may train, again after it restarted and ran ahead once more (the first
    hand-over was never cleared without a barrier, blocking every later one: with 8 members
    on 4 slots every worker ended up held by a member ahead and the run stalled)."""
    sched, controller, trials = async_population(space, hyp, tmp_path, 4)
    m0, m1, m2, m3 = trials
    sched._parking.can_start = lambda trial: False  # every slot busy, no kept worker free
    assert end_round(sched, controller, m0, 0.5) == CONTINUE
    assert end_round(sched, controller, m0, 0.9) == NOOP   # two rounds ahead: waits
    m3.status = Trial.PENDING                               # m3 lost its worker: waits
    assert sched.choose_trial_to_run(controller) is None
    assert m0.status == Trial.PAUSED and controller.paused == [m0.trial_id]  # handed over

    m3.status = Trial.RUNNING                               # on m0's worker
    for trial, fit in ((m3, 0.6), (m1, 0.7), (m2, 0.8)):   # best so far: nobody clones
        end_round(sched, controller, trial, fit)
        trial.status = Trial.RUNNING
    sched._parking.can_start = lambda trial: True
    assert sched.choose_trial_to_run(controller) is m0      # caught up with: restarts
    m0.status = Trial.RUNNING

    sched._parking.can_start = lambda trial: False
    assert end_round(sched, controller, m0, 0.95) == NOOP  # ahead again: waits
    m1.status = Trial.PENDING
    assert sched.choose_trial_to_run(controller) is None
    assert m0.status == Trial.PAUSED and controller.paused == [m0.trial_id] * 2


def test_resume_restarts_each_member_at_its_own_round(space, hyp, tmp_path):
    state_path = tmp_path / STATE_NAME
    first, controller, trials = async_population(space, hyp, tmp_path, 4,
                                                 state_path=state_path)
    for t, fit in zip(trials, (0.5, 0.1, 0.3, 0.4)):
        end_round(first, controller, t, fit)
        t.status = Trial.RUNNING
    end_round(first, controller, trials[0], 0.6)   # member 0 is a round ahead
    first._save_state()
    plans = {m: (p.round, p.source, dict(p.config)) for m, p in first.state.members.items()}
    assert {m: p[0] for m, p in plans.items()} == {0: 2, 1: 1, 2: 1, 3: 1}
    assert plans[1][1] == 0                          # member 1 cloned member 0 at round 0
    write_checkpoint(trials[0], 0, 0, K)
    write_checkpoint(trials[0], 1, 0, 2 * K)
    for m, t in enumerate(trials[1:], 1):
        write_checkpoint(t, 0, m, K)
    for t in trials:
        t.config = {MEMBER_KEY: t.config[MEMBER_KEY], "settings": {},
                    **{k: -1.0 for k in first.genes}}   # Tune's stale snapshot
        t.status = Trial.PENDING

    second = make_scheduler(space, hyp, tmp_path, state_path=state_path, asynchronous=True)
    restored = FakeController(list(reversed(trials)))
    for t in restored.trials:
        second.on_trial_add(restored, t)
    assert second.choose_trial_to_run(restored) is not None
    for m, t in enumerate(trials):
        rnd, source, config = plans[m]
        assert genes(t, second) == config
        assert restored_path(t).endswith(f"{trials[source].trial_id}/checkpoint_{rnd - 1:06d}")
        assert second._trial_state[t].last_train_time == rnd * K
    assert second.state.round == 1


def test_a_state_file_of_the_other_mode_is_refused(space, hyp, tmp_path):
    state_path = tmp_path / STATE_NAME
    sync = make_scheduler(space, hyp, tmp_path, state_path=state_path)
    add_population(sync, 2, tmp_path)
    sync._save_state()
    with pytest.raises(ConfigError, match="saved by synchronous PBT, this scheduler is "
                                          "asynchronous"):
        add_population(make_scheduler(space, hyp, tmp_path, state_path=state_path,
                                      asynchronous=True), 2, tmp_path)


# ----------------------------------------------------------------------------- real Ray
@pytest.mark.ray
def test_members_run_ahead_of_a_slow_one_by_at_most_one_round(tmp_path):
    """4 members on 4 slots, member 3's epochs 3x longer: the others do not wait for it at
    every round end, but never start a round more than one ahead of it; every member
    trains every epoch once on its own clock (clones take same-epoch checkpoints)."""
    import time

    from .member_trainables import fit_population, one_epoch_rounds, quality_member

    epochs = 6

    def train_epoch(self) -> dict:
        time.sleep(1.0 if self.member == 3 else 0.3)
        self.epoch += 1
        self.quality += self.lr
        return {"epoch": self.epoch, "fitness": self.quality, "done": self.epoch >= epochs,
                "t": time.time()}

    steps = tmp_path / "steps"
    steps.mkdir()
    grid = fit_population(quality_member(train_epoch, wait_for=(steps, 4)), 4,
                          one_epoch_rounds(asynchronous=True), tmp_path / "ray")
    assert all(grid[i].error is None for i in range(len(grid)))
    times = {}
    for r in grid:
        frame = r.metrics_dataframe
        times[int(r.config[MEMBER_KEY])] = dict(zip(frame["epoch"], frame["t"]))
        assert list(frame["epoch"]) == list(range(1, epochs + 1))
    slow = times[3]
    assert any(times[m][2] < slow[1] for m in range(3)), "nobody ran ahead of member 3"
    for m in range(3):
        for e in range(3, epochs + 1):  # round e-1 starts once member 3 ended round e-3
            assert times[m][e] > slow[e - 2], (m, e)


@pytest.mark.ray
def test_more_members_than_slots_take_turns_to_the_end(tmp_path):
    """8 members on 4 slots with speeds of their own (0.8x to 1.2x): members run ahead,
    wait and hand their workers over, and the run ends with every member having trained
    every epoch once (with the hand-over blocked, all 4 workers were soon held by members
    ahead of the slowest and the run stalled until Tune's time budget)."""
    import os
    import time

    from .member_trainables import fit_population, one_epoch_rounds, quality_member

    epochs, members, slots = 6, 8, 4

    def train_epoch(self) -> dict:
        time.sleep(0.5 * (0.8 + 0.4 * self.member / (members - 1)))
        self.epoch += 1
        self.quality += self.lr
        return {"epoch": self.epoch, "fitness": self.quality, "done": self.epoch >= epochs,
                "pid": os.getpid()}

    grid = fit_population(quality_member(train_epoch), members,
                          one_epoch_rounds(asynchronous=True), tmp_path / "ray", slots=slots,
                          time_budget_s=60)
    assert all(grid[i].error is None for i in range(len(grid)))
    pids = set()
    for r in grid:
        frame = r.metrics_dataframe
        assert list(frame["epoch"]) == list(range(1, epochs + 1)), r.config[MEMBER_KEY]
        pids.update(frame["pid"])
    assert len(pids) == slots  # workers kept: one process per slot for the whole run


def test_a_round_end_save_is_ordered_before_the_row_is_written_and_only_once(
        space, hyp, tmp_path):
    # The worker saves while the driver writes the row (fsyncs) and ranks: ordered after,
    # the save reached the worker later, and a worker's gap between epochs is such steps.
    store = EvolutionStore(tmp_path / "run", tuple(hyp.keys()))
    sched, controller, trials = async_population(space, hyp, tmp_path, 2, store=store)
    saves_at_append: list[list[str]] = []
    append = store.append

    def recording_append(record):
        saves_at_append.append(list(controller.saved))
        return append(record)

    store.append = recording_append
    m0, m1 = trials
    assert end_round(sched, controller, m0, 0.5) == CONTINUE
    assert saves_at_append == [[m0.trial_id]]          # saved before its row was written
    assert controller.saved == [m0.trial_id]            # once, not again when ranked
    assert sched._cohorts.rounds[0][0].save.path == f"{m0.trial_id}/epoch{K}"
    end_round(sched, controller, m1, 0.7)
    assert saves_at_append[-1] == [m0.trial_id, m1.trial_id]
    assert controller.saved == [m0.trial_id, m1.trial_id]
    assert sched._early_save is None                    # nothing left for the next result
    # an epoch inside a round orders no save
    sched.on_trial_result(controller, m0, result(K + 1, 0.0))
    assert controller.saved == [m0.trial_id, m1.trial_id]
