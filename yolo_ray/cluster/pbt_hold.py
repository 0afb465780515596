"""PBT members wait at a synchronous round barrier on their workers instead of pausing.

Ray's synchronous PBT pauses each member that reaches a round's end until the last one
does: its checkpoint is saved, its worker stopped (or, with actor_parking, cached), and at
the next round the member is reset on a worker and restores its checkpoint, even when the
ranking left its weights and hyps as they were (three members in four). On a cluster that
restore downloads the checkpoint from shared storage (83 MiB for yolov5s: fp32 model, EMA
and optimizer), per member per round.

Here a member that reports its round's end while no other member waits for a worker to
train that round is *held*: its checkpoint is saved (clones of it restore that one) and it
waits, idle, on its worker. At the barrier, held members that keep their weights train on
with no pause, reset or restore; those in the bottom quantile restore their parent's
checkpoint on the same worker. Decisions and rows are those of the pausing scheduler: a
member's training does not depend on whether it paused (checkpoints restore exactly).

If a member that has yet to train the round cannot get a worker (its own lost with a node,
say), one held member pauses and hands its worker over, as every member would without
holding. Holding does not shorten a round: each round still waits for its slowest member
(docs/benchmarks.md, "PBT: members held at the barrier").
"""

from __future__ import annotations

from typing import Any

from ray.train._internal.session import _FutureTrainingResult  # as Ray's own PBT does
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from .controller_swap import unwrap_controller
from .worker_starts import own_worker_starting


def save_in_flight(trial: Any) -> _FutureTrainingResult | None:
    """The save Tune has ordered for `trial` and not yet processed (None: none)."""
    saving = getattr(trial.temporary_state, "saving_to", None)
    return saving if isinstance(saving, _FutureTrainingResult) else None


def pause_without_save(tune_controller: Any, trial: Any) -> None:
    """Pause `trial`, idle since its round-end save, with no second save: Tune restores that
    one. A second save beside the one still in flight made Tune register one and drop the
    other (it handles ready results in random order), so its checkpoint index lagged the
    worker's: the member's next save overwrote a registered checkpoint folder, and Tune's
    num_to_keep clean-up later deleted that live folder and failed on the next one (128
    asynchronous members on 16 slots: 1-3 of 2,560 rows missing, the clones of an
    overwritten save one epoch ahead of their clocks)."""
    if save_in_flight(trial) is not None:  # pause once Tune has registered it
        unwrap_controller(tune_controller)._cached_trial_decisions[trial.trial_id] = \
            TrialScheduler.PAUSE
    else:
        tune_controller.pause_trial(trial, should_checkpoint=False)


def drop_cached_stop(tune_controller: Any, trial: Any) -> None:
    """Forget the STOP Tune queued for `trial`, paused while its save was in flight: Tune
    would apply it at the next save it processes, the member's own after its restart."""
    getattr(unwrap_controller(tune_controller), "_cached_trial_decisions",
            {}).pop(trial.trial_id, None)


class HeldMembers:
    """One round's members that went past its end without pausing, and their saves."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.saves: dict[Any, Any] = {}      # trial -> its round-end save (clones take it)
        self.held: dict[Any, None] = {}      # trials idle on their workers (insertion order)
        self.handed_over: set[Any] = set()   # held members paused for a waiting member
        self.last_went_on = False            # the round's last member trained on

    def hold(self, trial: Any, save: Any) -> None:
        """`trial` waits for the barrier on its worker; `save` holds its round-end weights."""
        self.saves[trial] = save
        self.held[trial] = None

    def restarted(self, trial: Any) -> None:
        """`trial` trains again: a hand-over of its worker is no longer under way. (With
        asynchronous rounds there is no barrier to clear this: a member handed over, restarted
        and RUNNING looked like a pause still under way and blocked every later hand-over.)"""
        self.handed_over.discard(trial)

    def waits(self, trial: Any) -> bool:
        """Whether `trial` went past this round's end without pausing: it is at the barrier."""
        return trial in self.saves

    def idle_one(self) -> Any | None:
        """A held member to pause so a member that has yet to train this round gets its
        worker (None if none); it stays at the barrier with its save."""
        trial = next(iter(self.held), None)
        if trial is not None:
            del self.held[trial]
            self.handed_over.add(trial)
        return trial

    def forget(self, trial: Any, drop_save: bool = False) -> None:
        """`trial` errored, ended or was cloned over: no longer held. Its save stays for
        clones unless `drop_save` (it ended)."""
        self.held.pop(trial, None)
        self.handed_over.discard(trial)
        if drop_save:
            self.saves.pop(trial, None)

    def end_round(self) -> list[Any]:
        """The barrier passed: the members still held; all else cleared."""
        held = list(self.held)
        self.last_went_on = False
        self.saves.clear()
        self.held.clear()
        self.handed_over.clear()
        return held

    def __getstate__(self) -> dict[str, Any]:
        # A pickled scheduler (Tuner state) carries the setting, not live trials or futures.
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(bool(state.get("enabled", True)))


class HoldAtBarrier:
    """The holding half of GAPopulationBasedTraining (a mixin over Ray's synchronous PBT:
    uses its `_trial_state` and `_next_perturbation_sync`, and the scheduler's `_held` and
    `_parking`)."""

    _held: HeldMembers
    _parking: Any
    _trial_state: dict
    _next_perturbation_sync: float

    def _slot_wanted(self, tune_controller: Any, trial: Trial) -> bool:
        """Whether members that have yet to train this round, and no worker of their own
        starting, outnumber the free workers kept for them: then `trial` pauses and hands
        its worker over (Ray's way)."""
        waiting = sum(1 for t in tune_controller.get_trials() if t is not trial and
                      t.status in (Trial.PENDING, Trial.PAUSED) and
                      self._trial_state[t].last_train_time < self._next_perturbation_sync
                      and not own_worker_starting(tune_controller, t))
        return waiting > self._parking.cached_workers()

    def _round_save(self, tune_controller: Any, trial: Trial, result: dict) -> Any:
        """The save of `trial`'s round-end state: the one in flight (Ray orders one for a
        top member at the barrier) or a new one."""
        return save_in_flight(trial) or tune_controller._schedule_trial_save(trial,
                                                                             result=result)

    def _past_round_end(self, tune_controller: Any, trial: Trial, result: dict, decision: str,
                        holds: bool, round_ended: bool) -> str:
        """`trial`'s decision at its round's end, given Ray's (PAUSE until the barrier)."""
        if not (holds and decision == self.PAUSE and  # type: ignore[attr-defined]
                trial.status == Trial.RUNNING):
            return decision
        save = self._round_save(tune_controller, trial, result)
        if round_ended:  # the round's last, not cloned over: it trains on
            self._held.last_went_on = True
            return self.CONTINUE  # type: ignore[attr-defined]  # Tune waits for the save
        self._held.hold(trial, save)
        return self.NOOP  # type: ignore[attr-defined]  # idle on its worker until the barrier

    def _hand_over_idle(self, tune_controller: Any) -> None:
        """A member waits to train this round and no worker is free: one held member pauses
        and hands its worker over. One at a time."""
        if any(t.status == Trial.RUNNING for t in self._held.handed_over):
            return  # the last one's pause is under way
        trial = self._held.idle_one()
        if trial is not None:
            self._parking.park(tune_controller, trial)
            pause_without_save(tune_controller, trial)

    def _after_barrier(self, tune_controller: Any) -> int:
        """Held members not cloned over (those were paused) train on; how many members went
        on with no restore (the round's last one included)."""
        last = int(self._held.last_went_on)
        going = [t for t in self._held.end_round() if t.status == Trial.RUNNING]
        controller = unwrap_controller(tune_controller)
        for t in going:
            controller._schedule_trial_train(t)
        return len(going) + last
