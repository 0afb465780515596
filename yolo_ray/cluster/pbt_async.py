"""Asynchronous PBT rounds: each member is ranked against its round's cohort and never
waits for the round's slowest member.

Synchronous PBT ends every round with its slowest member: with one member per slot the
slots idle for E[slowest epoch] - E[epoch] per round (docs/benchmarks.md, "PBT: members
held at the barrier"). Here a member that ends round r is ranked at once against the
members that have ended round r so far (its *cohort*: their round-r scores, not later or
earlier ones, so no member is compared with one trained longer). In the cohort's bottom
quantile it clones a parent drawn YOLOv5's way from the cohort's top quantile, restoring
the parent's round-r checkpoint (the same epoch: every member keeps its own clock and
trains exactly G rounds, one evolve.csv row each), and explores; otherwise it trains on
with no pause. Every member saves at every round end (a later, slower cohort member may
rank it on top and clone it; a resume restarts it there).

A member may run at most `LAG_ROUNDS` rounds ahead of the slowest live member; one further
ahead waits on its worker (or hands it over), so its cohort's checkpoints are still kept
(num_to_keep) and cohorts fill up before they are used.

What changes with respect to the synchronous scheduler: decisions depend on the order the
members end their rounds, so a run is not repeatable run to run (Ray's synch=False is not
either); the first members of a cohort are ranked among fewer members (a member alone in
its cohort is never cloned; the last one is ranked among all). Random draws stay
np.random.default_rng([seed, round, member]).
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.train._internal.session import _FutureTrainingResult, _TrainingResult
from ray.tune.experiment import Trial
from ray.tune.schedulers.pbt import _make_experiment_tag

from ..errors import ConfigError
from ..evolve.pbt_genes import explore, member_rng, pick_parent, split_quantiles
from .controller_swap import unwrap_controller
from .pbt_hold import save_in_flight
from .pbt_state import LAG_ROUNDS, MemberPlan, find_checkpoint, row_trial_id

LOGGER = logging.getLogger("yolo_ray")


@dataclass
class CohortEntry:
    """One member at the end of one round: what ranks it and what a clone of it takes."""

    trial: Any
    score: float
    genes: dict[str, float]
    save: Any     # the round-end save: a _FutureTrainingResult until first resolved
    result: dict  # the round-end result (its training_iteration goes with the weights)

    def checkpoint(self) -> _TrainingResult | None:
        """The saved round-end state (blocks until the save is done); None if it failed."""
        if isinstance(self.save, _FutureTrainingResult):
            self.save = self.save.resolve()
        if self.save is None:
            return None
        saved = getattr(self.save, "checkpoint", self.save)  # a _TrainingResult's, or one
        return _TrainingResult(checkpoint=copy.copy(saved), metrics=self.result)


class Cohorts:
    """Per round, the members that ended it so far (in memory: a resume starts empty)."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[int, CohortEntry]] = {}
        # per round, (score, -member) kept sorted as members join: one insertion per round
        # end instead of sorting the cohort (O(members log members) per row at 1,024)
        self._ranked: dict[int, list[tuple[float, int]]] = {}

    def add(self, round_index: int, member: int, entry: CohortEntry) -> None:
        """Member `member` ended round `round_index` (a retried round replaces its entry)."""
        cohort = self.rounds.setdefault(round_index, {})
        ranked = self._ranked.setdefault(round_index, [])
        if member in cohort:
            ranked.remove((_finite(cohort[member].score), -member))
        cohort[member] = entry
        bisect.insort(ranked, (_finite(entry.score), -member))

    def quantiles(self, round_index: int, fraction: float) -> tuple[list[int], list[int]]:
        """The bottom and top members of the cohort (Ray's sizes), ties broken by member
        index as in the synchronous ranking."""
        return split_quantiles([-m for _, m in self._ranked.get(round_index, [])], fraction)

    def drop_before(self, round_index: int) -> None:
        """Forget rounds no live member can still end (their saves are no longer needed)."""
        for r in [r for r in self.rounds if r < round_index]:
            del self.rounds[r]
            self._ranked.pop(r, None)

    def __getstate__(self) -> dict[str, Any]:
        return {}  # a pickled scheduler (Tune's state) carries no live trials or futures

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


def _finite(score: float) -> float:
    return score if math.isfinite(score) else -math.inf


class AsyncRounds:
    """The asynchronous half of GAPopulationBasedTraining (a mixin over Ray's PBT run with
    synch=False: uses its `_trial_state`, `_quantile_fraction` and `_hyperparam_mutations`,
    and the scheduler's `_state`, `_ga`, `_space`, `_seed`, `_interval`, `_held`,
    `_parking`, `_cohorts`, `_member` and `_score`)."""

    _cohorts: Cohorts
    _early_save: Any  # the round-end save on_trial_result ordered for this result, if any
    _clones: set  # members paused to restore a parent's checkpoint, until they restart
    _restores: dict  # clone -> the parent's checkpoint it restores at its restart
    _trial_state: dict
    _interval: int

    # ------------------------------------------------------------------ clock
    def _rounds_done(self, trial: Trial) -> int:
        """Rounds `trial` has ended (its clock at its last round end)."""
        return int(self._trial_state[trial].last_train_time) // self._interval

    def _slowest(self, tune_controller: Any) -> int:
        """Rounds ended by the slowest live member."""
        done = [self._rounds_done(t) for t in tune_controller.get_trials()
                if not t.is_finished() and t in self._trial_state]
        return min(done) if done else 0

    def _ahead(self, trial: Trial, slowest: int) -> bool:
        """Whether `trial` must wait before starting its next round (the lag bound)."""
        return self._rounds_done(trial) - slowest > LAG_ROUNDS

    # ------------------------------------------------------------------ at a round end
    def _save_round_end(self, tune_controller: Any, trial: Trial, result: dict) -> Any:
        """Order a member's round-end save as soon as its result comes in, before its row is
        written (fsyncs) and it is ranked (`_async_rank` takes it): the worker saves while
        the driver works. Ordered after, the save reached the worker ~3 ms later, and a
        worker's gap between two epochs is a few such round trips (docs/benchmarks.md,
        "Where the rest goes"). None when this result ends no round."""
        if trial.status != Trial.RUNNING or save_in_flight(trial) is not None or \
                not self._at_barrier(trial, result):  # type: ignore[attr-defined]
            return None
        return tune_controller._schedule_trial_save(trial, result=result)

    def _async_rank(self, trial: Trial, tune_controller: Any) -> None:
        """`trial` ended a round (Ray's async step called us): save, rank in its cohort,
        clone a parent when in the bottom quantile, and plan its next round."""
        state = self._trial_state[trial]
        round_index = self._rounds_done(trial) - 1
        member = self._member(trial)  # type: ignore[attr-defined]
        save = self._early_save or save_in_flight(trial) or \
            tune_controller._schedule_trial_save(trial, result=state.last_result)
        self._num_checkpoints += 1  # type: ignore[attr-defined]
        genes = {k: float(trial.config[k]) for k in self.genes}  # type: ignore[attr-defined]
        self._cohorts.add(round_index, member, CohortEntry(
            trial, self._score(trial), genes, save, dict(state.last_result or {})))  # type: ignore[attr-defined]
        lower, upper = self._cohorts.quantiles(round_index, self._quantile_fraction)  # type: ignore[attr-defined]
        source = member
        if member in lower and upper:
            parent, rng = self._cohort_parent(member, round_index, upper)
            if self._clone(tune_controller, trial, round_index, parent, rng):
                source = parent
        self._plan_next(trial, member, round_index, source)

    def _cohort_parent(self, member: int, round_index: int, upper: list[int]
                       ) -> tuple[int, np.random.Generator]:
        """YOLOv5's 'single' parent among the cohort's top members, and the generator of
        (seed, r+1, m) that drew it (explore continues its stream)."""
        cohort = self._cohorts.rounds[round_index]
        rng = member_rng(self._seed, round_index + 1, member)  # type: ignore[attr-defined]
        keys = self.genes  # type: ignore[attr-defined]
        pick = pick_parent(self._ga, [cohort[m].score for m in upper],  # type: ignore[attr-defined]
                           [[cohort[m].genes[k] for k in keys] for m in upper], rng)
        return upper[pick], rng

    def _clone(self, tune_controller: Any, trial: Trial, round_index: int, parent: int,
               rng: np.random.Generator) -> bool:
        """`trial` restores `parent`'s round-end checkpoint with explored hyps; False when
        that save failed (the member then trains on as it is, as Ray's PBT does)."""
        entry = self._cohorts.rounds[round_index][parent]
        checkpoint = entry.checkpoint()
        if checkpoint is None:
            LOGGER.warning(f"PBT: member {parent}'s round {round_index} save failed; member "
                           f"{self._member(trial)} trains on without cloning it")  # type: ignore[attr-defined]
            return False
        child, _ = explore(self._ga, self._space, entry.genes, rng)  # type: ignore[attr-defined]
        config = copy.deepcopy(trial.config)
        config.update(child)
        # It pauses once Tune has registered its own round-end save (in flight: a later
        # cohort member may still clone it) and restores the parent's at its restart. Pausing
        # it now dropped that save unregistered: Tune's checkpoint index lagged the worker's,
        # and the member's next save overwrote the folder a later clone of it restored (one
        # epoch ahead of its clock: a round skipped, a row missing; 3 of 2,560 rows at 128
        # members on 16 slots).
        self._parking.park(tune_controller, trial)  # type: ignore[attr-defined]
        self._clones.add(trial)  # restarts on the worker it leaves (a parked one)
        self._restores[trial] = checkpoint
        self._held.forget(trial)  # type: ignore[attr-defined]
        trial.set_experiment_tag(_make_experiment_tag(
            self._trial_state[trial].orig_tag, config, self._hyperparam_mutations))  # type: ignore[attr-defined]
        trial.set_config(config)
        self._num_perturbations += 1  # type: ignore[attr-defined]
        return True

    def _restore_parent(self, trial: Trial) -> None:
        """`trial` restarts: a clone restores its parent's checkpoint (Tune restores the
        latest one it registered, the member's own)."""
        checkpoint = self._restores.pop(trial, None)
        if checkpoint is not None:
            trial.run_metadata.checkpoint_manager._latest_checkpoint_result = checkpoint

    def _plan_next(self, trial: Trial, member: int, round_index: int, source: int) -> None:
        """Record how `member` starts round `round_index` + 1 (saved to pbt_state.json)."""
        st = self._state  # type: ignore[attr-defined]
        source_trial = self._cohorts.rounds[round_index][source].trial
        key = row_trial_id(source_trial.trial_id, source, round_index)
        old = st.members.get(member)
        if old is not None and (old.round or 0) == round_index:
            st.previous[member] = old
        st.members[member] = MemberPlan(
            trial.trial_id, {k: float(trial.config[k]) for k in self.genes},  # type: ignore[attr-defined]
            source, source != member, st.rows.get(key), round=round_index + 1)
        st.perturbations = self._num_perturbations  # type: ignore[attr-defined]
        self._unsaved = True  # written at most every STATE_SAVE_S (pbt_resume)

    def _async_decision(self, tune_controller: Any, trial: Trial, decision: str) -> str:
        """After a round end: train on, wait on the worker (lag bound) or hand it over;
        members waiting for the slowest go on if it has caught up."""
        slowest = self._slowest(tune_controller)  # O(members): once per round end
        self._cohorts.drop_before(slowest)
        self._release_ahead(tune_controller, slowest)
        if trial in self._clones:
            return self.PAUSE  # type: ignore[attr-defined]  # after its save: see _clone
        if trial.status != Trial.RUNNING:
            return decision
        if self._async_slot_wanted(tune_controller, trial, slowest):
            self._parking.park(tune_controller, trial)  # type: ignore[attr-defined]
            return self.PAUSE  # type: ignore[attr-defined]
        if self._ahead(trial, slowest):
            self._held.hold(trial, None)  # type: ignore[attr-defined]
            return self.NOOP  # type: ignore[attr-defined]  # idle on its worker
        return self.CONTINUE  # type: ignore[attr-defined]

    def _async_slot_wanted(self, tune_controller: Any, trial: Trial, slowest: int) -> bool:
        """Whether `trial` should hand its worker over: members allowed to train and waiting
        for a worker (none of their own parked or starting) outnumber the kept workers that
        parked members leave free. With one member per slot only clones wait, each for its
        own parked worker: nobody hands over. With more members than slots they take turns
        (Ray's asynchronous rule: pause at a round end while others wait)."""
        from .worker_starts import own_worker_starting

        parking = self._parking  # type: ignore[attr-defined]
        unparked = parked = 0
        for t in tune_controller.get_trials():
            if t is trial or t.status not in (Trial.PENDING, Trial.PAUSED) or \
                    self._ahead(t, slowest) or own_worker_starting(tune_controller, t):
                continue
            if t in self._clones or parking.is_parked(t):
                parked += 1
            else:
                unparked += 1
        return unparked > max(0, parking.cached_workers() - parked)

    def _release_ahead(self, tune_controller: Any, slowest: int | None = None) -> None:
        """Members waiting on their workers for the slowest one go on once it caught up."""
        if not self._held.held:  # type: ignore[attr-defined]
            return
        if slowest is None:
            slowest = self._slowest(tune_controller)
        controller = unwrap_controller(tune_controller)
        for t in list(self._held.held):  # type: ignore[attr-defined]
            if t.status == Trial.RUNNING and not self._ahead(t, slowest):
                self._held.forget(t)  # type: ignore[attr-defined]
                controller._schedule_trial_train(t)

    # ------------------------------------------------------------------ resume
    def _apply_saved_plans(self, tune_controller: Any) -> None:
        """After Tuner.restore: every unfinished member restarts its own saved round (or
        the one before when that round's starting checkpoint is missing)."""
        trials = {self._member(t): t for t in tune_controller.get_trials()}  # type: ignore[attr-defined]
        st, k = self._state, self._interval  # type: ignore[attr-defined]
        for member, trial in trials.items():
            if trial.is_finished():
                continue
            plan, found = self._member_restart(member, trials)
            self._restart_member(trial, plan.config, found, (plan.round or 0) * k)  # type: ignore[attr-defined]
            st.members[member] = plan
        st.refresh_round()
        LOGGER.info("PBT (asynchronous) resumes each member at its own round: "
                    + ", ".join(f"{m}:{p.round}" for m, p in sorted(st.members.items())))

    def _member_restart(self, member: int, trials: dict[int, Any]) -> tuple[MemberPlan, Any]:
        st, k = self._state, self._interval  # type: ignore[attr-defined]
        for plan in (st.members.get(member), st.previous.get(member)):
            if plan is None:
                continue
            r = plan.round or 0
            if r == 0:
                return plan, None
            found = find_checkpoint(trials[plan.source], plan.source, r * k)
            if found is not None:
                return plan, found
        raise ConfigError(f"{self._state_path}: cannot resume member {member}: the checkpoint "  # type: ignore[attr-defined]
                          "its round starts from is missing (deleted by num_to_keep?)")
