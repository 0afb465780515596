"""Leave a trial whose own new worker is starting to that worker, instead of a reused one.

Tune (2.60) requests a worker for each trial waiting to run, up to its pending limit. When a
finished trial's worker is cached and handed to a waiting trial whose own worker Ray has
already placed (its process starting up), Tune kills that process; the slot it frees goes to
the next waiting trial's request, whose process meets the same end. On a busy box, where a
worker takes seconds to start, that chain ran through every waiting trial: with 96 PBT
members on 16 slots, up to 61 processes started for 16 slots (docs/benchmarks.md, churn).
The schedulers here pick trials whose request is still waiting for a slot, and the
controller is made to keep a cached worker from a trial whose own one is starting (Tune also
hands cached workers to waiting trials on its own, after the scheduler's pick).
"""

from __future__ import annotations

from typing import Any, Callable

from ray.tune.experiment import Trial

from .controller_swap import swap_controller_method, unwrap_controller

_LEAVING: dict[type, type] = {}  # controller class -> its subclass that leaves starting trials


def own_worker_starting(tune_controller: Any, trial: Any) -> bool:
    """Whether Ray has placed `trial`'s own new worker and it has not started yet.

    `tune_controller` is the TuneController or the wrapper Tune gives schedulers; a Tune
    without the parts read here answers False (the old behaviour)."""
    ctl = unwrap_controller(tune_controller)
    tracked = getattr(ctl, "_trial_to_actor", {}).get(trial)
    live = getattr(getattr(ctl, "_actor_manager", None),
                   "_live_actors_to_ray_actors_resources", None)
    started = getattr(ctl, "_started_actors", None)
    if tracked is None or live is None or started is None:
        return False
    return tracked in live and tracked not in started


def leave_starting_workers(tune_controller: Any) -> None:
    """Make the controller give a cached worker only to trials whose own is not starting.

    Its class is swapped for one whose `_maybe_reuse_cached_actor` (every hand-out of a
    cached worker goes through it) declines such a trial; the instance dict is left alone,
    as Tune snapshots it. Idempotent, and composes with the other mends (controller_swap)."""
    swap_controller_method(tune_controller, _LEAVING, "_maybe_reuse_cached_actor",
                           "Leaving", _declining_starting)


def _declining_starting(cls: type) -> Callable[..., bool]:
    """`cls._maybe_reuse_cached_actor` that declines a trial whose own worker is starting."""
    def _maybe_reuse_cached_actor(self: Any, trial: Any) -> bool:
        if own_worker_starting(self, trial):
            return False  # it starts on its own worker; the cached one waits for another
        return cls._maybe_reuse_cached_actor(self, trial)
    return _maybe_reuse_cached_actor


class LeaveStartingTrials:
    """FIFO-family scheduler mixin: run the first PENDING, then PAUSED, trial whose own
    worker is not starting (FIFO takes the first either way, and Tune then gave it a cached
    worker if one was free), and install `leave_starting_workers` on the controller."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        leave_starting_workers(tune_controller)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        for status in (Trial.PENDING, Trial.PAUSED):
            for trial in trials:
                if trial.status == status and not own_worker_starting(tune_controller, trial):
                    return trial
        return None
