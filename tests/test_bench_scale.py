"""bench/scale.py's worker gap split: what a worker did between two epochs, from event times."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scale import gap_note, idle_fraction, worker_gaps


def write_events(path: Path, events: list[tuple[str, float, int]]) -> None:
    path.write_text("".join(f"{k} {t:.6f} {m}\n" for k, t, m in events))


def test_gaps_split_a_member_training_on_from_a_restart(tmp_path):
    # Worker 1: member 0 trains on (save, train), then hands over to member 3 (save, reset,
    # restore, train). Worker 2: a clone restarts on its own worker (a reset too).
    write_events(tmp_path / "101", [
        ("setup", 0.0, 0), ("train", 0.1, 0), ("result", 2.0, 0), ("save", 2.008, 0),
        ("train", 2.012, 0), ("result", 4.0, 0), ("save", 4.01, 0), ("reset", 4.03, 3),
        ("restore", 4.036, 3), ("train", 4.040, 3), ("result", 6.0, 3)])
    write_events(tmp_path / "102", [
        ("setup", 0.0, 5), ("train", 0.2, 5), ("result", 2.0, 5), ("save", 2.006, 5),
        ("reset", 2.026, 5), ("restore", 2.030, 5), ("train", 2.040, 5)])
    g = worker_gaps(tmp_path)
    assert g["on"]["n"] == 1 and g["restart"]["n"] == 2
    assert g["on"]["mean_ms"] == pytest.approx(12.0, abs=1e-3)
    assert g["on"]["phases_ms"] == pytest.approx({"result→save": 8.0, "save→train": 4.0},
                                                 abs=1e-3)
    assert g["restart"]["mean_ms"] == pytest.approx((40.0 + 40.0) / 2, abs=1e-3)
    assert g["restart"]["phases_ms"] == pytest.approx(
        {"result→save": 8.0, "save→reset": 20.0, "reset→restore": 5.0, "restore→train": 7.0},
        abs=1e-3)
    assert "trains on 12.0 ms (n = 1" in gap_note(g)


def test_an_epoch_still_running_at_the_end_is_no_gap(tmp_path):
    write_events(tmp_path / "7", [("train", 0.0, 1), ("result", 1.0, 1), ("save", 1.01, 1)])
    g = worker_gaps(tmp_path)
    assert g["on"]["n"] == 0 and g["restart"]["n"] == 0


def test_idle_counts_slot_time_between_the_ramp_up_and_the_last_start():
    # two slots; each busy 0-10 then 11-20 (1 s gap each): window = from 2nd start (0) to
    # the last start (11): idle = 2 s of 22 slot-seconds
    spans = [(0.0, 10.0), (0.0, 10.0), (11.0, 20.0), (11.0, 20.0)]
    m = idle_fraction(spans, 2)
    assert m["idle"] == pytest.approx(2 / 22) and m["max_running"] == 2


def test_only_selects_runs_by_strategy_or_the_asynchronous_pbt_run_alone():
    from bench.scale import selected

    runs = ["classic", "pbt", "pbt, asynchronous rounds", "pbt, Ray's restarts"]
    assert [r for r in runs if selected(None, r)] == runs
    assert [r for r in runs if selected("pbt", r)] == runs[1:]
    assert [r for r in runs if selected("pbt-async", r)] == ["pbt, asynchronous rounds"]
    assert [r for r in runs if selected("classic", r)] == ["classic"]


def test_classic_spans_come_from_every_trial_folder_and_the_snapshot_is_tunes_newest(tmp_path):
    import json

    from bench.scale import trial_results, tune_snapshot

    for i, lines in enumerate([[{"t_start": 0.0}, {"t_start": 1.0, "t_end": 2.0}], []]):
        (tmp_path / f"t{i}").mkdir()
        (tmp_path / f"t{i}" / "result.json").write_text(
            "".join(json.dumps(x) + "\n" for x in lines))
    assert trial_results(tmp_path) == [{"t_start": 1.0, "t_end": 2.0}]  # last line each
    for stamp, n in (("2026-12-06_10-00-00", 3), ("2026-12-06_09-00-00", 5)):
        (tmp_path / f"experiment_state-{stamp}.json").write_text(
            json.dumps({"trial_data": [["{}", "{}"]] * n}))
    assert tune_snapshot(tmp_path)["snapshot_trials"] == 3  # the newest name, as Tune picks
