"""Synchronous PBT rounds: every member's result at a round's end is ranked against the whole
population once the last one reports, weak members clone a strong one YOLOv5's way, and the
round's plan is saved.

Ray's synchronous PBT decides at its barrier; this mixin supplies what differs from Ray's:
the parent (YOLOv5's fitness-weighted 'single' choice among the top quantile, drawn from
np.random.default_rng([seed, round + 1, member])), the mutation (YOLOv5's gains and limits),
a ranking that breaks ties by member index (a resumed run ranks as the first one did), the
saves a clone restores (a held or pausing parent's round-end save, never a newer one), and
the end of a round: the state file written, and a round ended without a member that failed
for good.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
from ray.tune.experiment import Trial

from ..evolve.ga import GeneticAlgorithm
from ..evolve.pbt_genes import explore, member_rng, pick_parent, split_quantiles
from ..evolve.space import SearchSpace
from . import faults
from .pbt_hold import HeldMembers, drop_cached_stop, save_in_flight
from .pbt_state import MemberPlan, PBTState, row_trial_id

LOGGER = logging.getLogger("yolo_ray")


class SyncRounds:
    """The synchronous half of GAPopulationBasedTraining (a mixin over Ray's PBT run with
    synch=True: uses its `_trial_state`, `_quantile_fraction`, `_next_perturbation_sync` and
    `_perturbation_interval`, and the scheduler's `_member`, `_score`, `_save_state`,
    `_after_barrier` and `genes`)."""

    _ga: GeneticAlgorithm
    _space: SearchSpace
    _seed: int
    _state: PBTState
    _held: HeldMembers
    _parking: Any
    _rngs: dict[Trial, np.random.Generator]
    _sources: dict[int, int]
    _trial_state: dict
    _synch: bool
    _probe_pending: bool

    def _checkpoint_or_exploit(self, trial: Trial, tune_controller: Any,
                               upper_quantile: list[Trial], lower_quantile: list[Trial]) -> None:
        if trial in upper_quantile and self._held.waits(trial):
            # Held past its round's end: clones take its round-end save (Ray would order a
            # new save of a RUNNING member).
            self._trial_state[trial].last_checkpoint = self._held.saves[trial]
            self._num_checkpoints += 1
            return None
        saving = save_in_flight(trial)
        if trial in upper_quantile and trial.status == Trial.RUNNING and saving is not None:
            # A member that paused at the barrier stays RUNNING until its pause save resolves;
            # Ray would order a second save, which the controller never counts (the pause
            # drops it), so the member's next save reuses that folder and overwrites the
            # checkpoint a clone restores from (a retried or resumed clone got the parent's
            # newer weights). Clone from the save in flight, as Ray does for a PAUSED trial.
            self._trial_state[trial].last_checkpoint = saving
            self._num_checkpoints += 1
            return None
        if trial not in lower_quantile or not upper_quantile:
            return super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                                  lower_quantile)
        # Ray's exploit picks random.choice(upper); a one-element list makes it our parent.
        parent = self.choose_parent(trial, upper_quantile)
        return super()._checkpoint_or_exploit(trial, tune_controller, [parent], lower_quantile)

    def choose_parent(self, trial: Trial, candidates: list[Trial]) -> Trial:
        """YOLOv5's 'single' parent among the best min(n_parents, n) candidates."""
        rng = member_rng(self._seed, self._state.round + 1, self._member(trial))
        genes = [[float(t.config[k]) for k in self.genes] for t in candidates]
        parent = candidates[pick_parent(self._ga, [self._score(t) for t in candidates],
                                        genes, rng)]
        self._rngs[trial] = rng  # explore continues this member's stream
        return parent

    def _get_new_config(self, trial: Trial, trial_to_clone: Trial) -> tuple[dict, dict]:
        rng = self._rngs.pop(trial, None)
        if rng is None:
            rng = member_rng(self._seed, self._state.round + 1, self._member(trial))
        child, multipliers = explore(self._ga, self._space,
                                     {k: trial_to_clone.config[k] for k in self.genes}, rng)
        # Identity and constants stay the member's own; only the genes come from the parent.
        new_config = copy.deepcopy(trial.config)
        new_config.update(child)
        ops = {k: f"x{v:.4g}" for k, v in multipliers.items()
               if k in self._hyperparam_mutations and child[k] != trial_to_clone.config[k]}
        return new_config, ops

    def _exploit(self, tune_controller: Any, trial: Trial, trial_to_clone: Trial) -> None:
        faults.at_point("pbt.exploit", self._state.round)  # tests only: a driver crash here
        running = trial.status == Trial.RUNNING
        if running:  # Ray pauses it (no save): its worker restores the parent's next
            self._parking.park(tune_controller, trial)
        super()._exploit(tune_controller, trial, trial_to_clone)
        self._held.forget(trial)  # cloned over
        if running:
            drop_cached_stop(tune_controller, trial)
        self._sources[self._member(trial)] = self._member(trial_to_clone)

    def _quantiles(self) -> tuple[list[Trial], list[Trial]]:
        # Ray's version sorts by score only, in trial-add order, which a restore reshuffles:
        # ties are broken by member index so a resumed run ranks exactly as the first one.
        if not self._synch:
            return [], []  # unused: a member is ranked in its round's cohort (pbt_async.py)
        trials = [t for t, s in self._trial_state.items()
                  if s.last_score is not None and not math.isnan(s.last_score)
                  and not t.is_finished()]
        trials.sort(key=lambda t: (self._trial_state[t].last_score, -self._member(t)))
        return split_quantiles(trials, self._quantile_fraction)

    def _finish_round(self, tune_controller: Any) -> None:
        """All members were ranked and the weak ones cloned: save how round r+1 starts."""
        done = self._state.round
        by_member = {self._member(t): t for t in tune_controller.get_trials()}
        plans: dict[int, MemberPlan] = {}
        for member, trial in sorted(by_member.items()):
            if trial.is_finished():
                continue
            source = self._sources.pop(member, member)
            key = row_trial_id(by_member[source].trial_id, source, done)
            plans[member] = MemberPlan(trial.trial_id,
                                       {k: float(trial.config[k]) for k in self.genes},
                                       source, source != member, self._state.rows.get(key))
        self._sources.clear()
        self._state.previous, self._state.members = self._state.members, plans
        self._state.round = done + 1
        self._state.perturbations = self._num_perturbations
        self._probe_pending = True
        self._save_state()
        LOGGER.info(f"PBT round {done} done: {sum(p.cloned for p in plans.values())} of "
                    f"{len(plans)} members cloned a parent")
        going = self._after_barrier(tune_controller)
        if self._held.enabled:
            LOGGER.info(f"PBT round {done}: {going} members held at the barrier went on "
                        "with no restore")

    def _end_round_without_failed(self, tune_controller: Any) -> None:
        """Finish the round when the members still alive all wait at its barrier.

        Ray's synchronous PBT ends a round on the last live member's result. A member that
        fails for good after all the others reported leaves no result to come, and the
        paused members would wait forever (the run hangs); so end the round here, the way
        Ray's on_trial_result does, ranking the members left."""
        # Tune's live set still holds the failed trial for a step after its error.
        live = [t for t in tune_controller.get_live_trials() if not t.is_finished()]
        if not self._synch or not live or any(
                (t.status != Trial.PAUSED and not self._held.waits(t))
                or self._trial_state[t].last_train_time < self._next_perturbation_sync
                for t in live):
            return
        gone = sorted(self._member(t) for t in tune_controller.get_trials()
                      if t.status == Trial.ERROR)
        if not gone:
            return
        LOGGER.warning(f"PBT: member(s) {gone} failed for good; round {self._state.round} "
                       f"ends with the {len(live)} members left")
        now = max(self._trial_state[t].last_train_time for t in live)
        lower, upper = self._quantiles()
        middle = [t for t in live if t not in lower and t not in upper]
        for t in upper + middle + lower:  # strong ones checkpointed before weak ones clone
            self._trial_state[t].last_perturbation_time = now
            self._checkpoint_or_exploit(t, tune_controller, upper, lower)
        self._next_perturbation_sync = max(
            self._next_perturbation_sync + self._perturbation_interval, now)
        self._finish_round(tune_controller)
