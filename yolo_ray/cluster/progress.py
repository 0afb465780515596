"""A live one-line progress report for an evolution run (replaces Tune's verbose tables)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from ..evolve.store import EvolutionStore

LOGGER = logging.getLogger("yolo_ray")


def format_duration(seconds: float) -> str:
    """1:02:03 / 4:05 style, '?' when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_seconds(remaining: int, trial_times: list[float], slots: int) -> float:
    """Remaining rows × mean trial wall time ÷ concurrent slots (NaN before any trial ends)."""
    if remaining <= 0:
        return 0.0
    if not trial_times:
        return math.nan
    return remaining * (sum(trial_times) / len(trial_times)) / max(1, slots)


class ProgressCallback(Callback):
    """Logs `evolve: rows 3/8 | running 2 | failed 0 | best 0.0123 (row 1) | 1:02 | ETA 2:10`.

    A line when a trial ends, and at most every `interval` seconds otherwise.
    """

    def __init__(self, store: EvolutionStore, target_rows: int, slots: int,
                 interval: float = 30.0, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.target_rows, self.slots = store, int(target_rows), int(slots)
        self.interval, self.clock = interval, clock
        self.log = log or LOGGER.info
        self._t0: float | None = None
        self._last = -math.inf
        self._starts: dict[str, float] = {}
        self._times: list[float] = []
        self._failed = 0
        self._state: tuple | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_t0=None, _last=-math.inf, _starts={}, _times=[], _failed=0, _state=None)
        if state.get("log") is LOGGER.info:
            state["log"] = None  # bound methods of loggers pickle poorly; rebuilt on load
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("log") is None:
            state["log"] = LOGGER.info
        self.__dict__.update(state)

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self._t0 = self.clock()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._starts[trial.trial_id] = self.clock()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._failed += 1
        self._ended(trial)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.clock() - self._last >= self.interval:
            self.report(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.report(trials)

    def _ended(self, trial: Any) -> None:
        start = self._starts.pop(trial.trial_id, None)
        if start is not None:
            self._times.append(self.clock() - start)
        self.report(None)

    def report(self, trials: list | None) -> None:
        """Log the progress line now."""
        now = self.clock()
        self._last = now
        rows = self.store.rows()
        best = self.store.best_row()
        running = len(self._starts) if trials is None else sum(
            1 for t in trials if t.status == "RUNNING")
        elapsed = now - (self._t0 if self._t0 is not None else now)
        eta = eta_seconds(self.target_rows - len(rows), self._times, self.slots)
        best_text = f"{best.fitness:.5g} (row {best.index})" if best is not None else "-"
        state = (len(rows), running, self._failed, best_text)
        if trials is not None and state == self._state and not math.isnan(eta):
            return  # a heartbeat that would repeat the last line says nothing new
        self._state = state
        self.log(f"evolve: rows {len(rows)}/{self.target_rows} | running {running} | "
                 f"failed {self._failed} | best fitness {best_text} | "
                 f"elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}")
