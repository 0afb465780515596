"""Retire finished classic trials from Tune's controller once evolve.csv holds their outcome.

Tune (2.60) keeps every Trial it ever ran for the whole experiment: each step scans them
(`TuneController.is_finished`) and every experiment snapshot re-encodes each one's JSON state
(~22 KB, mostly Tune's per-metric statistics), so over a classic run of thousands of trials
the driver's memory and its CPU per snapshot grew with the trials held (docs/benchmarks.md,
"Classic strategy at scale"). A classic trial's outcome lives in evolve.csv and its sidecar,
which is all `--resume` and the GA read; Tune needs the Trial only for its end-of-run
ResultGrid. So, just before each snapshot, the controller drops the oldest finished trials
the store has recorded, keeping the newest `keep` of them (small runs keep all: the grid and
the summary's per-trial timings stay whole there), and holds O(slots + keep) trials.
"""

from __future__ import annotations

from typing import Any, Callable

from ray.tune.experiment import Trial

from . import driver_heap
from .controller_swap import swap_controller_method, unwrap_controller
from .request import KEEP_FINISHED

_RETIRING: dict[type, type] = {}  # controller class -> its subclass that retires trials
_ENDED = (Trial.TERMINATED, Trial.ERROR)


def recording_searcher(search_alg: Any) -> Any:
    """The searcher under Tune's wrappers (SearchGenerator, ConcurrencyLimiter) that can say
    which trials the store has recorded (`recorded_ids`); None if there is none."""
    seen = 0
    while search_alg is not None and seen < 5:
        if callable(getattr(search_alg, "recorded_ids", None)):
            return search_alg
        search_alg, seen = getattr(search_alg, "searcher", None), seen + 1
    return None


def retirable(ctl: Any, trial: Any) -> bool:
    """Ended, with no worker, no pending decision and no save or restore in flight."""
    return (trial.status in _ENDED and trial not in ctl._trial_to_actor
            and trial.trial_id not in ctl._cached_trial_decisions
            and trial.trial_id not in ctl._queued_trial_decisions
            and not trial.is_saving and not trial.is_restoring)


def retire_recorded(tune_controller: Any, keep: int) -> list[str]:
    """Drop from the controller the oldest ended trials the store has recorded, beyond the
    newest `keep` ended ones; returns their ids (none when no searcher records trials)."""
    ctl = unwrap_controller(tune_controller)
    searcher = recording_searcher(getattr(ctl, "_search_alg", None))
    ended = [t for t in ctl._trials if t.status in _ENDED]
    if searcher is None or len(ended) <= keep:
        return []
    candidates = [t for t in ended[:len(ended) - keep] if retirable(ctl, t)]
    recorded = searcher.recorded_ids([t.trial_id for t in candidates])
    gone = {t for t in candidates if t.trial_id in recorded}
    if not gone:
        return []
    ctl._trials[:] = [t for t in ctl._trials if t not in gone]  # in place: one list, shared
    for trial in gone:
        for held in (ctl._stopped_trials, ctl._failed_trials, ctl._live_trials,
                     ctl._trials_to_cache):
            held.discard(trial)
        ctl._trial_metadata.pop(trial.trial_id, None)
    return sorted(t.trial_id for t in gone)


def retire_before_snapshots(tune_controller: Any) -> None:
    """Make the controller retire recorded trials just before each experiment snapshot,
    keeping the newest `keep_finished` ended ones (read from its scheduler; default
    KEEP_FINISHED). Idempotent; composes with the other mends (controller_swap)."""
    swap_controller_method(tune_controller, _RETIRING, "save_to_dir", "Retiring",
                           _retiring_save)


def _retiring_save(cls: type) -> Callable[..., None]:
    """`cls.save_to_dir` that first retires the recorded trials beyond the kept ones, and
    then hands the heap they and the snapshot freed back to the OS."""
    def save_to_dir(self: Any) -> None:
        keep = getattr(self._scheduler_alg, "keep_finished", KEEP_FINISHED)
        retire_recorded(self, int(keep))
        cls.save_to_dir(self)
        driver_heap.release_free_heap()  # at Tune's snapshot period: >= 10 s apart
    return save_to_dir


class RetireRecordedTrials:
    """FIFO-family scheduler mixin: install `retire_before_snapshots` on the controller;
    `keep_finished` ended trials stay with Tune (for its ResultGrid)."""

    keep_finished: int = KEEP_FINISHED

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        retire_before_snapshots(tune_controller)
        super().on_trial_add(tune_controller, trial)  # type: ignore[misc]
