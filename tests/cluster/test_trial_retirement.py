"""Tune forgets finished classic trials once the store holds them, and only those."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.experiment import Trial

from yolo_ray.cluster import trial_retirement
from yolo_ray.cluster.trial_retirement import (RetireRecordedTrials, retire_before_snapshots,
                                               retire_recorded)
from yolo_ray.cluster.tuner import _ASHA, _FIFO
from yolo_ray.evolve.store import EvolutionStore

from bench.scale import tune_snapshot

from .test_tuner_trainable import results

ROOT = Path(__file__).resolve().parents[2]


class FakeTrial:
    def __init__(self, trial_id: str, status: str) -> None:
        self.trial_id, self.status = trial_id, status
        self.is_saving = self.is_restoring = False


class Recorder:
    """The searcher part read: which of the given trial ids the store holds."""

    def __init__(self, recorded: set[str]) -> None:
        self.recorded, self.asked = recorded, []

    def recorded_ids(self, ids: list[str]) -> set[str]:
        self.asked.append(list(ids))
        return self.recorded & set(ids)


class Controller:
    """The TuneController parts retirement reads and edits, its searcher behind Tune's
    two wrappers (SearchGenerator -> ConcurrencyLimiter -> ours)."""

    def __init__(self, trials: list[FakeTrial], searcher: Any) -> None:
        self._trials = list(trials)
        self._search_alg = type("Gen", (), {"searcher": type("Lim", (), {})()})()
        self._search_alg.searcher.searcher = searcher
        self._trial_to_actor: dict[Any, str] = {}
        self._cached_trial_decisions: dict[str, str] = {}
        self._queued_trial_decisions: dict[str, str] = {}
        by = lambda s: {t for t in trials if t.status == s}  # noqa: E731
        self._stopped_trials, self._failed_trials = by(Trial.TERMINATED), by(Trial.ERROR)
        self._live_trials = {t for t in trials if t.status not in (Trial.TERMINATED,
                                                                   Trial.ERROR)}
        self._trials_to_cache = set(trials)
        self._trial_metadata = {t.trial_id: "{}" for t in trials}
        self._scheduler_alg = _FIFO()
        self.saved: list[list[str]] = []

    def save_to_dir(self) -> None:
        self.saved.append([t.trial_id for t in self._trials])


def population() -> list[FakeTrial]:
    T, E, R = Trial.TERMINATED, Trial.ERROR, Trial.RUNNING
    return [FakeTrial(i, s) for i, s in [("a", T), ("b", E), ("c", T), ("d", T), ("e", T),
                                         ("f", T), ("g", R), ("h", T)]]


def test_only_old_ended_recorded_and_idle_trials_retire():
    trials = population()
    by_id = {t.trial_id: t for t in trials}
    searcher = Recorder({"a", "b", "d", "e", "f", "h"})  # c: its row not written yet
    ctl = Controller(trials, searcher)
    ctl._trial_to_actor[by_id["e"]] = "actor"          # worker not yet cached or stopped
    ctl._cached_trial_decisions["f"] = "STOP"           # a stop waits on a save
    gone = retire_recorded(ctl, keep=1)                # h is the newest ended: kept
    assert gone == ["a", "b", "d"]
    assert searcher.asked == [["a", "b", "c", "d"]]    # e, f busy: not even asked about
    assert [t.trial_id for t in ctl._trials] == ["c", "e", "f", "g", "h"]
    assert {t.trial_id for t in ctl._stopped_trials} == {"c", "e", "f", "h"}
    assert ctl._failed_trials == set()
    assert set(ctl._trial_metadata) == {"c", "e", "f", "g", "h"}
    assert {t.trial_id for t in ctl._trials_to_cache} == {"c", "e", "f", "g", "h"}
    assert retire_recorded(ctl, keep=1) == []           # nothing more can go


def test_nothing_retires_within_keep_or_without_a_recording_searcher():
    ctl = Controller(population(), Recorder({"a", "b", "c", "d", "e", "f", "h"}))
    assert retire_recorded(ctl, keep=7) == []           # 7 ended trials: all kept
    ctl._search_alg.searcher.searcher = object()        # another searcher: Tune keeps all
    assert retire_recorded(ctl, keep=0) == []
    assert len(ctl._trials) == 8


def test_the_controller_retires_just_before_each_snapshot():
    ctl = Controller(population(), Recorder({"a", "b", "c", "d", "e", "f", "h"}))
    ctl._scheduler_alg.keep_finished = 2
    for _ in range(2):  # installed once
        retire_before_snapshots(type("Wrapper", (), {"_tune_controller": ctl})())
    ctl.save_to_dir()
    assert ctl.saved == [["f", "g", "h"]]
    assert sum(c in trial_retirement._RETIRING.values() for c in type(ctl).__mro__) == 1
    assert isinstance(_FIFO(), RetireRecordedTrials) and issubclass(_ASHA,
                                                                    RetireRecordedTrials)


def test_the_searcher_releases_only_recorded_trials_it_no_longer_waits_on(tmp_path):
    from yolo_ray.cluster.searcher import EvolveSearcher
    from yolo_ray.config.load import load_hyp
    from yolo_ray.evolve.ga import GeneticAlgorithm
    from yolo_ray.evolve.space import load_search_space

    ga = GeneticAlgorithm(load_search_space(), load_hyp(), seed=0)
    s = EvolveSearcher(ga, tmp_path, target_rows=5, clock=lambda: 1.0)
    for trial_id in ("t0", "t1", "t2", "t3"):
        assert s.suggest(trial_id) is not None
    s.on_trial_complete("t0", results(0.3) | {"final": True})
    s.on_trial_complete("t1", error=True)               # recorded as failed
    s.defer_failures = True
    s.on_trial_complete("t2", error=True)               # waits for its reason
    assert s.recorded_ids(["t0", "t1", "t2", "t3", "unknown"]) == {"t0", "t1"}
    s.record_failure("t2", "boom")
    assert s.recorded_ids(["t2", "t3"]) == {"t2"}
    s.store_error = OSError("disk full")                 # type: ignore[assignment]
    assert s.recorded_ids(["t0"]) == set()
    s.store.close()


# ----------------------------------------------------------------------------- real Ray
def retire_run(root: Path, rows: int, keep: int, *args: str, **popen: Any) -> Any:
    cmd = [sys.executable, "-m", "tests.cluster.retire_run", str(root), str(rows), str(keep),
           *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def finish(proc: Any, timeout: float = 240) -> dict[str, int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def recorded(run: Path) -> tuple[list[str], list[float]]:
    with EvolutionStore(run) as store:
        ids = [e["trial_id"] for e in store.entries() if e["row"] is not None]
        return ids, [r.fitness - round(r.hyp["lr0"], 4) for r in store.rows()]


@pytest.mark.ray
def test_a_run_keeps_its_rows_while_tune_forgets_recorded_trials(tmp_path):
    out = finish(retire_run(tmp_path, 10, 2))
    # Alive in the driver at most: the 2 kept, 2 running and 2 ended since the last snapshot
    # (all 10 when Tune's progress printer held every Trial: 4 measured with ours).
    assert out.pop("held") <= 2 + 2 + 2
    assert out == {"rows": 10, "grid": 2, "snapshot": 2}   # Tune holds the 2 kept trials
    ids, errors = recorded(tmp_path / "classic")
    assert len(ids) == len(set(ids)) == 10
    assert max(map(abs, errors)) < 1e-6                    # each row its own trial's result


@pytest.mark.ray
def test_a_driver_killed_after_retiring_trials_resumes_to_exact_rows(tmp_path):
    run = tmp_path / "classic"
    first = retire_run(tmp_path, 12, 1)
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None:
        snaps = list((run / "ray").glob("experiment_state*.json"))
        if snaps and (run / "evolve.csv").exists() and \
                (run / "evolve.csv").read_text().count("\n") >= 6:  # header + 5 rows
            break
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)                  # the driver and its Ray
    first.communicate()
    before, _ = recorded(run)
    assert 5 <= len(before) < 12
    # Without retirement it would hold every recorded trial and the running ones.
    assert tune_snapshot(run / "ray")["snapshot_trials"] < len(before)
    out = finish(retire_run(tmp_path, 12, 1, "--resume"))
    assert out["rows"] == 12 and out["snapshot"] == 1
    ids, errors = recorded(run)
    assert ids[:len(before)] == before and len(ids) == len(set(ids)) == 12
    assert max(map(abs, errors)) < 1e-6
