"""EvolutionStore: YOLOv5 byte format, durability repairs, idempotency, sidecar, seeding."""

from __future__ import annotations

import json
import pickle
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from yolo_ray.errors import StoreError
from yolo_ray.evolve.records import TrialRecord
from yolo_ray.evolve.store import EvolutionStore
from yolo_ray.train.results import RESULT_KEYS, Metrics

from .conftest import YOLOV5_COLUMNS, write_yolov5_csv

KEYS = ("lr0", "anchors")
RESULTS = (0.5, 0.25, 0.123456789, 0.0625, 0.031, 0.0075, 1e-05)

# Built by hand from spec §1.3: every name right-aligned in 20 characters, joined by ','.
HEADER = ("   metrics/precision," "      metrics/recall," "     metrics/mAP_0.5,"
          "metrics/mAP_0.5:0.95," "        val/box_loss," "        val/obj_loss,"
          "        val/cls_loss," + " " * 17 + "lr0," + " " * 13 + "anchors\n")
# ... and every value as '%20.5g' (5 significant digits, 20 wide).
ROW0 = ",".join([" " * 17 + "0.5", " " * 16 + "0.25", " " * 13 + "0.12346",
                 " " * 14 + "0.0625", " " * 15 + "0.031", " " * 14 + "0.0075",
                 " " * 15 + "1e-05", " " * 16 + "0.01", " " * 19 + "3"]) + "\n"


def rec(tid: str, map_: float = 0.1, status: str = "finished", **kw: object) -> TrialRecord:
    results = None if status == "failed" else (0.5, 0.25, map_, map_ / 2, 0.031, 0.0075, 1e-05)
    return TrialRecord(tid, status, {"lr0": 0.01, "anchors": 3.0}, results, **kw)  # type: ignore[arg-type]


def test_csv_header_and_row_bytes_match_yolov5(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    assert store.append(TrialRecord("t0", "finished", {"lr0": 0.01, "anchors": 3.0}, RESULTS)) == 0
    assert (tmp_path / "evolve.csv").read_bytes() == (HEADER + ROW0).encode()
    assert len(HEADER.split(",")[3]) == 20  # metrics/mAP_0.5:0.95 fills its field exactly


def test_yolov5_readers_parse_our_csv(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    for i in range(3):
        store.append(rec(f"t{i}", 0.1 * (i + 1)))
    df = pd.read_csv(tmp_path / "evolve.csv", skipinitialspace=True)
    assert [c.strip() for c in df.columns] == list(RESULT_KEYS + KEYS)
    x = np.loadtxt(tmp_path / "evolve.csv", ndmin=2, delimiter=",", skiprows=1)
    assert x.shape == (3, 9) and x[2, 2] == pytest.approx(0.3)


def test_rows_read_back_by_name_with_sidecar(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.2, node="n1", seed=7, start=10.0, end=12.5, parent_rows=(0,)))
    store.append(TrialRecord("b", "finished", {"anchors": 4.0, "lr0": 0.02},
                             Metrics(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)))
    rows = EvolutionStore(tmp_path, KEYS).rows()
    assert [r.index for r in rows] == [0, 1]
    assert rows[1].hyp == {"lr0": 0.02, "anchors": 4.0}
    assert rows[1].values == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert rows[1].fitness == pytest.approx(0.1 * 0.3 + 0.9 * 0.4)
    meta = rows[0].meta
    assert (meta["trial_id"], meta["node"], meta["seed"], meta["wall_time"]) == ("a", "n1", 7, 2.5)
    assert meta["parent_rows"] == [0] and meta["status"] == "finished"


def test_columns_in_another_order_are_read_and_written_by_name(tmp_path: Path) -> None:
    cols = ("anchors",) + RESULT_KEYS[::-1] + ("lr0",)
    (tmp_path / "evolve.csv").write_text(
        ",".join(f"{c:>20}" for c in cols) + "\n" + ",".join(f"{v:>20.5g}" for v in
                                                           (3.0,) + RESULTS[::-1] + (0.01,)) + "\n")
    store = EvolutionStore(tmp_path, KEYS)
    assert store.rows()[0].values == tuple(float(f"{v:.5g}") for v in RESULTS)
    store.append(TrialRecord("t", "finished", {"lr0": 0.02, "anchors": 5.0}, RESULTS))
    last = (tmp_path / "evolve.csv").read_text().splitlines()[-1].split(",")
    assert float(last[0]) == 5.0 and float(last[-1]) == 0.02


def test_torn_last_line_is_repaired_on_open(tmp_path: Path, caplog) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.1))
    store.append(rec("b", 0.2))
    csv = tmp_path / "evolve.csv"
    good = csv.read_bytes()
    with open(csv, "ab") as f:  # a writer killed mid-line
        f.write(b"                 0.5,                0.2")
    with open(tmp_path / "evolve_trials.jsonl", "ab") as f:
        f.write(b'{"row": 2, "trial_')
    with caplog.at_level(logging.WARNING):
        store = EvolutionStore(tmp_path, KEYS)
    assert "torn last line" in caplog.text
    assert csv.read_bytes() == good
    assert len(store.rows()) == 2
    assert store.append(rec("c", 0.3)) == 2
    assert len((tmp_path / "evolve_trials.jsonl").read_text().splitlines()) == 3


def test_malformed_line_raises_and_changes_nothing(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    for i in range(3):
        store.append(rec(f"t{i}", 0.1))
    csv = tmp_path / "evolve.csv"
    lines = csv.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("0.5", "abc", 1)
    csv.write_text("".join(lines) + "   0.1,  0.2")  # plus a torn tail: still untouched
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(StoreError, match=r"evolve\.csv: line 3: non-numeric"):
        EvolutionStore(tmp_path, KEYS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    csv.write_text("".join(lines[:2]) + "1,2,3\n")
    with pytest.raises(StoreError, match=r"line 3: expected 9 comma-separated values, found 3"):
        EvolutionStore(tmp_path, KEYS)


def test_malformed_sidecar_line_raises(tmp_path: Path) -> None:
    EvolutionStore(tmp_path, KEYS).append(rec("a"))
    side = tmp_path / "evolve_trials.jsonl"
    side.write_text(side.read_text() + "not json\n")
    with pytest.raises(StoreError, match=r"evolve_trials\.jsonl: line 2: invalid JSON"):
        EvolutionStore(tmp_path, KEYS)


def test_duplicate_trial_id_is_not_appended_twice(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    assert store.append(rec("a", 0.1)) == 0
    assert store.append(rec("a", 0.9)) == 0          # retry after resume: no-op
    assert EvolutionStore(tmp_path, KEYS).append(rec("a", 0.9)) == 0  # also after reopen
    assert store.append(rec("f", status="failed", reason="CUDA OOM")) is None
    assert store.append(rec("f", status="failed")) is None
    assert store.append(rec("f", 0.4)) == 1          # a failed trial that later succeeded
    assert len(store.rows()) == 2
    assert len((tmp_path / "evolve.csv").read_text().splitlines()) == 3
    entries = [json.loads(x) for x in (tmp_path / "evolve_trials.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["row"], e["status"]) for e in entries] == [
        ("a", 0, "finished"), ("f", None, "failed"), ("f", 1, "finished")]
    assert entries[1]["reason"] == "CUDA OOM"


def test_kill_between_sidecar_and_csv_never_duplicates(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    assert store.append(rec("a", 0.1)) == 0
    store.close()
    # the writer of trial "x" was killed after its sidecar entry, before its csv row
    orphan = rec("x", 0.5).sidecar_entry(1)
    with open(tmp_path / "evolve_trials.jsonl", "a") as f:
        f.write(json.dumps(orphan) + "\n")
    csv_before = (tmp_path / "evolve.csv").read_bytes()
    reopened = EvolutionStore(tmp_path, KEYS)
    assert [e["trial_id"] for e in reopened.entries()] == ["a"]  # the orphan is not committed
    assert (tmp_path / "evolve.csv").read_bytes() == csv_before
    assert reopened.append(rec("b", 0.3)) == 1      # takes row 1; the orphan stays orphaned
    assert reopened.append(rec("x", 0.5)) == 2      # the retry of x is written exactly once
    assert reopened.append(rec("x", 0.5)) == 2
    assert len(EvolutionStore(tmp_path, KEYS).rows()) == 3
    assert [r.meta["trial_id"] for r in EvolutionStore(tmp_path, KEYS).rows()] == ["a", "b", "x"]


def test_failed_only_in_sidecar_early_stopped_never_best(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("x", status="failed"))
    assert not (tmp_path / "evolve.csv").exists() and not store.rows()
    store.append(rec("a", 0.2))
    store.append(rec("b", 0.9, status="early-stopped"))
    rows = store.rows()
    assert [r.eligible for r in rows] == [True, False]
    assert store.best_row() is not None and store.best_row().index == 0  # type: ignore[union-attr]
    assert "# Best generation: 0" in (tmp_path / "hyp_evolve.yaml").read_text()


def test_hyp_evolve_yaml_is_the_argmax_row_with_yolov5_header(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.1))
    store.append(TrialRecord("b", "finished", {"lr0": 0.0123456, "anchors": 4.5},
                             (0.87729, 0.85125, 0.91286, 0.72664, 0.05, 0.03, 0.01)))
    store.append(rec("c", 0.2))
    expected = (
        "# YOLOv5 Hyperparameter Evolution Results\n"
        "# Best generation: 1\n"
        "# Last generation: 2\n"
        "#    metrics/precision,       metrics/recall,      metrics/mAP_0.5, "
        "metrics/mAP_0.5:0.95,         val/box_loss,         val/obj_loss,         val/cls_loss\n"
        "#              0.87729,              0.85125,              0.91286,              0.72664,"
        "                 0.05,                 0.03,                 0.01\n"
        "\n"
        "lr0: 0.012346\n"
        "anchors: 4.5\n")
    assert (tmp_path / "hyp_evolve.yaml").read_text() == expected
    assert yaml.safe_load(expected) == {"lr0": 0.012346, "anchors": 4.5}
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic rewrite leaves no temp file
    store.append(TrialRecord("d", "finished", {"lr0": 0.02, "anchors": 3.0},
                             (0.9, 0.9, 0.95, 0.95, 0.05, 0.03, 0.01)))
    text = (tmp_path / "hyp_evolve.yaml").read_text()  # a new best: header and body follow
    assert "# Best generation: 3\n# Last generation: 3\n" in text
    assert text.endswith("\n\nlr0: 0.02\nanchors: 3.0\n")


def test_csv_row_without_sidecar_entry_is_recovered(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.1))
    store.append(rec("b", 0.2))
    side = tmp_path / "evolve_trials.jsonl"
    side.write_text(side.read_text().splitlines(keepends=True)[0])  # killed before line 2
    csv_before = (tmp_path / "evolve.csv").read_bytes()
    rows = EvolutionStore(tmp_path, KEYS).rows()
    assert (tmp_path / "evolve.csv").read_bytes() == csv_before
    assert len(rows) == 2 and rows[1].meta["status"] == "finished"
    assert rows[1].meta["reason"].startswith("recovered")
    assert len(side.read_text().splitlines()) == 2
    reopened = EvolutionStore(tmp_path, KEYS)
    assert [r.index for r in reopened.recovered_rows()] == [1]
    assert reopened.append(rec("c", 0.3)) == 2
    assert reopened.row(2) == reopened.rows()[2] and reopened.row(1).meta["trial_id"] is None
    assert [r.index for r in reopened.recovered_rows()] == [1]  # new rows are not recovered


def test_column_mismatch_and_unwritable_folder(tmp_path: Path) -> None:
    EvolutionStore(tmp_path, KEYS).append(rec("a"))
    with pytest.raises(StoreError, match=r"missing: box; unexpected: anchors"):
        EvolutionStore(tmp_path, ("lr0", "box"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"folder .*file\.txt/out is not writable"):
        EvolutionStore(blocker / "out", KEYS)


def test_two_stores_share_one_folder_incrementally(tmp_path: Path) -> None:
    a, b = EvolutionStore(tmp_path, KEYS), EvolutionStore(tmp_path, KEYS)
    a.append(rec("a1", 0.1))
    assert [r.meta["trial_id"] for r in b.rows()] == ["a1"]
    assert b.append(rec("b1", 0.2)) == 1                 # b caught up before writing
    assert a.append(rec("a2", 0.3)) == 2
    assert [r.meta["trial_id"] for r in b.rows()] == ["a1", "b1", "a2"]
    size = (tmp_path / "evolve.csv").stat().st_size
    assert b._csv_offset == size  # only appended bytes are ever parsed again


def test_seed_from_yolov5_csv(tmp_path: Path) -> None:
    src = tmp_path / "yolov5" / "evolve.csv"
    src.parent.mkdir()
    rows = write_yolov5_csv(src, 12)
    store = EvolutionStore(tmp_path / "run", YOLOV5_COLUMNS[7:])
    assert store.seed_from_csv(src) == 12
    assert store.seed_from_csv(src) == 0              # same file again: nothing added
    got = store.rows()
    assert [list(r.values) + list(r.hyp.values()) for r in got] == rows
    assert (tmp_path / "run" / "evolve.csv").read_bytes() == src.read_bytes()
    assert all(r.meta["strategy"] == "seed" for r in got)
    fit = [r.fitness for r in got]
    assert f"# Best generation: {int(np.argmax(fit))}" in (
        tmp_path / "run" / "hyp_evolve.yaml").read_text()


def test_seed_from_csv_names_unknown_and_missing_columns(tmp_path: Path) -> None:
    src = tmp_path / "evolve.csv"
    write_yolov5_csv(src, 2)
    with pytest.raises(StoreError, match=r"not in this run's search space/hyps: .*anchors"):
        EvolutionStore(tmp_path / "a", YOLOV5_COLUMNS[7:-1]).seed_from_csv(src)
    with pytest.raises(StoreError, match=r"lacks hyp column\(s\) of this run: freeze_x"):
        EvolutionStore(tmp_path / "b", YOLOV5_COLUMNS[7:] + ("freeze_x",)).seed_from_csv(src)


def test_record_hyps_must_match_the_columns(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    with pytest.raises(StoreError, match=r"missing: anchors; unexpected: freeze"):
        store.append(TrialRecord("t", "finished", {"lr0": 0.01, "freeze": 3}, RESULTS))
    assert not (tmp_path / "evolve.csv").exists()


def test_store_pickles_to_the_live_store_or_by_reopening(tmp_path: Path) -> None:
    """Unpickled in the process that has the folder open (a restored Tune scheduler): the same
    object, so its write errors reach the driver. Once closed: reopened from disk."""
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.1))
    blob = pickle.dumps(store)
    assert pickle.loads(blob) is store
    store.write_error = StoreError("disk full")
    assert pickle.loads(blob).write_error is store.write_error
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.rows()
    clone = pickle.loads(blob)
    assert clone is not store and clone.write_error is None
    assert clone.hyp_keys == KEYS and [r.meta["trial_id"] for r in clone.rows()] == ["a"]
    clone.append(rec("b", 0.2))
    assert len(EvolutionStore(tmp_path, KEYS).rows()) == 2


def test_trial_rows_reports_committed_rows_and_failures_only(tmp_path: Path) -> None:
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.2))
    store.append(rec("f", status="failed", reason="boom"))
    other = EvolutionStore(tmp_path, KEYS)  # a second handle sees the other's appends
    other.append(rec("b", 0.3))
    assert store.trial_rows(["a", "b", "f", "missing"]) == {"a": 0, "b": 1, "f": None}
    assert store.trial_rows([]) == {}


def test_a_yaml_behind_the_csv_is_rewritten_on_open(tmp_path: Path, caplog) -> None:
    """Killed after a row reached evolve.csv, before hyp_evolve.yaml: opening catches it up."""
    store = EvolutionStore(tmp_path, KEYS)
    store.append(rec("a", 0.1))
    stale = (tmp_path / "hyp_evolve.yaml").read_text()
    store.append(rec("b", 0.9))
    expected = (tmp_path / "hyp_evolve.yaml").read_text()
    store.close()
    (tmp_path / "hyp_evolve.yaml").write_text(stale)
    with caplog.at_level("WARNING"):
        EvolutionStore(tmp_path, KEYS).close()
    assert (tmp_path / "hyp_evolve.yaml").read_text() == expected
    assert "behind" in caplog.text and "2 rows" in caplog.text
    caplog.clear()
    EvolutionStore(tmp_path, KEYS).close()  # up to date: not touched, no warning
    assert "behind" not in caplog.text
