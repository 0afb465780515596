"""GAPopulationBasedTraining: Ray Tune's PBT with YOLOv5's fitness-weighted parent and mutation."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining

from ..errors import ConfigError, StoreError
from ..evolve.ga import GeneticAlgorithm, trial_seed
from ..evolve.pbt_genes import initial_genes
from ..evolve.space import HypLike, SearchSpace
from ..evolve.store import EvolutionStore
from ..train.results import RESULT_KEYS
from .actor_parking import ActorParking
from .pbt_async import AsyncRounds, Cohorts
from .pbt_hold import HeldMembers, HoldAtBarrier
from .pbt_resume import ResumableRounds
from .pbt_state import MemberPlan, PBTState, member_record, record_round
from .pbt_sync import SyncRounds
from .tune_failures import count_each_failure_once
from .worker_starts import leave_starting_workers, own_worker_starting

LOGGER = logging.getLogger("yolo_ray")
MEMBER_KEY = "trial_index"  # config key: the member index; never copied from a parent


class GAPopulationBasedTraining(AsyncRounds, SyncRounds, HoldAtBarrier, ResumableRounds,
                                PopulationBasedTraining):
    """PBT whose exploit/explore is YOLOv5's classic GA (spec §1A), synchronous by default.

    Every `perturbation_interval` epochs all members are evaluated (one round). Members in
    the bottom quantile then load the weights of a parent drawn YOLOv5-style from the top
    quantile (its best min(n_parents, n) members, w = f − min f + 1e-6, one weighted choice)
    and train on with the parent's hyps mutated by YOLOv5's gain-weighted multiplicative
    mutation, clipped to the limits and rounded to 5 decimals. Member m draws at round r from
    np.random.default_rng([seed, r, m]) only. The trial config holds one key per hyp plus
    `trial_index` (the member's index); other keys (settings) are constants.

    Args:
        space: genes (gain, lower, upper); sidecar genes (freeze, prune) are ignored since
            the model cannot change mid-run.
        base_hyp: the starting hyps; member 0 starts with them, member m > 0 with a mutation
            of them (round 0) unless `mutate_initial` is False. Genes already in a trial's
            config are kept.
        perturbation_interval: K, in units of `time_attr` (epochs).
        seed: run seed for every draw.
        quantile_fraction: PBT's bottom/top share (ceil(n·q), at most n/2 each).
        n_parents, mp, sigma: YOLOv5's 5, 0.8, 0.2.
        metric, mode, time_attr: what to maximise and the clock; set them here, not in
            TuneConfig (Tune refuses both).
        store: optional EvolutionStore; each member's evaluation at each round becomes one
            evolve.csv row (written in the driver), and the stored fitness is what ranks.
        state_path: optional pbt_state.json; written atomically after every round and read
            back on `Tuner.restore` (Ray does not restore scheduler state).
        keep_workers: keep each member's worker process across round barriers instead of
            letting Tune restart it (actor_parking.py).
        probe_workers_s: when > 0, after each round and after any member error every kept
            worker is pinged and those silent for this long are replaced (a node lost but not
            yet declared dead); the launcher sets it on clusters.
        hold_at_barrier: members past a round's end wait on their workers instead of
            pausing, and those not cloned over train on with no restore (pbt_hold.py);
            same decisions and rows as pausing.
        asynchronous: no round barrier: a member ending a round is ranked at once against
            the members that ended the same round so far and trains on (pbt_async.py).
    """

    def __init__(self, space: SearchSpace, base_hyp: HypLike, perturbation_interval: int,
                 *, seed: int = 0, quantile_fraction: float = 0.25, n_parents: int = 5,
                 mp: float = 0.8, sigma: float = 0.2, mutate_initial: bool = True,
                 metric: str = "fitness", mode: str = "max", time_attr: str = "epoch",
                 store: EvolutionStore | None = None, state_path: str | Path | None = None,
                 log_config: bool = True, keep_workers: bool = True,
                 probe_workers_s: float = 0.0, hold_at_barrier: bool = True,
                 asynchronous: bool = False) -> None:
        if isinstance(perturbation_interval, bool) or int(perturbation_interval) != \
                perturbation_interval or perturbation_interval < 1:
            raise ConfigError(f"PBT interval must be a whole number of epochs >= 1, "
                              f"got {perturbation_interval!r}")
        space = space.without(*space.extra_names())
        self._ga = GeneticAlgorithm(space, base_hyp, seed, n_parents=n_parents, mp=mp,
                                    sigma=sigma)
        mutations: dict[str, Any] = {k: tune.uniform(space[k].lower, space[k].upper)
                                     for k in self._ga.hyp_keys
                                     if k in space and space[k].gain > 0}
        super().__init__(time_attr=time_attr, metric=metric, mode=mode,
                         perturbation_interval=int(perturbation_interval),
                         hyperparam_mutations=mutations,
                         custom_explore_fn=None if mutations else _unchanged,
                         quantile_fraction=quantile_fraction, resample_probability=0.0,
                         log_config=log_config, require_attrs=True,
                         synch=not asynchronous)
        self._space, self._seed, self._interval = space, seed, int(perturbation_interval)
        self._mutate_initial = mutate_initial
        self._store = store
        self._state_path = Path(state_path) if state_path is not None else None
        self._state = PBTState(seed=seed, interval=self._interval, synchronous=self._synch)
        self._cohorts = Cohorts()  # asynchronous: each round's members so far
        self._clones: set[Trial] = set()  # asynchronous: cloned, not restarted yet
        self._restores: dict[Trial, Any] = {}  # asynchronous: a clone's parent checkpoint
        self._loaded = False
        self._unsaved = False  # members added or ended since the state file was written
        self._next_save = -math.inf  # deferred state writes (pbt_resume.STATE_SAVE_S)
        self._resume_pending = False
        self._rngs: dict[Trial, np.random.Generator] = {}
        self._sources: dict[int, int] = {}   # member -> parent member, during one sync
        # workers kept across round barriers
        self._parking = ActorParking(keep_workers, probe_s=probe_workers_s)
        self._probe_pending = False  # a round ended: ping kept workers before handing out
        self._member_failed = False  # a member errored: the round may wait on it no more
        self._next_barrier_check = 0.0
        self._held = HeldMembers(hold_at_barrier)
        self._early_save: Any = None  # asynchronous: this result's round-end save, if ordered
        # A failed store write (disk full): raised from choose_trial_to_run, which Tune does
        # not catch, so the run stops instead of retrying the member forever.
        self.store_error: StoreError | None = None

    # ------------------------------------------------------------------ public helpers
    @property
    def genes(self) -> tuple[str, ...]:
        """The hyp keys every trial config carries (evolve.csv hyp columns)."""
        return self._ga.hyp_keys

    @property
    def keeps_workers(self) -> bool:
        """Whether members keep their worker processes across round barriers."""
        return self._parking.enabled

    @property
    def probes_workers_s(self) -> float:
        """Seconds a kept worker may take to answer a ping (0: not pinged)."""
        return self._parking.probe_s if self._parking.enabled else 0.0

    @property
    def state(self) -> PBTState:
        """The live resumable state (round, member plans, rows)."""
        self._state.refresh_round()
        return self._state

    def initial_genes(self, member: int) -> dict[str, float]:
        """Member `member`'s round-0 hyps: the base for 0, else a mutation of the base."""
        return initial_genes(self._ga, self._space, member, self._mutate_initial)

    def debug_string(self) -> str:
        return (f"GAPopulationBasedTraining: round {self._state.round}, "
                f"{self._num_checkpoints} checkpoints, {self._num_perturbations} perturbs")

    # ------------------------------------------------------------------ trial lifecycle
    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        count_each_failure_once(tune_controller)  # members reuse workers: see tune_failures
        leave_starting_workers(tune_controller)   # and see worker_starts
        self._load_state_once()
        member = self._member(trial)
        plan = self._state.members.get(member)
        if plan is None:
            for key, value in self.initial_genes(member).items():
                trial.config.setdefault(key, value)
            self._state.members[member] = MemberPlan(
                trial.trial_id, {k: float(trial.config[k]) for k in self.genes}, member)
            # Saved at the next step, not per member (O(members) each: O(n²) to start).
            # Unsaved is safe: a resume without the plan re-derives it from the config.
            self._unsaved = True
        elif plan.trial_id != trial.trial_id:
            raise ConfigError(f"{self._state_path}: member {member} belongs to trial "
                              f"{plan.trial_id}, not {trial.trial_id}: the state file is "
                              "from another experiment")
        elif trial not in self._trial_state:
            self._resume_pending = True  # Tuner.restore: re-apply the saved round
        # else: Tune re-adds a trial it retries after a failure; the others go on as they are
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._early_save = None if self._synch else \
            self._save_round_end(tune_controller, trial, result)
        try:
            return self._on_result(tune_controller, trial, result)
        finally:
            self._early_save = None

    def _on_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        try:
            result = self._record_row(trial, result)
        except StoreError as e:
            LOGGER.error(f"evolve: {e}; stopping (everything written before is intact)")
            self.store_error = self.store_error or e
            return self.STOP
        boundary = self._at_barrier(trial, result)
        if not self._synch:
            decision = super().on_trial_result(tune_controller, trial, result)
            if boundary:
                decision = self._async_decision(tune_controller, trial, decision)
            if decision not in (self.PAUSE, self.NOOP):
                self._parking.release(trial)
            return decision
        before = self._next_perturbation_sync
        holds = boundary and self._held.enabled and not self._slot_wanted(tune_controller,
                                                                          trial)
        if boundary and not holds:  # it will pause: keep its worker for next round
            self._parking.park(tune_controller, trial)
        decision = super().on_trial_result(tune_controller, trial, result)
        round_ended = self._next_perturbation_sync != before  # every member reported
        if boundary:
            decision = self._past_round_end(tune_controller, trial, result, decision, holds,
                                            round_ended)
        if decision not in (self.PAUSE, self.NOOP):
            self._parking.release(trial)
        if round_ended:
            self._finish_round(tune_controller)
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        if result and self.store_error is None:
            try:
                self._record_row(trial, result)
            except StoreError as e:
                LOGGER.error(f"evolve: {e}; stopping (everything written before is intact)")
                self.store_error = e
            # Deferred (the state file is rewritten whole: per member that was O(members²)
            # at the end of a run); a row missing from it is found in the store on resume.
            self._unsaved = True
            if not any(t is not trial for t in tune_controller.get_live_trials()):
                self._save_state()  # the last member: the file ends complete
        self._forget_ended(trial)
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._parking.release(trial)
        self._clones.discard(trial)
        # retried from its last checkpoint (a clone: its parent's, _restores); its save stays
        # for clones
        self._held.forget(trial)
        self._member_failed = True  # retried, or failed for good: known at the next step
        # Perhaps its node was lost: kept workers there must not go to its retry (Tune ends a
        # member whose reset fails on a dead worker for good); ping before handing out.
        self._probe_pending = True
        super().on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._forget_ended(trial)
        super().on_trial_remove(tune_controller, trial)

    def _forget_ended(self, trial: Trial) -> None:
        """`trial` ended or was removed: no worker kept, no clone restore, no held save."""
        self._parking.release(trial)
        self._clones.discard(trial)
        self._restores.pop(trial, None)
        self._held.forget(trial, drop_save=True)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self.store_error is not None:
            raise self.store_error
        if self._unsaved and time.monotonic() >= self._next_save:
            self._save_state()
        if self._resume_pending:
            self._resume_pending = False
            if self._synch:
                self._apply_saved_round(tune_controller)
            else:
                self._apply_saved_plans(tune_controller)
        self._parking.evict_lost()  # before Tune hands cached actors out
        if self._probe_pending:
            self._probe_pending = False
            self._parking.evict_silent()
        now = time.monotonic()
        if self._member_failed or now >= self._next_barrier_check:
            # Also on a timer: Tune can end a trial without telling the scheduler (a second
            # failure of a trial it already requeued).
            self._member_failed, self._next_barrier_check = False, now + 1.0
            self._end_round_without_failed(tune_controller)
        if not self._synch:
            self._release_ahead(tune_controller)
        trial = self._next_member(tune_controller)
        if trial is None:
            return None
        if not self._parking.can_start(trial):
            self._hand_over_idle(tune_controller)
            return None  # wait for a kept worker instead of starting a process
        self._parking.release(trial)  # it runs again, on its parked actor if still cached
        self._clones.discard(trial)
        self._held.restarted(trial)
        self._restore_parent(trial)
        return trial

    def _next_member(self, tune_controller: Any) -> Trial | None:
        """The waiting member least trained (within the round when synchronous, within the
        lag bound when not), slowest last epoch first, leaving out members whose own new
        worker is starting: they start on it."""
        slowest = None if self._synch else self._slowest(tune_controller)
        waiting = [t for t in tune_controller.get_trials()
                   if t.status in (Trial.PENDING, Trial.PAUSED) and not
                   (self._trial_state[t].last_train_time >= self._next_perturbation_sync
                    if slowest is None else self._ahead(t, slowest))]
        return min((t for t in waiting if not own_worker_starting(tune_controller, t)),
                   key=self._start_order, default=None)

    def _start_order(self, trial: Trial) -> tuple[float, float]:
        """Least trained first (Ray's order); then longest last epoch first. With more members
        than slots a round runs in waves and ends with the last wave's slowest member: the
        slow members go first and the quick ones fill the slots as they free up (longest
        processing time first, Graham's rule). A member's epoch time changes little from one
        round to the next (same model and data; its hyps change augmentation cost)."""
        # run_metadata's dict, not Trial.last_result: that property builds a set of the
        # result's keys per call (per waiting member per Tune step: 0.6 ms a step at 64).
        meta = getattr(trial, "run_metadata", None)
        last = (meta.last_result if hasattr(meta, "last_result") else
                getattr(trial, "last_result", None)) or {}
        return (self._trial_state[trial].last_train_time,
                -float(last.get("time_this_iter_s") or 0.0))

    # ------------------------------------------------------------------ exploit / explore
    def _checkpoint_or_exploit(self, trial: Trial, tune_controller: Any,
                               upper_quantile: list[Trial], lower_quantile: list[Trial]) -> None:
        if not self._synch:  # ranked in its round's cohort, not the population now
            return self._async_rank(trial, tune_controller)
        return super()._checkpoint_or_exploit(trial, tune_controller, upper_quantile,
                                              lower_quantile)

    # ------------------------------------------------------------------ rows and rounds
    def _record_row(self, trial: Trial, result: dict) -> dict:
        """Write the member's row at a round boundary; rank by the stored (csv) fitness."""
        epoch = result.get(self._time_attr)
        if epoch is None or self._metric not in result:
            return result
        epoch = int(epoch)
        if epoch < self._interval or epoch % self._interval:
            return result
        round_index = epoch // self._interval - 1
        member = self._member(trial)
        score = float(result[self._metric])
        if self._store is not None and all(k in result for k in RESULT_KEYS):
            plan = self._state.members.get(member)
            planned = self._state.round if plan is None or plan.round is None else plan.round
            record = member_record(trial.trial_id, trial.config, self.genes, member,
                                   round_index, result, seed=trial_seed(self._seed, member),
                                   plan=plan if round_index == planned else None)
            row = record_round(self._store, self._state, record)
            if row is not None:
                # The csv keeps 5 significant digits; ranking by it makes a resumed run
                # (which may re-evaluate a round already in the csv) decide identically.
                score = self._store.row(row).fitness
        if not math.isfinite(score):  # a diverged member ranks last instead of vanishing
            score = -math.inf if (self._metric_op or 1.0) > 0 else math.inf
        return {**result, self._metric: score}

    def _at_barrier(self, trial: Trial, result: Mapping[str, Any]) -> bool:
        """Whether Ray's sync PBT will pause `trial` on this result (a round boundary)."""
        time = result.get(self._time_attr)
        state = self._trial_state.get(trial)
        return time is not None and self._metric in result and state is not None and \
            time - state.last_perturbation_time >= self._perturbation_interval

    # ------------------------------------------------------------------ persistence
    def _member(self, trial: Trial) -> int:
        member = trial.config.get(MEMBER_KEY)
        if member is None:  # a user Tuner without member ids: number trials as they come
            taken = {p for p in self._state.members}
            member = next(i for i in range(len(taken) + 1) if i not in taken)
            trial.config[MEMBER_KEY] = member
        return int(member)

    def _score(self, trial: Trial) -> float:
        score = self._trial_state[trial].last_score
        return -math.inf if score is None or math.isnan(score) else float(score)


def _unchanged(config: dict) -> dict:
    """Explore for a space whose gains are all 0: PBT then only exploits."""
    return config
