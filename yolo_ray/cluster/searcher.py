"""Tune Searcher over evolve.GeneticAlgorithm: YOLOv5's classic evolution, one row per trial."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from ..errors import StoreError
from ..evolve.ga import GeneticAlgorithm
from ..evolve.store import EvolutionStore
from .trainable import METRIC, MODE, result_values, suggestion_from_config, trial_config

LOGGER = logging.getLogger("yolo_ray")
GENERIC_FAILURE = "trial raised an error (see error.txt in its Tune trial folder)"


class EvolveSearcher(Searcher):
    """Suggest each trial's hyps from the evolution store; record each outcome there.

    The driver-side searcher is the store's only writer. `suggest` asks the GA with the
    store's current rows and a deterministic trial index (0, 1, 2 … in suggestion order);
    `on_trial_complete` appends the row (finished, or early-stopped when the last result
    lacks `final`) or, for a failed trial, a sidecar-only entry with its reason. It stops
    suggesting once evolve.csv holds `target_rows` rows, so failed trials are replaced and a
    run ends with exactly `target_rows` rows. Wrap it in `ConcurrencyLimiter` and run it with
    `num_samples=-1`; see `launch.build_search`.

    Args:
        ga: the genetic algorithm (space, base hyp, seed, parent method).
        store_dir: folder of evolve.csv / evolve_trials.jsonl / hyp_evolve.yaml.
        target_rows: rows evolve.csv must hold at the end (rows already there + generations).
        max_failed: stop suggesting after this many failed trials (guards a broken setup).
        clock: wall-clock source for the sidecar's start/end (injectable for tests).
        start_index: first trial index; default the number of trials the store already
            holds, so a continued run never reuses an earlier trial's random stream.
    """

    def __init__(self, ga: GeneticAlgorithm, store_dir: str | Path, target_rows: int,
                 max_failed: int | None = None, clock: Callable[[], float] = time.time,
                 start_index: int | None = None) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.ga = ga
        self.store = EvolutionStore(store_dir, ga.hyp_keys)
        self.target_rows = int(target_rows)
        self.max_failed = max(3, self.target_rows) if max_failed is None else int(max_failed)
        self.clock = clock
        # The GA's trial index of the next suggestion.
        self.next_index = len(self.store.entries()) if start_index is None else int(start_index)
        self.live: dict[str, dict[str, Any]] = {}    # trial_id -> its config
        self.failed = 0
        # Failures wait here for their reason from `FailureReasonCallback` (Tune tells the
        # searcher before the callbacks, and only the callbacks see the trial's error).
        self.defer_failures = False
        self.pending_failures: dict[str, dict[str, Any]] = {}
        # A write that failed (disk full, folder unwritable): raised from the next `suggest`,
        # which Tune does not catch, so the run stops instead of retrying the trial forever.
        self.store_error: StoreError | None = None

    # ------------------------------------------------------------------ Tune interface
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """A config for a new trial, None to ask again later, or Searcher.FINISHED."""
        if self.store_error is not None:
            raise self.store_error
        if trial_id in self.live:
            return self.live[trial_id]
        rows = self.store.rows()
        if len(rows) >= self.target_rows:
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own sentinel
        if self.failed >= self.max_failed:
            LOGGER.error(f"evolve: {self.failed} trials failed; not starting more "
                         f"(see {self.store.sidecar_path})")
            return Searcher.FINISHED  # type: ignore[return-value]
        if len(rows) + len(self._in_flight()) >= self.target_rows:
            return None  # enough trials running to fill the store: wait for them
        suggestion = self.ga.ask(self.next_index, rows)
        self.next_index += 1
        config = trial_config(suggestion, self.clock())
        self.live[trial_id] = config
        return config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Record the trial in the store (idempotent by trial id)."""
        config = self.live.pop(trial_id, None)
        if config is None:
            return
        values = None if error or result is None else result_values(result)
        if values is None:
            if error and self.defer_failures:
                self.pending_failures[trial_id] = config
                return
            reason = GENERIC_FAILURE if error else "trial ended without reporting metrics"
            self._record_failure(trial_id, config, reason)
            return
        assert result is not None
        status = "finished" if result.get("final") else "early-stopped"
        try:
            self.ga.tell(self.store, suggestion_from_config(config), trial_id, status, values,
                         node=result.get("node"), device=result.get("device"),
                         start=float(config["suggested_at"]), end=self.clock())
        except StoreError as e:  # Tune would treat it as the trial's failure and retry it
            self._stop_on(e)

    def record_failure(self, trial_id: str, reason: str) -> None:
        """Write a deferred failure with its reason (called by FailureReasonCallback)."""
        config = self.pending_failures.pop(trial_id, None)
        if config is not None:
            self._record_failure(trial_id, config, reason)

    def flush_failures(self) -> None:
        """Write deferred failures whose reason never came, with a generic reason."""
        for trial_id in list(self.pending_failures):
            self.record_failure(trial_id, GENERIC_FAILURE)

    def recorded_ids(self, trial_ids: list[str]) -> set[str]:
        """Those of `trial_ids` whose outcome the store holds (a row or a failure entry) and
        that nothing here still waits on: Tune may forget them (trial_retirement)."""
        if self.store_error is not None:
            return set()  # rows may be missing: Tune's results are reconciled at the end
        released = [t for t in trial_ids if t not in self.live and t not in self.pending_failures]
        return set(self.store.trial_rows(released)) if released else set()

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        """What Tune must checkpoint; the rows themselves live in the store."""
        return {"next_index": self.next_index, "live": dict(self.live), "failed": self.failed,
                "target_rows": self.target_rows, "pending": dict(self.pending_failures)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Inverse of `get_state` (Tune.restore)."""
        self.next_index = int(state["next_index"])
        self.live = dict(state["live"])
        self.failed = int(state["failed"])
        self.target_rows = int(state["target_rows"])
        self.pending_failures = dict(state.get("pending", {}))
        self.flush_failures()  # their trials' errors are gone with the old driver

    def save(self, checkpoint_path: str) -> None:
        """Write the state as JSON (Tune names the file searcher-state-*.pkl; no pickle is
        used, so restoring a run folder cannot execute code from it)."""
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Load a state written by `save`."""
        with open(checkpoint_path, encoding="utf-8") as f:
            self.set_state(json.load(f))

    # ------------------------------------------------------------------ helpers
    def _in_flight(self) -> list[str]:
        """Live trials without a row yet (a restored, already-recorded trial may re-run)."""
        rows = self.store.trial_rows(self.live)  # O(live): entries() per suggest was O(rows)
        return [t for t in self.live if rows.get(t) is None]

    def _record_failure(self, trial_id: str, config: dict[str, Any], reason: str) -> None:
        self.failed += 1
        LOGGER.warning(f"evolve: trial {trial_id} failed: {reason}")
        try:
            self.ga.tell(self.store, suggestion_from_config(config), trial_id, "failed",
                         start=float(config["suggested_at"]), end=self.clock(), reason=reason)
        except StoreError as e:
            self._stop_on(e)

    def _stop_on(self, error: StoreError) -> None:
        LOGGER.error(f"evolve: {error}; stopping (everything written before is intact)")
        self.store_error = self.store_error or error
