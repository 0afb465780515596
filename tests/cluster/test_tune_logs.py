"""Tune's per-trial result.json across a trial's restarts, and the loggers and progress
printer letting go of ended trials (tune_logs.py)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

import pyarrow.fs
from ray.tune.logger import JsonLoggerCallback

from yolo_ray.cluster.tune_logs import (
    EndedTrialProgress, SessionCSVLogger, SessionJsonLogger, progress_printers, trial_loggers,
)


class LoggedTrial:
    """What Tune's file loggers read of a Trial: a staging folder the driver writes and the
    storage folder it syncs to now and then."""

    def __init__(self, root: Path) -> None:
        self.trial_id, self.config = "t0", {"trial_index": 0}
        self.local_path = str(root / "staging")
        self.storage = SimpleNamespace(trial_fs_path=str(root / "storage"),
                                       storage_filesystem=pyarrow.fs.LocalFileSystem())
        self.checkpoint = "a checkpoint"  # restarts restore one: the loggers copy back
        Path(self.storage.trial_fs_path).mkdir(parents=True)
        self.init_local_path()

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)

    def sync(self) -> None:
        """The driver's periodic upload of the staging folder."""
        for name in ("result.json", "progress.csv"):
            source = Path(self.local_path, name)
            if source.exists():
                Path(self.storage.trial_fs_path, name).write_bytes(source.read_bytes())


def epochs_logged(logger, trial: LoggedTrial) -> list[int]:
    logger.log_trial_start(trial)          # first start of this driver session
    for epoch in (1, 2):
        logger.log_trial_result(epoch, trial, {"epoch": epoch})
    trial.sync()                            # storage holds epochs 1-2
    logger.log_trial_result(3, trial, {"epoch": 3})
    logger.log_trial_start(trial)          # paused and restarted before the next sync
    logger.log_trial_result(4, trial, {"epoch": 4})
    logger.log_trial_end(trial)
    trial.sync()
    text = Path(trial.storage.trial_fs_path, "result.json").read_text()
    return [json.loads(line)["epoch"] for line in text.splitlines()]


def test_a_restarted_trial_keeps_the_lines_written_since_the_last_sync(tmp_path):
    assert epochs_logged(SessionJsonLogger(), LoggedTrial(tmp_path / "ours")) == [1, 2, 3, 4]
    # Tune's own logger copies the stored file over the newer staging one at the restart
    assert epochs_logged(JsonLoggerCallback(), LoggedTrial(tmp_path / "tune")) == [1, 2, 4]


def test_a_new_driver_session_gets_the_stored_history_back(tmp_path):
    trial = LoggedTrial(tmp_path)
    Path(trial.storage.trial_fs_path, "result.json").write_text('{"epoch": 1}\n')
    logger = pickle.loads(pickle.dumps(SessionJsonLogger()))  # Tuner.restore's copy
    logger.log_trial_start(trial)
    logger.log_trial_result(2, trial, {"epoch": 2})
    logger.log_trial_end(trial)
    lines = Path(trial.local_path, "result.json").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_runs_log_with_the_session_loggers():
    assert [type(cb) for cb in trial_loggers()] == [SessionJsonLogger, SessionCSVLogger]


@pytest.mark.parametrize("logger", [SessionJsonLogger, SessionCSVLogger])
def test_an_ended_trial_is_not_held_by_the_loggers(tmp_path, logger):
    import gc
    import weakref

    trial, log = LoggedTrial(tmp_path), logger()
    log.log_trial_start(trial)
    log.log_trial_result(1, trial, {"epoch": 1})
    log.log_trial_end(trial)
    alive = weakref.ref(trial)
    del trial
    gc.collect()
    assert alive() is None  # Tune's own loggers keep a config / header flag per Trial


def test_a_trial_restarted_after_its_end_logs_on_without_a_second_header(tmp_path):
    trial, log = LoggedTrial(tmp_path), SessionCSVLogger()
    for epoch in (1, 2):  # ended (an error), then retried: the flags are set again
        log.log_trial_result(epoch, trial, {"epoch": epoch})
        log.log_trial_end(trial, failed=epoch == 1)
    assert Path(trial.local_path, "progress.csv").read_text().splitlines() == [
        "epoch", "1", "2"]


class PrintedTrial:
    """What Tune's progress printer reads of a Trial."""

    def __init__(self, name: str) -> None:
        self.name, self.last_result, self.config, self.local_path = name, {}, {}, "staging"

    def __str__(self) -> str:
        return self.name


@pytest.mark.parametrize("end", ["complete", "error"])
def test_an_ended_trial_is_not_held_by_the_progress_printer(end):
    import gc
    import weakref

    printer, trial = EndedTrialProgress(), PrintedTrial("t0")
    for epoch in (1, 2):
        trial.last_result = {"training_iteration": epoch, "fitness": 0.5, "done": epoch == 2}
        printer.on_trial_result(epoch, [trial], trial, trial.last_result)
    getattr(printer, f"on_trial_{end}")(2, [trial], trial)
    alive = weakref.ref(trial)
    del trial
    gc.collect()
    assert alive() is None  # Tune's own keeps four dicts and a set per Trial for good


def test_the_progress_printer_prints_a_trial_s_end_once(capsys):
    from ray.tune.utils import log as tune_log

    before = tune_log.verbosity
    tune_log.set_verbosity(tune_log.Verbosity.V2_TRIAL_NORM)  # one line per result
    try:
        printer, trial = EndedTrialProgress(), PrintedTrial("t0")
        trial.last_result = {"training_iteration": 3, "fitness": 0.5, "done": True}
        printer.on_trial_result(3, [trial], trial, trial.last_result)
        printer.on_trial_complete(3, [trial], trial)
    finally:
        tune_log.set_verbosity(before)
    lines = [line for line in capsys.readouterr().out.splitlines() if "t0" in line]
    assert len(lines) == 1 and "completed" in lines[0]


def test_runs_use_the_progress_printer_tune_would_add(monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")   # our runs below --verbose 2
    assert [type(cb) for cb in progress_printers(0)] == [EndedTrialProgress]
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")   # Tune's new engine: its own reporter
    assert progress_printers(1) == []
