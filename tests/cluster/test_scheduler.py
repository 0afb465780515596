"""GAPopulationBasedTraining with a mock Tune controller and fake trials (no training, no Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from yolo_ray.cluster.pbt_state import (
    STATE_NAME,
    PBTState,
    check_resumable,
    hyp_schedule,
    lineage,
)
from yolo_ray.cluster.scheduler import MEMBER_KEY, GAPopulationBasedTraining
from yolo_ray.config.load import load_hyp
from yolo_ray.errors import ConfigError
from yolo_ray.evolve.space import Gene, load_search_space
from yolo_ray.evolve.store import EvolutionStore
from yolo_ray.train.results import RESULT_KEYS

from .tune_fakes import (
    K,
    FakeCheckpoint,
    FakeController,
    FakeTrial,
    add_population,
    make_scheduler,
    result,
    run_round,
    write_checkpoint,
)


def genes_of(trial: FakeTrial, sched: GAPopulationBasedTraining) -> dict[str, float]:
    return {k: trial.config[k] for k in sched.genes}


# ----------------------------------------------------------------------------- exploit
def test_bottom_quantile_clones_a_top_member(space, hyp, tmp_path):
    store = EvolutionStore(tmp_path / "run", tuple(hyp.keys()))
    sched = make_scheduler(space, hyp, tmp_path, store=store, state_path=tmp_path / STATE_NAME)
    controller, trials = add_population(sched, 4, tmp_path)
    before = {t.trial_id: genes_of(t, sched) for t in trials}
    assert before[trials[0].trial_id] == {k: float(hyp[k]) for k in sched.genes}
    fits = [0.4, 0.1, 0.3, 0.2]   # member 1 is the worst, member 0 the best (q = 0.25: 1 each)

    decisions = run_round(sched, controller, trials, K, fits)

    assert decisions[:3] == [TrialScheduler.PAUSE] * 3   # synchronous: wait for everyone
    weak, best = trials[1], trials[0]
    assert controller.paused == []          # everyone paused at the sync point already
    pointer = weak.run_metadata.checkpoint_manager._latest_checkpoint_result
    assert pointer.checkpoint.path == f"{best.trial_id}/epoch{K}"
    assert weak.config[MEMBER_KEY] == 1                  # identity is not copied
    new = genes_of(weak, sched)
    assert new != before[best.trial_id] and new != before[weak.trial_id]
    changed = [k for k in new if new[k] != before[best.trial_id][k]]
    for k in changed:                                    # mutated from the parent's values
        ratio = new[k] / before[best.trial_id][k]
        assert 0.3 - 1e-9 <= ratio <= 3.0 + 1e-9 or new[k] in (space[k].lower, space[k].upper)
    for t in (trials[0], trials[2], trials[3]):
        assert genes_of(t, sched) == before[t.trial_id]
    state = sched.state
    assert state.round == 1 and state.members[1].source == 0 and state.members[1].cloned
    assert state.members[1].parent_row == state.rows[f"{best.trial_id}-m0-r0"]
    saved = PBTState.load(tmp_path / STATE_NAME)
    assert saved.round == 1 and saved.members[1].config == new

    run_round(sched, controller, trials, 2 * K, [0.5, 0.6, 0.2, 0.3])
    rows = store.rows()
    assert len(rows) == 8
    assert [r.meta["generation"] for r in rows] == [0] * 4 + [1] * 4
    second = {r.meta["trial_id"]: r for r in rows[4:]}
    r1 = second[f"{weak.trial_id}-m1-r1"]
    assert r1.meta["cloned"] and r1.meta["parent_rows"] == [state.rows[f"{best.trial_id}-m0-r0"]]
    assert dict(r1.hyp) == pytest.approx(new, rel=1e-4)  # evolve.csv keeps 5 digits
    r0 = second[f"{best.trial_id}-m0-r1"]
    assert not r0.meta["cloned"] and r0.meta["parent_rows"] == [0]


def test_members_ending_rewrite_the_state_file_once_at_the_end(space, hyp, tmp_path):
    # Rewritten per ending member it cost O(members²) at the end of a run (bench/scale.py).
    store = EvolutionStore(tmp_path / "run", tuple(hyp.keys()))
    state_path = tmp_path / STATE_NAME
    sched = make_scheduler(space, hyp, tmp_path, store=store, state_path=state_path)
    controller, trials = add_population(sched, 4, tmp_path)
    run_round(sched, controller, trials, K, [0.4, 0.1, 0.3, 0.2])
    after_round = state_path.read_text()
    for i, t in enumerate(trials):
        sched.on_trial_complete(controller, t, result(2 * K, 0.5 + i / 10))
        t.status = Trial.TERMINATED
        if i < len(trials) - 1:
            assert state_path.read_text() == after_round  # deferred while others run
    assert len(store.rows()) == 8
    assert set(PBTState.load(state_path).rows) == {r.meta["trial_id"] for r in store.rows()}


def test_a_parent_still_saving_its_pause_checkpoint_is_not_saved_again(space, hyp, tmp_path):
    """The round ends while the first member's pause save is in flight (Tune shows it RUNNING
    until that save resolves). The clone must take that save, with no second save ordered:
    the controller would never count the second one, and the parent's next save would then
    overwrite the folder the clone restores from."""
    from ray.train._internal.session import _FutureTrainingResult, _TrainingResult

    class SaveInFlight(_FutureTrainingResult):
        def __init__(self, value: _TrainingResult) -> None:
            super().__init__(future=None)
            self.value = value

        def resolve(self, block: bool = True) -> _TrainingResult:
            return self.value

    sched = make_scheduler(space, hyp, tmp_path)
    controller, (parent, weak) = add_population(sched, 2, tmp_path)
    first = result(K, 0.5)
    assert sched.on_trial_result(controller, parent, first) == TrialScheduler.PAUSE
    parent.last_result = first
    pause_save = FakeCheckpoint(f"{parent.trial_id}/pause-save")
    parent.temporary_state.saving_to = SaveInFlight(_TrainingResult(pause_save, first))
    assert parent.status == Trial.RUNNING  # Tune marks it PAUSED once the save resolves

    sched.on_trial_result(controller, weak, result(K, 0.1))  # the last one: the round ends

    assert controller.saved == []
    cloned = weak.run_metadata.checkpoint_manager._latest_checkpoint_result
    assert cloned.checkpoint.path == pause_save.path and cloned.metrics["epoch"] == K
    assert sched.state.members[1].cloned and sched.state.round == 1


def test_kept_workers_are_pinged_after_a_member_error_before_tune_hands_one_out(
        space, hyp, tmp_path, monkeypatch):
    # The error may be its node's loss: a kept worker there must not go to the retry.
    sched = make_scheduler(space, hyp, tmp_path, probe_workers_s=1.0)
    controller, trials = add_population(sched, 2, tmp_path)
    pings: list[int] = []
    monkeypatch.setattr(sched._parking, "evict_silent", lambda: pings.append(1) or 0)
    sched.choose_trial_to_run(controller)
    assert pings == []
    sched.on_trial_error(controller, trials[1])
    sched.choose_trial_to_run(controller)       # Tune's next step, before it picks actors
    sched.choose_trial_to_run(controller)
    assert pings == [1]                         # once per error, not every step


def test_mutated_configs_respect_limits(tmp_path):
    hyp = load_hyp(None)
    narrow = load_search_space().without("anchors")
    for name in ("lr0", "momentum", "hsv_s", "box"):
        g = narrow[name]
        upper = round(g.lower + 0.1 * (g.upper - g.lower), 5)  # limits with <= 5 decimals
        narrow = narrow.with_gene(name, Gene(3.0, g.lower, upper))
    sched = make_scheduler(narrow, hyp, tmp_path)
    _, trials = add_population(sched, 2, tmp_path)
    parent, child = trials
    for k in ("lr0", "momentum", "hsv_s", "box"):        # start outside the narrow limits
        parent.config[k] = narrow[k].upper * 5
    frozen = [k for k in sched.genes if k not in narrow or narrow[k].gain == 0]
    for r in range(200):
        sched.state.round = r
        new, ops = sched._get_new_config(child, parent)
        assert new[MEMBER_KEY] == 1 and new["settings"] == child.config["settings"]
        for k in sched.genes:
            v = new[k]
            if k in narrow:
                assert narrow[k].lower <= v <= narrow[k].upper, (k, v)
                assert v == round(v, 5)
            if k in frozen:
                assert v == parent.config[k]
        assert set(ops) <= set(sched.genes)


def test_parent_distribution_follows_fitness_weights(space, hyp, tmp_path):
    sched = make_scheduler(space, hyp, tmp_path, seed=3)
    _, trials = add_population(sched, 8, tmp_path)
    fits = [0.1, 0.2, 0.3, 0.5, 0.9, 0.05, 0.01, 0.02]    # top 5 = members 4, 3, 2, 1, 0
    for t, f in zip(trials, fits):
        sched._trial_state[t].last_score = f
    n = 6000
    counts = np.zeros(len(trials))
    for i in range(n):
        sched.state.round = i  # a fresh generator per (round, member), as in a real run
        counts[trials.index(sched.choose_parent(trials[5], trials))] += 1
    top = np.array(fits[:5])
    w = top - top.min() + 1e-6
    expected = w / w.sum()
    freq = counts[:5] / n
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 4 * sigma + 1e-9), (freq, expected)
    assert counts[5:].sum() == 0            # outside the top 5: never a parent
    assert counts[0] <= 2                   # the weakest of the top 5 has ~zero weight


def test_same_seed_same_population_different_seed_differs(space, hyp, tmp_path):
    a = make_scheduler(space, hyp, tmp_path, seed=1)
    b = make_scheduler(space, hyp, tmp_path, seed=1)
    c = make_scheduler(space, hyp, tmp_path, seed=2)
    assert a.initial_genes(0) == c.initial_genes(0) == {k: float(hyp[k]) for k in a.genes}
    assert [a.initial_genes(m) for m in range(1, 5)] == [b.initial_genes(m) for m in range(1, 5)]
    assert a.initial_genes(1) != c.initial_genes(1)
    assert a.initial_genes(1) != a.initial_genes(2)


def test_quantile_ties_are_broken_by_member_index(space, hyp, tmp_path):
    sched = make_scheduler(space, hyp, tmp_path)
    _, trials = add_population(sched, 4, tmp_path)
    for t in reversed(trials):  # add order must not matter (a restore reshuffles it)
        sched._trial_state[t].last_score = 0.5
    lower, upper = sched._quantiles()
    assert lower == [trials[3]] and upper == [trials[0]]


# ----------------------------------------------------------------------------- resume
def test_resume_applies_the_saved_round(space, hyp, tmp_path):
    state_path = tmp_path / STATE_NAME
    store = EvolutionStore(tmp_path / "run", tuple(hyp.keys()))
    first = make_scheduler(space, hyp, tmp_path, store=store, state_path=state_path)
    controller, trials = add_population(first, 4, tmp_path)
    run_round(first, controller, trials, K, [0.4, 0.1, 0.3, 0.2])
    plan = {m: p.config for m, p in first.state.members.items()}
    for m, t in enumerate(trials):
        write_checkpoint(t, 0, m, K)
        t.config = {MEMBER_KEY: m, "settings": {}, **{k: -1.0 for k in first.genes}}  # stale
        t.status = Trial.PENDING

    second = make_scheduler(space, hyp, tmp_path, store=store, state_path=state_path)
    restored = FakeController(list(reversed(trials)))
    for t in restored.trials:
        second.on_trial_add(restored, t)
    assert second.choose_trial_to_run(restored) is not None
    assert second.state.round == 1
    for m, t in enumerate(trials):
        assert genes_of(t, second) == plan[m]
        source = second.state.members[m].source
        ckpt = t.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint
        assert ckpt.path.endswith(f"{trials[source].trial_id}/checkpoint_000000")
        assert second._trial_state[t].last_perturbation_time == K
    assert second._next_perturbation_sync == 2 * K
    # Round 1 replays on the restored scheduler; a row already written is not written again.
    run_round(second, restored, trials, 2 * K, [0.5, 0.6, 0.2, 0.3])
    assert len(store.rows()) == 8


def test_resume_falls_back_to_the_previous_round(space, hyp, tmp_path):
    state_path = tmp_path / STATE_NAME
    first = make_scheduler(space, hyp, tmp_path, state_path=state_path)
    controller, trials = add_population(first, 2, tmp_path)
    run_round(first, controller, trials, K, [0.4, 0.1])
    run_round(first, controller, trials, 2 * K, [0.4, 0.1])
    for m, t in enumerate(trials):
        write_checkpoint(t, 0, m, K)   # round 1 start exists; round 2's was never written
        t.status = Trial.PENDING
    second = make_scheduler(space, hyp, tmp_path, state_path=state_path)
    restored = FakeController(trials)
    for t in trials:
        second.on_trial_add(restored, t)
    second.choose_trial_to_run(restored)
    assert second.state.round == 1
    assert second._next_perturbation_sync == 2 * K


def test_state_from_another_run_is_refused(space, hyp, tmp_path):
    state_path = tmp_path / STATE_NAME
    first = make_scheduler(space, hyp, tmp_path, state_path=state_path)
    add_population(first, 2, tmp_path)
    with pytest.raises(ConfigError, match="seed"):
        other = make_scheduler(space, hyp, tmp_path, state_path=state_path, seed=9)
        add_population(other, 2, tmp_path)
    foreign = make_scheduler(space, hyp, tmp_path, state_path=state_path)
    trial = FakeTrial(0, {MEMBER_KEY: 0}, tmp_path)
    trial.trial_id = "other_00000"
    with pytest.raises(ConfigError, match="another experiment"):
        foreign.on_trial_add(FakeController([trial]), trial)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("interval", [0, -1, 1.5])
def test_interval_must_be_a_positive_whole_number(space, hyp, interval):
    with pytest.raises(ConfigError, match="interval"):
        GAPopulationBasedTraining(space, hyp, interval)


def test_resume_of_a_classic_run_is_refused(tmp_path):
    run = tmp_path / "exp"
    run.mkdir()
    (run / "evolve_trials.jsonl").write_text(json.dumps(
        {"row": 0, "trial_id": "a", "strategy": "classic", "status": "finished"}) + "\n")
    with pytest.raises(ConfigError, match="strategy classic"):
        check_resumable(run)
    with pytest.raises(ConfigError, match="does not exist"):
        check_resumable(tmp_path / "missing")


# ----------------------------------------------------------------------------- schedule
def test_hyp_schedule_follows_the_clone_lineage(space, hyp, tmp_path):
    store = EvolutionStore(tmp_path / "run", tuple(hyp.keys()))
    sched = make_scheduler(space, hyp, tmp_path, store=store)
    controller, trials = add_population(sched, 2, tmp_path)
    run_round(sched, controller, trials, K, [0.4, 0.1])      # member 1 clones member 0
    run_round(sched, controller, trials, 2 * K, [0.1, 0.5])  # member 0 clones member 1
    run_round(sched, controller, trials, 3 * K, [0.2, 0.7])
    rows = store.rows()
    best = max(rows[4:], key=lambda r: r.fitness)
    chain = lineage(rows, best.index)
    assert [r.meta["generation"] for r in chain] == [0, 1, 2]
    assert [r.meta["trial_id"].split("-")[1] for r in chain] == ["m0", "m1", "m1"]
    schedule = hyp_schedule(rows, best.index, K)
    assert [s["epochs"] for s in schedule] == [[1, 2], [3, 4], [5, 6]]
    assert schedule[1]["cloned"] and not schedule[2]["cloned"]
    assert all(math.isfinite(s["fitness"]) for s in schedule)


def test_a_row_orphaned_by_a_kill_is_adopted_not_duplicated(space, hyp, tmp_path):
    from yolo_ray.evolve.records import format_row

    run = tmp_path / "run"
    store = EvolutionStore(run, tuple(hyp.keys()))
    sched = make_scheduler(space, hyp, tmp_path, store=store)
    controller, trials = add_population(sched, 2, tmp_path)
    run_round(sched, controller, trials, K, [0.4, 0.1])
    # The driver died between the csv line and the sidecar line of member 0's round-1 row.
    res = result(2 * K, 0.3)
    line = format_row([res[k] for k in RESULT_KEYS] + [trials[0].config[k] for k in store.hyp_keys])
    with open(store.csv_path, "a") as f:
        f.write(line)
    store.close()
    reopened = EvolutionStore(run, tuple(hyp.keys()))   # labels row 2 'recovered'
    assert reopened.rows()[2].meta["trial_id"] is None
    sched._store = reopened
    run_round(sched, controller, trials, 2 * K, [0.3, 0.2])
    rows = reopened.rows()
    assert len(rows) == 4
    assert sched.state.rows[f"{trials[0].trial_id}-m0-r1"] == 2
    assert rows[3].meta["trial_id"] == f"{trials[1].trial_id}-m1-r1"


def test_waiting_members_start_slowest_last_epoch_first(space, hyp, tmp_path):
    # More members than slots: a round runs in waves and ends with its last wave's slowest
    # member, so the slow ones go first (longest processing time first).
    sched = make_scheduler(space, hyp, tmp_path)
    controller, trials = add_population(sched, 4, tmp_path)
    run_round(sched, controller, trials, K, [0.4, 0.1, 0.3, 0.2])
    for t, seconds in zip(trials, (1.0, 3.0, 2.0, 0.5)):
        t.status = Trial.PAUSED  # all wait for a slot at round 1
        t.last_result = {**t.last_result, "time_this_iter_s": seconds}
    order = []
    for _ in trials:
        picked = sched.choose_trial_to_run(controller)
        picked.status = Trial.RUNNING
        order.append(picked)
    assert order == [trials[1], trials[2], trials[0], trials[3]]
