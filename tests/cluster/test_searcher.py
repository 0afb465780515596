"""EvolveSearcher and the driver callbacks with fake trials and results (no Ray cluster started)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from ray.tune.search import ConcurrencyLimiter, Searcher

from yolo_ray.cluster.callbacks import (
    FailureReasonCallback,
    TensorBoardCallback,
    failure_reason,
)
from yolo_ray.cluster.progress import ProgressCallback, eta_seconds, format_duration
from yolo_ray.cluster.searcher import EvolveSearcher
from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.ga import GeneticAlgorithm
from yolo_ray.evolve.space import load_search_space, with_freeze_gene
from yolo_ray.train.results import RESULT_KEYS


class Clock:
    """A fake wall clock: +1 s per call."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def make_ga(seed: int = 0, freeze: bool = False) -> GeneticAlgorithm:
    space = load_search_space().without("anchors")
    extras = {}
    if freeze:
        space, extras = with_freeze_gene(space, 0, 10), {"freeze": 5.0}
    return GeneticAlgorithm(space, load_hyp(), seed=seed, base_extras=extras)


def make_searcher(tmp_path: Path, target: int = 3, **kw) -> EvolveSearcher:
    return EvolveSearcher(make_ga(**kw), tmp_path / "run", target, clock=Clock())


def result(map50: float, final: bool = True) -> dict:
    values = [0.5, 0.4, map50, map50 / 2, 0.05, 0.03, 0.01]
    return dict(zip(RESULT_KEYS, values)) | {"fitness": 0.1 * map50 + 0.45 * map50,
                                             "final": final, "node": "10.0.0.1",
                                             "device": "cpu", "epoch": 2}


def sidecar(tmp_path: Path) -> list[dict]:
    text = (tmp_path / "run" / "evolve_trials.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_first_suggestion_is_the_base_hyp_then_mutations(tmp_path: Path) -> None:
    s = make_searcher(tmp_path)
    first, second = s.suggest("a"), s.suggest("b")
    assert first["trial_index"] == 0 and second["trial_index"] == 1
    assert first["hyp"] == dict(load_hyp().as_dict())
    assert second["hyp"] != first["hyp"]
    assert "anchors" not in first["hyp"]


def test_waits_when_in_flight_trials_fill_the_target_then_finishes(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=2)
    s.suggest("a"), s.suggest("b")
    assert s.suggest("c") is None
    s.on_trial_complete("a", result(0.3))
    s.on_trial_complete("b", result(0.2))
    assert s.suggest("c") == Searcher.FINISHED
    assert len(s.store.rows()) == 2


def test_rows_statuses_and_parents(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=4)
    s.suggest("a"), s.suggest("b")
    s.on_trial_complete("a", result(0.3))
    s.on_trial_complete("b", result(0.9, final=False))   # ASHA stopped it: no `final`
    third = s.suggest("c")
    entries = sidecar(tmp_path)
    assert [e["status"] for e in entries] == ["finished", "early-stopped"]
    assert entries[0]["node"] == "10.0.0.1" and entries[0]["device"] == "cpu"
    assert entries[0]["start"] < entries[0]["end"]
    # The early-stopped row is fitter but never a parent.
    assert third["parent_rows"] == [0]


def test_failed_trial_is_replaced_and_recorded_with_its_reason(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=1)
    s.suggest("a")
    assert s.suggest("b") is None
    s.defer_failures = True
    s.on_trial_complete("a", error=True)
    s.record_failure("a", "NonFiniteLossError: non-finite training loss nan")
    assert s.suggest("b")["trial_index"] == 1
    s.on_trial_complete("b", result(0.5))
    assert s.suggest("c") == Searcher.FINISHED
    entries = sidecar(tmp_path)
    assert entries[0]["status"] == "failed" and entries[0]["row"] is None
    assert entries[0]["reason"].startswith("NonFiniteLossError")
    assert len(s.store.rows()) == 1


def test_failure_without_callback_gets_a_generic_reason(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=1)
    s.suggest("a")
    s.on_trial_complete("a", error=True)
    assert "error" in sidecar(tmp_path)[0]["reason"]


def test_too_many_failures_stop_the_search(tmp_path: Path) -> None:
    s = EvolveSearcher(make_ga(), tmp_path / "run", 5, max_failed=2, clock=Clock())
    for t in ("a", "b"):
        s.suggest(t)
        s.on_trial_complete(t, error=True)
    assert s.suggest("c") == Searcher.FINISHED


def test_same_seed_same_rows_same_suggestions(tmp_path: Path) -> None:
    a, b = make_searcher(tmp_path / "1"), make_searcher(tmp_path / "2")
    for s in (a, b):
        s.suggest("x")
        s.on_trial_complete("x", result(0.4))
    ca, cb = a.suggest("y"), b.suggest("y")
    assert ca["hyp"] == cb["hyp"] and ca["seed"] == cb["seed"]
    other = EvolveSearcher(make_ga(seed=1), tmp_path / "3", 3, clock=Clock())
    other.suggest("x")
    other.on_trial_complete("x", result(0.4))
    assert other.suggest("y")["hyp"] != ca["hyp"]


def test_save_restore_round_trip_continues_deterministically(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=4)
    s.suggest("a"), s.suggest("b")
    s.on_trial_complete("a", result(0.4))
    ckpt = tmp_path / "searcher.pkl"
    s.save(str(ckpt))
    expected = s.suggest("c")

    fresh = make_searcher(tmp_path, target=99)
    fresh.restore(str(ckpt))
    assert fresh.target_rows == 4 and set(fresh.live) == {"b"}
    got = fresh.suggest("c")
    assert got["trial_index"] == expected["trial_index"] == 2
    assert got["hyp"] == expected["hyp"]


def test_restored_trial_already_recorded_is_not_doubled(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=2)
    s.suggest("a")
    ckpt = tmp_path / "searcher.pkl"
    s.save(str(ckpt))                      # snapshot while "a" is live ...
    s.on_trial_complete("a", result(0.4))  # ... then "a" finishes and the driver dies
    fresh = make_searcher(tmp_path, target=2)
    fresh.restore(str(ckpt))
    # "a" re-runs after the restore; it already has a row, so one more trial may start.
    assert fresh.suggest("b")["trial_index"] == 1
    fresh.on_trial_complete("a", result(0.4))
    fresh.on_trial_complete("b", result(0.5))
    assert len(fresh.store.rows()) == 2
    assert [e["trial_id"] for e in sidecar(tmp_path)] == ["a", "b"]


def test_sidecar_genes_reach_config_and_sidecar(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=2, freeze=True)
    config = s.suggest("a")
    assert config["extras"] == {"freeze": 5.0}
    s.on_trial_complete("a", result(0.4))
    assert sidecar(tmp_path)[0]["freeze"] == 5


def test_concurrency_limiter_wraps_the_searcher(tmp_path: Path) -> None:
    limiter = ConcurrencyLimiter(make_searcher(tmp_path, target=5), max_concurrent=2)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None
    limiter.on_trial_complete("a", result(0.3))
    assert limiter.suggest("c")["trial_index"] == 2


# ------------------------------------------------------------------ callbacks
def fake_trial(trial_id: str, index: int, last: dict | None = None, error_file: str | None = None):
    return SimpleNamespace(trial_id=trial_id, config={"trial_index": index, "hyp": {"lr0": 0.01},
                                                      "extras": {}},
                           last_result=last or {}, error_file=error_file, status="RUNNING")


def test_failure_reason_takes_the_exception_line() -> None:
    text = ("Failure # 1\nray::ImplicitFunc.train() (pid=1)\n  File \"x.py\", line 3\n"
            "yolo_ray.train.loop.NonFiniteLossError: non-finite training loss nan at epoch 0\n")
    assert failure_reason(text).startswith("yolo_ray.train.loop.NonFiniteLossError: non-finite")
    assert "no error text" in failure_reason(None)


def test_failure_callback_records_the_reason(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=1)
    cb = FailureReasonCallback(s)
    cb.setup()
    s.suggest("a")
    s.on_trial_complete("a", error=True)
    err = tmp_path / "error.txt"
    err.write_text("Traceback\nRuntimeError: CUDA out of memory\n")
    cb.on_trial_error(0, [], fake_trial("a", 0, error_file=str(err)))
    assert sidecar(tmp_path)[0]["reason"] == "RuntimeError: CUDA out of memory"


def test_tensorboard_callback_writes_trial_population_and_hparams(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s = make_searcher(tmp_path, target=2)
    tb = TensorBoardCallback(tmp_path / "tb", s.store)
    config = s.suggest("a")
    trial = fake_trial("a", 0)
    trial.config = config
    for epoch in (1, 2):
        r = result(0.1 * epoch, final=epoch == 2) | {"epoch": epoch, "train/box_loss": 0.1,
                                                        "x/lr0": 0.01}
        tb.on_trial_result(0, [], trial, r)
    trial.last_result = r
    s.on_trial_complete("a", r)
    tb.on_trial_complete(0, [], trial)
    tb.on_experiment_end([])

    acc = EventAccumulator(str(tmp_path / "tb" / "trials" / "0000_a")).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/box_loss", "metrics/mAP_0.5", "x/lr0", "metrics/fitness",
            "hparams/fitness"} <= tags
    assert [e.step for e in acc.Scalars("metrics/mAP_0.5")] == [1, 2]
    assert "_hparams_/experiment" in acc.summary_metadata
    pop = EventAccumulator(str(tmp_path / "tb" / "population")).Reload()
    assert {"population/fitness", "population/best_fitness", "genes/lr0"} <= set(
        pop.Tags()["scalars"])


def test_progress_line_and_eta(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, target=4)
    lines: list[str] = []
    clock = Clock()
    cb = ProgressCallback(s.store, 4, slots=2, log=lines.append, clock=clock)
    cb.setup()
    cb.on_trial_start(0, [], fake_trial("a", 0))
    s.suggest("a")
    s.on_trial_complete("a", result(0.4))
    cb.on_trial_complete(0, [], fake_trial("a", 0))
    assert lines[-1].startswith("evolve: rows 1/4 | running 0 | failed 0 | best fitness")
    assert "ETA" in lines[-1] and "(row 0)" in lines[-1]
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"
    assert eta_seconds(3, [10.0, 20.0], 2) == pytest.approx(22.5)
