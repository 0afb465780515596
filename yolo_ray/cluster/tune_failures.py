"""Tune 2.60 reports a worker that died during a task twice; make its controller count it once.

Used by both strategies' schedulers (classic trials and PBT members reuse workers: a reset
runs on a kept or cached worker while the trial waits to start).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

from .controller_swap import swap_controller_method

LOGGER = logging.getLogger("yolo_ray")
_ONCE: dict[type, type] = {}  # controller class -> its subclass handling each failure once
_LAST_FAILURE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # trial -> exception


def count_each_failure_once(tune_controller: Any) -> None:
    """Make the controller handle a worker's death once, not twice.

    Ray reports a task that failed because its actor died twice, with the same exception: as
    the actor's failure, then as the task's. A trial taking over a kept or cached worker is
    PENDING while its reset runs; the first report retries it (PENDING again), and Tune took
    the second for a failure of a trial that had not started, which it ends for good whatever
    --max-failures says: every worker that died during a reset cost its trial. The
    controller's class is swapped for one whose `_trial_task_failure` (both reports go
    through it) skips a repeat; its instance dict is left alone, as Tune snapshots it.
    Idempotent, and composes with the other mends (controller_swap)."""
    swap_controller_method(tune_controller, _ONCE, "_trial_task_failure", "OnceFailing",
                           _handled_once)


def _handled_once(cls: type) -> Callable[..., None]:
    """`cls._trial_task_failure` that skips a repeat of the trial's last exception."""
    def _trial_task_failure(self: Any, trial: Any, exception: Exception) -> None:
        if _LAST_FAILURE.get(trial) is exception:
            LOGGER.debug(f"{trial}: the same failure reported again; handled once")
            return
        _LAST_FAILURE[trial] = exception
        # A failed reset is over: Tune forgets to say so, and a retried trial still marked
        # as resetting waits forever for a worker (it was ended before, so no one noticed).
        getattr(self, "_resetting_trials", set()).discard(trial)
        cls._trial_task_failure(self, trial, exception)
    return _trial_task_failure


class CountFailuresOnce:
    """Scheduler mixin: installs `count_each_failure_once` on the controller that adds trials."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        count_each_failure_once(tune_controller)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]
