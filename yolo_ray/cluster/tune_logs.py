"""Tune's per-trial result.json and progress.csv, without the lines Tune drops when a trial
restarts, and Tune's progress printer, neither holding every ended Trial.

Tune's JSON logger copies a trial's result.json back from storage every time the trial
starts with a checkpoint. The driver writes that file in its staging folder and syncs it to
storage only now and then, so a member that pauses and restarts within one sync period (a
PBT clone, a hand-over of its worker, a barrier) had its newer lines overwritten by the older
stored copy: 8 members on 4 slots on a loaded box lost 13 of their 48 epochs from
result.json and from Tune's ResultGrid.metrics_dataframe (evolve.csv and our TensorBoard
were complete: the driver writes them itself). Within one driver session the staging copy
is the newest one, so here a trial's file is copied from storage only the first time this
driver starts the trial (a Tuner.restore on a new driver still gets its history back).
"""

from __future__ import annotations

from typing import Any

from ray.tune.experimental.output import get_air_verbosity
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.progress_reporter import TrialProgressCallback


class _RestoreOncePerSession:
    """Mixin over a Tune LoggerCallback: `_restore_from_remote` once per trial and file."""

    def __init__(self) -> None:
        super().__init__()
        self._restored: set[tuple[str, str]] = set()

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        key = (file_name, trial.trial_id)
        if key in self._restored:
            return  # the staging copy holds every line written since
        self._restored.add(key)
        super()._restore_from_remote(file_name, trial)  # type: ignore[misc]

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        super().log_trial_end(trial, failed)  # type: ignore[misc]
        # Tune's loggers keep these per Trial for good (both are set again at each start),
        # and with them every Trial the run ever had, which trial_retirement could not free
        # (2000 classic trials: 0.73 M vs 0.33 M objects left on the heap, benchmarks.md).
        for held in ("_trial_configs", "_trial_continue"):
            getattr(self, held, {}).pop(trial, None)

    def __getstate__(self) -> dict[str, Any]:
        # A pickled callback (Tune's experiment state) belongs to no driver session.
        state = dict(self.__dict__)
        state["_restored"] = set()
        return state


class SessionJsonLogger(_RestoreOncePerSession, JsonLoggerCallback):
    """Tune's result.json logger, keeping every line across a trial's restarts."""


class SessionCSVLogger(_RestoreOncePerSession, CSVLoggerCallback):
    """Tune's progress.csv logger, keeping every line across a trial's restarts."""


def trial_loggers() -> list[Any]:
    """The per-trial file loggers every run uses (Tune's TensorBoard copy is left out: ours
    is richer)."""
    return [SessionJsonLogger(), SessionCSVLogger()]


class EndedTrialProgress(TrialProgressCallback):
    """Tune's own progress printer (the one it adds when RAY_AIR_NEW_OUTPUT=0), letting go of
    a trial once it ends.

    Tune's keeps four dicts and a set keyed by Trial for the whole run, so every Trial the
    run ever had stayed alive, the ones trial_retirement dropped too: 759 Trials alive with
    ~900 ended at 140 s of a 1200-trial classic run, ~0.15 MB each (benchmarks.md).
    """

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_complete(iteration, trials, trial, **info)
        self._forget(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        super().on_trial_error(iteration, trials, trial, **info)
        self._forget(trial)  # a retried trial starts over: first result printed, as new

    def _forget(self, trial: Any) -> None:
        for held in (self._last_print, self._last_print_iteration, self._last_result_str,
                     self._last_result):
            held.pop(trial, None)
        self._completed_trials.discard(trial)


def progress_printers(verbose: int) -> list[Any]:
    """The progress printer Tune would add itself for `verbose`, as one that forgets ended
    trials; none where Tune uses its new output engine (it keys by trial id, holding no
    Trial). Call where the run's environment is set: Tune reads RAY_AIR_NEW_OUTPUT."""
    return [EndedTrialProgress()] if get_air_verbosity(verbose) is None else []
