"""Tune's per-trial result.json across a trial's restarts (tune_logs.py)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

import pyarrow.fs
from ray.tune.logger import JsonLoggerCallback

from yolo_ray.cluster.tune_logs import SessionCSVLogger, SessionJsonLogger, trial_loggers


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
