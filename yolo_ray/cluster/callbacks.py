"""Driver-side Tune callbacks: TensorBoard (trials, population, HParams) and failure reasons."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..evolve.store import EvolutionStore
from ..train.results import RESULT_KEYS
from .searcher import EvolveSearcher
from .trainable import LR_KEYS, METRIC, TIME_ATTR, TRAIN_LOSS_KEYS

TRIAL_TAGS = TRAIN_LOSS_KEYS + RESULT_KEYS + LR_KEYS + ("metrics/fitness",)
HPARAM_METRICS = {"hparams/fitness": METRIC, "hparams/mAP_0.5": "metrics/mAP_0.5",
                  "hparams/mAP_0.5:0.95": "metrics/mAP_0.5:0.95",
                  "hparams/precision": "metrics/precision", "hparams/recall": "metrics/recall"}
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")


def trial_label(trial: Any) -> str:
    """Short, stable per-trial name: GA trial index plus Tune's trial id."""
    index = trial.config.get("trial_index", 0) if isinstance(trial.config, dict) else 0
    return f"{int(index):04d}_{trial.trial_id}"


def failure_reason(error_text: str | None, limit: int = 300) -> str:
    """The exception line of a Tune error.txt (its last 'XxxError: …' line), shortened."""
    if not error_text:
        return "trial raised an error (no error text recorded)"
    lines = [ln.strip() for ln in error_text.splitlines() if ln.strip()]
    found = [ln for ln in lines if _ERROR_LINE.match(ln)]
    text = (found or lines or ["unknown error"])[-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


class FailureReasonCallback(Callback):
    """Hands each failed trial's exception line to the searcher, which records it."""

    def __init__(self, searcher: EvolveSearcher) -> None:
        self.searcher = searcher

    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        self.searcher.defer_failures = True

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        text = None
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        self.searcher.record_failure(trial.trial_id, failure_reason(text))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.searcher.flush_failures()


class CheckpointCleanupCallback(Callback):
    """Deletes a finished trial's per-epoch checkpoints from storage (its row has the result).

    Classic trials checkpoint every epoch only so that a retry resumes; once a trial ends,
    its last checkpoint (about 3x the model in fp32) would otherwise stay in --storage for
    each of the G trials. Errored trials keep theirs for `--resume`. Best effort.
    """

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        import pyarrow.fs as pafs

        try:
            fs, base = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            for entry in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
                if entry.type == pafs.FileType.Directory and entry.base_name.startswith(
                        "checkpoint_"):
                    fs.delete_dir(entry.path)
        except (OSError, AttributeError, ValueError):
            pass  # storage we cannot list: the checkpoints stay, nothing else changes


class TensorBoardCallback(Callback):
    """TensorBoard under the run folder, written by the driver from Tune's results.

    - `trials/<index>_<trial id>/`: per-epoch train losses, P/R/mAP, val losses, lrs and
      fitness, plus an HParams entry (genes + final metrics) when the trial ends;
    - `population/`: per evolve.csv row its fitness, the best fitness so far and every gene.
    """

    def __init__(self, log_dir: str | Path, store: EvolutionStore) -> None:
        self.log_dir = Path(log_dir)
        self.store = store
        self._writers: dict[str, Any] = {}
        self._population: Any = None
        self._rows_logged = 0
        self._best = -math.inf

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the Tuner; open event files do not travel.
        state = self.__dict__.copy()
        state.update(_writers={}, _population=None, _rows_logged=0, _best=-math.inf)
        return state

    # ------------------------------------------------------------------ writers
    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[name] = SummaryWriter(str(self.log_dir / "trials" / name))
        return self._writers[name]

    def _population_writer(self) -> Any:
        if self._population is None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step=0: a resumed run rewrites every row, hiding the earlier copies.
            self._population = SummaryWriter(str(self.log_dir / "population"), purge_step=0)
        return self._population

    # ------------------------------------------------------------------ Tune hooks
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        step = int(result.get(TIME_ATTR, result.get("training_iteration", 0)))
        w = self._writer(trial_label(trial))
        for tag in TRIAL_TAGS:
            key = METRIC if tag == "metrics/fitness" else tag
            value = result.get(key)
            if isinstance(value, (int, float)):
                w.add_scalar(tag, float(value), step)
        w.flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write_hparams(trial)
        self._close(trial_label(trial))
        self.log_population()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial_label(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.log_population()
        for name in list(self._writers):
            self._close(name)
        if self._population is not None:
            self._population.close()
            self._population = None

    # ------------------------------------------------------------------ content
    def _write_hparams(self, trial: Any) -> None:
        from torch.utils.tensorboard.summary import hparams

        result, config = trial.last_result or {}, trial.config or {}
        if METRIC not in result:
            return
        genes: dict[str, Any] = {k: float(v) for k, v in config.get("hyp", {}).items()}
        genes.update({k: float(v) for k, v in config.get("extras", {}).items()})
        genes["status"] = "finished" if result.get("final") else "early-stopped"
        metrics = {tag: float(result.get(key, math.nan)) for tag, key in HPARAM_METRICS.items()}
        w = self._writer(trial_label(trial))
        for summary in hparams(genes, metrics):
            w.file_writer.add_summary(summary)
        step = int(result.get(TIME_ATTR, 0))
        for tag, value in metrics.items():
            w.add_scalar(tag, value, step)

    def log_population(self) -> None:
        """Write population scalars for evolve.csv rows not logged yet."""
        rows = self.store.rows()
        if len(rows) <= self._rows_logged:
            return
        w = self._population_writer()
        for row in rows[self._rows_logged:]:
            i = row.index
            if row.eligible:
                self._best = max(self._best, row.fitness)
            w.add_scalar("population/fitness", row.fitness, i)
            if math.isfinite(self._best):
                w.add_scalar("population/best_fitness", self._best, i)
            for name, value in row.hyp.items():
                w.add_scalar(f"genes/{name}", float(value), i)
            for name in ("freeze", "prune"):
                if row.meta.get(name) is not None:
                    w.add_scalar(f"genes/{name}", float(row.meta[name]), i)
        self._rows_logged = len(rows)
        w.flush()

    def _close(self, name: str) -> None:
        w = self._writers.pop(name, None)
        if w is not None:
            w.close()
