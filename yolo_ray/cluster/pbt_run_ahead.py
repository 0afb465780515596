"""Members that go past a synchronous PBT round's end without pausing, when they safely can.

Ray's synchronous PBT pauses each member that reaches a round's end until the last one
does: the early ones' slots idle for the spread of the members' epoch times (the floor of
the idle slot-time measured in docs/benchmarks.md), and every member pays a pause and a
restore (save, reset, load: ~0.3 s) per round even when it keeps its own weights.

With run-ahead, a member that reports its round's end while no other member waits for a
worker to train that round is not paused: its checkpoint is saved (clones of it restore
that one) and it is *held*, idle on its worker. As soon as enough members have reported
below it that it cannot be in the bottom quantile whatever the others report, it is
*released* and trains the next round at once: at the barrier it keeps its weights and hyps
anyway, so nothing it trains is thrown away. At the barrier, held members that keep theirs
go on without a pause or restore; those in the bottom quantile restore their parent's
checkpoint on the same worker. A released member that reaches the next round's end before
the barrier waits, idle, and its result is taken once the round is decided.

The decisions and rows are those of the pausing scheduler: ranking uses the same keys, and
a member's training does not depend on whether it paused (checkpoints restore exactly).
A member is not released into the run's last round: it would end before the barrier.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

from ray.train._internal.session import _FutureTrainingResult  # as Ray's own PBT does
from ray.tune.experiment import Trial

from .controller_swap import unwrap_controller
from .worker_starts import own_worker_starting

RankKey = tuple[float, int]  # (score, -member): the order of GAPopulationBasedTraining._quantiles
TOTAL_EPOCHS_KEY = "epochs_total"  # result key: the member's epochs in all (run-ahead stops short)


def bottom_count(ranked: int, quantile_fraction: float) -> int:
    """How many members PBT's bottom quantile holds among `ranked`: ceil(n·q), at most n/2."""
    if ranked <= 1:
        return 0
    return min(math.ceil(ranked * quantile_fraction), ranked // 2)


class RunAhead:
    """One round's members that went past its end: held (idle) or ahead (training on)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.saves: dict[Any, Any] = {}      # trial -> its round-end save (clones take it)
        self.held: dict[Any, RankKey] = {}   # trial -> its rank key; idle on its worker
        self._may_run: set[Any] = set()      # held trials not at the run's last round
        self.ahead: set[Any] = set()         # released: training the next round
        self.stash: dict[Any, dict] = {}     # ahead trial -> its next round-end result
        self._keys: dict[Any, RankKey] = {}  # trial -> its key, for every report this round
        self._sorted: list[RankKey] = []
        self.handed_over: set[Any] = set()   # idle members paused for a waiting member
        self.released = 0                    # members released this round (for the log)

    def reported(self, trial: Any, key: RankKey) -> None:
        """`trial` reported this round's end with rank `key` (again, after a retry: replaced)."""
        old = self._keys.get(trial)
        if old is not None:
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._keys[trial] = key
        bisect.insort(self._sorted, key)

    def hold(self, trial: Any, save: Any, may_run: bool) -> None:
        """`trial` waits for the barrier on its worker; `save` holds its round-end weights."""
        self.saves[trial] = save
        self.held[trial] = self._keys[trial]
        if may_run:
            self._may_run.add(trial)

    def release_safe(self, ranked: int, quantile_fraction: float) -> list[Any]:
        """Held trials that cannot fall in the bottom quantile now: they become `ahead`.

        A member is out of the bottom n_b once n_b reported keys rank below its own (the
        keys are unique: the member index breaks ties)."""
        candidates = [t for t in self.held if t in self._may_run]
        if not candidates:
            return []
        n_b = bottom_count(ranked, quantile_fraction)
        if n_b > len(self._sorted):
            return []
        threshold = self._sorted[n_b - 1] if n_b else None
        safe = [t for t in candidates if threshold is None or self.held[t] > threshold]
        for t in safe:
            del self.held[t]
            self._may_run.discard(t)
            self.ahead.add(t)
        self.released += len(safe)
        return safe

    def early(self, trial: Any, epoch: Any, interval: int) -> str | None:
        """For a result of an ahead trial (the next round, before the barrier): 'stash' at
        that round's end, else 'continue'; None for any other result."""
        if trial not in self.ahead or epoch is None:
            return None
        return "stash" if int(epoch) % interval == 0 else "continue"

    def idle_one(self) -> Any | None:
        """A member idle on its worker past this round's end (held, or ahead with its next
        result stashed) to pause, so a member that has yet to train this round gets the
        worker; None if there is none. It stays at the barrier (its save and stash kept)."""
        trial = next(iter(self.held), None)
        if trial is None:
            trial = next(iter(self.stash), None)
        if trial is not None:
            self.held.pop(trial, None)
            self._may_run.discard(trial)
            self.ahead.discard(trial)
        return trial

    def waits(self, trial: Any) -> bool:
        """Whether `trial` went past this round's end (held or ahead): it is at the barrier."""
        return trial in self.saves

    def forget(self, trial: Any, drop_save: bool = False) -> None:
        """`trial` errored, ended or was paused: no longer held or ahead. Its save stays for
        clones unless `drop_save` (it ended)."""
        self.held.pop(trial, None)
        self._may_run.discard(trial)
        self.ahead.discard(trial)
        self.stash.pop(trial, None)
        self.handed_over.discard(trial)
        if drop_save:
            self.saves.pop(trial, None)

    def end_round(self) -> tuple[list[Any], dict[Any, dict]]:
        """The barrier passed: the held trials and the stashed results; all else cleared."""
        held, stash = list(self.held), dict(self.stash)
        self.saves.clear()
        self.held.clear()
        self._may_run.clear()
        self.ahead.clear()
        self.stash.clear()
        self.handed_over.clear()
        self.released = 0
        self._keys.clear()
        self._sorted.clear()
        return held, stash

    def __getstate__(self) -> dict[str, Any]:
        # A pickled scheduler (Tuner state) carries the setting, not live trials or futures.
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(bool(state.get("enabled", True)))


class RunAheadRounds:
    """The run-ahead half of GAPopulationBasedTraining (a mixin over Ray's synchronous PBT:
    uses its `_trial_state`, `_next_perturbation_sync`, `_quantile_fraction`, `_time_attr`
    and the scheduler's `_ahead`, `_parking`, `_interval`, `_score`, `_member`)."""

    _ahead: RunAhead
    _parking: Any
    _interval: int
    _trial_state: dict
    _next_perturbation_sync: float
    _quantile_fraction: float
    _time_attr: str

    def _early_result(self, trial: Trial, result: dict) -> str | None:
        """The decision for a result of a member trained on past the barrier (None: any
        other result, which the scheduler decides)."""
        early = self._ahead.early(trial, result.get(self._time_attr), self._interval)
        if early == "stash":  # the next round's end before this round's barrier: wait idle
            self._ahead.stash[trial] = result
            return self.NOOP
        if early == "continue":  # inside the next round, trained early: nothing to decide
            return self.CONTINUE
        return None

    def _past_round_end(self, tune_controller: Any, trial: Trial, result: dict, decision: str,
                        goes_on: bool, round_ended: bool) -> str:
        """`trial`'s decision at its round's end, given Ray's (PAUSE until the barrier)."""
        paused_here = decision == self.PAUSE and trial.status == Trial.RUNNING
        if not round_ended:
            self._ahead.reported(trial, self._rank_key(trial))
            if goes_on and paused_here:
                self._ahead.hold(trial, self._round_save(tune_controller, trial, result),
                                 self._may_run_ahead(result))
                decision = self.NOOP
            return self._release_safe(tune_controller, trial, decision)
        if goes_on and paused_here:  # the round's last: it keeps its weights, trains on
            self._round_save(tune_controller, trial, result)
            return self.CONTINUE  # Tune waits for the save before the next step
        return decision

    def _slot_wanted(self, tune_controller: Any, trial: Trial) -> bool:
        """Whether members that have yet to train this round, and no worker of their own
        starting, outnumber the free workers kept for them: then `trial` pauses and hands
        its worker over (Ray's way)."""
        waiting = sum(1 for t in tune_controller.get_trials() if t is not trial and
                      t.status in (Trial.PENDING, Trial.PAUSED) and
                      self._trial_state[t].last_train_time < self._next_perturbation_sync
                      and not own_worker_starting(tune_controller, t))
        return waiting > self._parking.cached_workers()

    def _rank_key(self, trial: Trial) -> RankKey:
        return (self._score(trial), -self._member(trial))  # type: ignore[attr-defined]

    def _may_run_ahead(self, result: Mapping[str, Any]) -> bool:
        """Not into the run's last round: the member would end before the barrier."""
        total = result.get(TOTAL_EPOCHS_KEY)
        return total is not None and result[self._time_attr] + self._interval < int(total)

    def _round_save(self, tune_controller: Any, trial: Trial, result: dict) -> Any:
        """The save of `trial`'s round-end state: the one in flight (Ray orders one for a
        top member at the barrier) or a new one."""
        saving = getattr(trial.temporary_state, "saving_to", None)
        if isinstance(saving, _FutureTrainingResult):
            return saving
        return tune_controller._schedule_trial_save(trial, result=result)

    def _release_safe(self, tune_controller: Any, trial: Trial, decision: str) -> str:
        """Start held members that can no longer be cloned over; `trial`'s own decision."""
        ranked = sum(1 for t in self._trial_state if not t.is_finished())
        for t in self._ahead.release_safe(ranked, self._quantile_fraction):
            if t is trial:
                decision = self.CONTINUE
            else:
                unwrap_controller(tune_controller)._schedule_trial_train(t)
        return decision

    def _hand_over_idle(self, tune_controller: Any) -> None:
        """A member waits to train this round and no worker is free (its own was lost with
        a node, say): one member idle past the round's end pauses and hands its worker over,
        as every member past the round's end would without run-ahead. One at a time."""
        if any(t.status == Trial.RUNNING for t in self._ahead.handed_over):
            return  # the last one's pause is under way
        trial = self._ahead.idle_one()
        if trial is not None:
            self._ahead.handed_over.add(trial)
            self._parking.park(tune_controller, trial)
            tune_controller.pause_trial(trial)

    def _after_barrier(self, tune_controller: Any) -> None:
        """Held members that kept their weights train on; stashed results are taken now."""
        held, stash = self._ahead.end_round()
        controller = unwrap_controller(tune_controller)
        for t in held:
            if t.status == Trial.RUNNING:  # not cloned over (those were paused)
                controller._schedule_trial_train(t)
        for t, res in stash.items():  # (a handed-over one is PAUSED, its save at that end)
            decision = self.on_trial_result(tune_controller, t, res)
            if decision == self.CONTINUE:
                controller._schedule_trial_train(t)
            elif decision == self.PAUSE:
                controller.pause_trial(t)
