"""Run-ahead: PBT members past a round's end go on without pausing when they safely can."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from yolo_ray.cluster.pbt_run_ahead import RunAhead, bottom_count
from yolo_ray.cluster.pbt_state import STATE_NAME
from yolo_ray.cluster.pbt_run_ahead import TOTAL_EPOCHS_KEY
from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.space import load_search_space
from yolo_ray.evolve.store import EvolutionStore

from .member_trainables import epoch_member, fit_population, one_epoch_rounds
from .tune_fakes import K, add_population, make_scheduler, result, run_round

CONTINUE, NOOP, PAUSE = TrialScheduler.CONTINUE, TrialScheduler.NOOP, TrialScheduler.PAUSE


@pytest.fixture
def space():
    return load_search_space().without("anchors")


@pytest.fixture
def hyp():
    return load_hyp(None)


# ----------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize("ranked, q, expected", [(1, 0.25, 0), (2, 0.25, 1), (4, 0.25, 1),
                                                 (5, 0.25, 2), (8, 0.5, 4), (9, 0.5, 4),
                                                 (256, 0.25, 64)])
def test_bottom_count_is_ray_quantile_size(ranked, q, expected):
    assert bottom_count(ranked, q) == expected


def test_a_member_is_released_once_enough_reports_rank_below_it():
    ahead = RunAhead()
    for name, key in [("a", (0.9, -0)), ("b", (0.5, -1))]:
        ahead.reported(name, key)
        ahead.hold(name, f"save-{name}", may_run=True)
    # 8 members, bottom quantile 2: 'a' needs two reports below it, it has one ('b')
    assert ahead.release_safe(8, 0.25) == []
    ahead.reported("c", (0.1, -2))
    assert ahead.release_safe(8, 0.25) == ["a"] and ahead.ahead == {"a"}
    # 'b' ranks above 'c' only: still in reach of the bottom two
    ahead.reported("d", (0.5, -3))  # same score as 'b', higher index: ranks below 'b'
    assert ahead.release_safe(8, 0.25) == ["b"]
    assert ahead.early("a", 2 * K, K) == "stash" and ahead.early("a", 2 * K + 1, K) == "continue"
    assert ahead.early("c", 2 * K, K) is None  # not ahead: the scheduler decides
    assert ahead.waits("a") and not ahead.waits("c")


def test_a_retried_report_replaces_the_old_key():
    ahead = RunAhead()
    ahead.reported("a", (0.1, 0))
    ahead.reported("a", (0.1, 0))
    ahead.reported("b", (0.2, -1))
    ahead.hold("b", "save", may_run=True)
    assert ahead.release_safe(4, 0.25) == ["b"]  # one key below it, not two copies of one


def test_held_members_not_allowed_to_run_stay_held():
    ahead = RunAhead()
    ahead.reported("low", (0.0, 0))
    ahead.reported("top", (1.0, -1))
    ahead.hold("top", "save", may_run=False)  # its next round is the run's last
    assert ahead.release_safe(4, 0.25) == [] and list(ahead.held) == ["top"]
    held, stash = ahead.end_round()
    assert held == ["top"] and stash == {} and not ahead.waits("top")


# ----------------------------------------------------------------------------- scheduler
def report(sched, controller, trial, epoch: int, fit: float, total: int = 3 * K) -> str:
    res = result(epoch, fit) | {TOTAL_EPOCHS_KEY: total}
    trial.last_result = res
    return sched.on_trial_result(controller, trial, res)


def run_ahead_round0(space, hyp, root: Path):
    store = EvolutionStore(root / "run", tuple(hyp.keys()))
    sched = make_scheduler(space, hyp, root, store=store, state_path=root / STATE_NAME,
                           run_ahead=True)
    controller, trials = add_population(sched, 4, root)
    return store, sched, controller, trials


def test_members_go_on_past_the_round_end_with_the_same_decisions(space, hyp, tmp_path):
    fits = [0.4, 0.1, 0.3, 0.2]  # member 1 the worst (bottom 1 of 4), member 0 the best
    store, sched, controller, (m0, m1, m2, m3) = run_ahead_round0(space, hyp, tmp_path / "a")

    assert report(sched, controller, m0, K, fits[0]) == NOOP  # held: nothing below it yet
    assert controller.saved == [m0.trial_id] and controller.trained == []
    assert report(sched, controller, m1, K, fits[1]) == NOOP  # m1 could still be the worst
    assert controller.trained == [m0.trial_id]  # m0 is out of reach of the bottom one
    assert report(sched, controller, m2, K, fits[2]) == CONTINUE  # safe on arrival
    assert report(sched, controller, m3, K, fits[3]) == CONTINUE  # the last: round ends

    assert controller.paused == [m1.trial_id] and m1.status == Trial.PAUSED  # cloned over
    # its clone restores m0's save from the round's end, not m0's weights now
    assert m1.run_metadata.checkpoint_manager._latest_checkpoint_result.checkpoint.path == \
        f"{m0.trial_id}/epoch{K}"
    assert controller.saved == [t.trial_id for t in (m0, m1, m2, m3)]
    assert not sched._ahead.waits(m0) and sched.state.round == 1

    # The pausing scheduler, same reports: same plans and rows.
    store_p = EvolutionStore(tmp_path / "p" / "run", tuple(hyp.keys()))
    paused = make_scheduler(space, hyp, tmp_path / "p", store=store_p)
    ctl_p, trials_p = add_population(paused, 4, tmp_path / "p")
    assert run_round(paused, ctl_p, trials_p, K, fits) == [PAUSE] * 4
    assert sched.state.members == paused.state.members
    assert [(dict(r.hyp), r.fitness) for r in store.rows()] == \
        [(dict(r.hyp), r.fitness) for r in store_p.rows()]


def test_the_next_round_end_before_the_barrier_waits_for_it(space, hyp, tmp_path):
    store, sched, controller, (m0, m1, m2, m3) = run_ahead_round0(space, hyp, tmp_path)
    sched._parking.cached_workers = lambda: 1  # m1, cloned over, waits on its kept worker
    report(sched, controller, m0, K, 0.4)
    report(sched, controller, m1, K, 0.1)                 # m0 released
    assert report(sched, controller, m0, K + 1, 0.0) == CONTINUE  # inside its next round
    assert report(sched, controller, m0, 2 * K, 0.6) == NOOP      # next round's end: waits
    assert len(store.rows()) == 2  # its round-1 row waits for round 0's decisions
    report(sched, controller, m2, K, 0.3)
    report(sched, controller, m3, K, 0.2)                 # round 0 ends: m0's result is taken

    rows = store.rows()
    assert len(rows) == 5 and rows[-1].meta["trial_id"] == f"{m0.trial_id}-m0-r1"
    assert rows[-1].meta["parent_rows"] == [0] and rows[-1].fitness == pytest.approx(0.6)
    assert sched._ahead.waits(m0) and m0 in sched._ahead.held  # at round 1's barrier now
    assert controller.saved.count(m0.trial_id) == 2  # round 0's end, round 1's end


def test_nobody_runs_ahead_into_the_last_round(space, hyp, tmp_path):
    _, sched, controller, (m0, m1, m2, m3) = run_ahead_round0(space, hyp, tmp_path)
    decisions = [report(sched, controller, t, K, f, total=2 * K)
                 for t, f in zip((m0, m1, m2), (0.4, 0.1, 0.3))]
    assert decisions == [NOOP] * 3 and controller.trained == []  # held, not released
    assert report(sched, controller, m3, K, 0.2, total=2 * K) == CONTINUE
    assert sorted(controller.trained) == sorted([m0.trial_id, m2.trial_id])  # m1 was cloned


def test_a_member_pauses_when_another_waits_for_a_worker(space, hyp, tmp_path):
    _, sched, controller, (m0, m1, m2, m3) = run_ahead_round0(space, hyp, tmp_path)
    m3.status = Trial.PENDING  # more members than slots: m3 has not trained round 0 yet
    assert report(sched, controller, m0, K, 0.4) == PAUSE
    assert not sched._ahead.waits(m0)


def test_a_member_failing_for_good_ends_the_round_with_held_members(space, hyp, tmp_path):
    _, sched, controller, (m0, m1, m2, m3) = run_ahead_round0(space, hyp, tmp_path)
    for t, f in zip((m0, m1, m2), (0.4, 0.1, 0.3)):
        report(sched, controller, t, K, f)
    m3.status = Trial.ERROR
    sched.on_trial_error(controller, m3)
    sched.choose_trial_to_run(controller)
    assert sched.state.round == 1  # ended with the three left (one cloned over: m1)
    assert controller.paused == [m1.trial_id]


# ----------------------------------------------------------------------------- real Ray
MEMBERS, EPOCHS = 4, 4


def uneven_members(steps: Path) -> Any:
    """Member 3's epochs take 1.6 s, the others' 0.3 s; fitness accumulates lr0 per epoch."""
    def train_epoch(self: Any) -> dict:
        start = time.time()
        time.sleep(1.6 if self.member == 3 else 0.3)
        self.epoch += 1
        self.quality += self.lr
        (steps / f"{self.member}-{self.epoch}").write_text(f"{start} {time.time()}")
        return {"epoch": self.epoch, "fitness": self.quality, "done": self.epoch >= EPOCHS,
                TOTAL_EPOCHS_KEY: EPOCHS, "restores": self.restores}

    class Member(epoch_member(train_epoch, wait_for=(steps, MEMBERS))):
        def save_checkpoint(self, checkpoint_dir: str) -> None:
            Path(checkpoint_dir, "s").write_text(f"{self.epoch} {self.quality}")

        def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
            epoch, quality = Path(checkpoint_dir, "s").read_text().split()
            self.epoch, self.quality = int(epoch), float(quality)
            self.restores += 1

        def reset_config(self, new_config: dict) -> bool:
            super().reset_config(new_config)
            self.quality, self.lr = 0.0, float(new_config["lr0"])
            self.restores = getattr(self, "restores", 0)
            return True

    return Member


def run_uneven(root: Path, run_ahead: bool) -> tuple[dict, dict]:
    steps = root / "steps"
    steps.mkdir(parents=True)
    grid = fit_population(uneven_members(steps), MEMBERS, one_epoch_rounds(run_ahead=run_ahead),
                          root / "ray")
    assert all(grid[i].error is None for i in range(len(grid)))
    final = {int(r.config["trial_index"]): (r.metrics["fitness"], r.config["lr0"])
             for r in grid}
    final["restores"] = sum(r.metrics["restores"] for r in grid)
    spans = {}
    for path in steps.glob("*-*"):
        if not path.name.startswith("worker-"):
            member, epoch = map(int, path.name.split("-"))
            spans[member, epoch] = tuple(map(float, path.read_text().split()))
    return final, spans


@pytest.mark.ray
def test_fast_members_train_on_while_a_slow_one_finishes_with_the_same_result(tmp_path):
    final, spans = run_uneven(tmp_path / "ahead", run_ahead=True)
    final_p, spans_p = run_uneven(tmp_path / "paused", run_ahead=False)

    restores, restores_p = final.pop("restores"), final_p.pop("restores")
    assert final == final_p  # same decisions: fitness and hyps of every member at the end
    # Pausing, every member restores its checkpoint after every barrier; running ahead,
    # only the one cloned over per barrier (bottom 1 of 4) does.
    assert restores_p >= MEMBERS * (EPOCHS - 1) and restores <= EPOCHS - 1
    # Rounds 1 and 2 (not into the last): some fast member started its next epoch before
    # the slow member finished this one; with pauses none did.
    for epoch in (1, 2):
        slow_end = spans[3, epoch][1]
        assert any(spans[m, epoch + 1][0] < slow_end for m in range(3)), spans
        assert all(spans_p[m, epoch + 1][0] >= spans_p[3, epoch][1] for m in range(3))
