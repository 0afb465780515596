"""pbt_state.json for GAPopulationBasedTraining: written as rounds end, re-applied on resume."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .pbt_state import PBTState, resume_round

LOGGER = logging.getLogger("yolo_ray")
STATE_SAVE_S = 2.0  # deferred pbt_state.json writes (members added or ended) at most this often


class ResumableRounds:
    """The resume half of GAPopulationBasedTraining (a mixin over Ray's PBT: uses its
    `_trial_state` and `_next_perturbation_sync`, and the scheduler's `_state`,
    `_state_path`, `_seed`, `_interval` and `_member`)."""

    _state: PBTState
    _state_path: Path | None
    _seed: int
    _interval: int
    _loaded: bool
    _unsaved: bool  # members added or ended since the state file was written
    _next_save: float  # deferred state writes: at most one per STATE_SAVE_S
    _trial_state: dict
    _next_perturbation_sync: float
    _synch: bool

    def _save_state(self) -> None:
        self._unsaved, self._next_save = False, time.monotonic() + STATE_SAVE_S
        if self._state_path is not None:
            self._state.refresh_round()
            self._state.save(self._state_path)

    def _load_state_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._state_path is None or not self._state_path.is_file():
            return
        state = PBTState.load(self._state_path)
        if (state.seed, state.interval) != (self._seed, self._interval):
            raise ConfigError(f"{self._state_path}: saved with seed {state.seed} and interval "
                              f"{state.interval}, this scheduler has {self._seed} and "
                              f"{self._interval}")
        if state.synchronous != self._synch:
            mode = {True: "synchronous", False: "asynchronous"}
            raise ConfigError(f"{self._state_path}: saved by {mode[state.synchronous]} PBT, "
                              f"this scheduler is {mode[self._synch]}")
        self._state = state
        LOGGER.info(f"PBT state restored from {self._state_path}: round {state.round}")

    def _restart_member(self, trial: Any, genes: dict[str, float], checkpoint: Any,
                        epoch: int) -> None:
        """After Tuner.restore: `trial` restarts at `epoch` with the saved genes from the
        saved checkpoint (None: from scratch), unranked until it reports again."""
        trial.set_config({**trial.config, **genes})
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = checkpoint
        state = self._trial_state[trial]
        state.last_perturbation_time = state.last_train_time = epoch
        state.last_score = None

    def _apply_saved_round(self, tune_controller: Any) -> None:
        """After Tuner.restore: every unfinished member restarts the saved round's start.

        Ray restores each trial from its own last snapshot, which may predate the last
        exploit; the saved plan (genes + the source's checkpoint at the round's first epoch)
        is authoritative. Without all those checkpoints (killed right after a round ended)
        the previous round is replayed: its draws and stored fitness are the same, so it
        makes the same decisions, and its rows are not written twice.
        """
        trials = {self._member(t): t for t in tune_controller.get_trials()}
        live = {m: t for m, t in trials.items() if not t.is_finished()}
        round_index, plans, found = resume_round(self._state, self._interval, live, trials,
                                                 self._state_path)
        start = round_index * self._interval
        for member, trial in live.items():
            self._restart_member(trial, plans[member].config, found[member], start)
        if plans is self._state.previous:
            self._state.members = self._state.previous
        self._state.round = round_index
        self._next_perturbation_sync = start + self._interval
        LOGGER.info(f"PBT resumes at round {round_index} (epoch {start}) with "
                    f"{len(live)} unfinished members")
