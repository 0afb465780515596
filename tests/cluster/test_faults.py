"""Fault injection on a real local Ray: failing trials, driver kills, corrupt checkpoints, full disks.

Every run is the real CLI in a subprocess (its own session, so its Ray can be ended) with a
fault plan named by $YOLO_RAY_FAULTS (yolo_ray/cluster/faults.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray")

from yolo_ray.cluster.faults import ENV, Fault
from yolo_ray.evolve.files import read_evolve_csv
from yolo_ray.evolve.ga import trial_seed
from yolo_ray.evolve.store import EvolutionStore

pytestmark = pytest.mark.ray
TINY = ["--img", "64", "--batch-size", "8", "--workers", "0"]
CLI = [sys.executable, "-c", "import sys; from yolo_ray.cli import main; sys.exit(main(sys.argv[1:]))"]


# ----------------------------------------------------------------------------- helpers
def end_session(sid: int) -> None:
    """SIGKILL what is left of a driver's Ray (raylet, workers): its own session only."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        pid, session = (int(x) for x in line.split())
        if session == sid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def write_plan(folder: Path, *faults: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    path.write_text(json.dumps({"faults": list(faults)}))
    return path


def evolve(tmp: Path, args: list[str], plan: Path | None, timeout: float = 400
           ) -> subprocess.CompletedProcess:
    """Run `yolo-ray evolve ARGS` to its end (or its planned SIGKILL); clean up its Ray."""
    # RAY_ADDRESS=local: a Ray of its own even while other test runs have clusters up.
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"OMP_NUM_THREADS": "1",
                                                              "RAY_ADDRESS": "local"}
    if plan is not None:
        env[ENV] = str(plan)
    proc = subprocess.Popen([*CLI, "evolve", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        end_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (tmp / f"log-{proc.pid}.txt").write_text(out + err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def classic_args(tmp: Path, data: Path, cfg: Path, generations: int, epochs: int = 2,
                 *extra: str) -> list[str]:
    return ["--strategy", "classic", "--data", str(data), "--cfg", str(cfg), *TINY,
            "--epochs", str(epochs), "--generations", str(generations), "--device", "cpu",
            "--no-tensorboard", "--project", str(tmp), "--name", "run", *extra]


def sidecar(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "evolve_trials.jsonl").read_text().splitlines()]


def check_consistent(run: Path, rows: int) -> list[Any]:
    """Exactly `rows` finite rows, one committed entry each, hyp_evolve.yaml = the best row."""
    data = (run / "evolve.csv").read_bytes()
    assert data.endswith(b"\n")  # no torn last line
    _, table = read_evolve_csv(run / "evolve.csv")
    assert len(table) == rows
    assert all(math.isfinite(v) for r in table for v in r.values)
    with EvolutionStore(run) as store:  # committed entries: orphans of a kill do not count
        committed = [e for e in store.entries() if e["row"] is not None]
    assert sorted(e["row"] for e in committed) == list(range(rows))
    best = max(table, key=lambda r: r.fitness)
    text = (run / "hyp_evolve.yaml").read_text()
    assert yaml.safe_load(text) == pytest.approx(dict(best.hyp))
    assert f"# Best generation: {best.index}" in text
    assert f"# Last generation: {rows - 1}" in text
    return table


# ----------------------------------------------------------------------------- a. failing trials
def test_failing_trials_are_retried_or_recorded_never_rows(tmp_path, synthetic_data,
                                                           tiny_model_yaml) -> None:
    """A seeded 20% of trials raise once (transient), trial 1's loss becomes NaN and trial 4
    runs out of memory on every attempt: 4 rows from trials 0 2 3 5, two failed entries."""
    transient = {"point": "trial.epoch", "action": "raise", "fraction": 0.2, "seed": 1,
                 "epochs": 2, "attempts": [0]}
    draw = Fault.from_dict(transient)
    hit = {i: draw.drawn_epoch(i) for i in range(10) if draw.drawn_epoch(i) is not None}
    assert hit == {3: 1, 6: 1}  # the plan's seeded draw: 2 of the first 10 trials
    plan = write_plan(tmp_path / "faults", transient,
                      {"point": "trial.epoch", "action": "nan", "trials": [1], "epoch": 1},
                      {"point": "trial.epoch", "action": "oom", "trials": [4], "epoch": 0})
    done = evolve(tmp_path, classic_args(tmp_path, synthetic_data, tiny_model_yaml, 4,
                                         2, "--max-failures", "1"), plan)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    table = check_consistent(run, 4)

    seeds = {trial_seed(0, i): i for i in range(12)}
    entries = sidecar(run)
    failed = {seeds[e["seed"]]: e for e in entries if e["status"] == "failed"}
    assert sorted(failed) == [1, 4]
    assert all(e["row"] is None for e in failed.values())
    assert ("NonFiniteLossError: loss became NaN at epoch 1 batch 0"
            in failed[1]["reason"]), failed[1]["reason"]
    assert "can't allocate memory" in failed[4]["reason"], failed[4]["reason"]
    by_row = {e["row"]: seeds[e["seed"]] for e in entries if e["row"] is not None}
    assert sorted(by_row.values()) == [0, 2, 3, 5]
    # Attempts: the transient fault ran twice and made a row; permanent ones twice and failed.
    state = plan.parent / "fault_state"
    attempts = {i: len(list(state.glob(f"t{i}.attempt*"))) for i in range(7)}
    assert attempts == {0: 1, 1: 2, 2: 1, 3: 2, 4: 2, 5: 1, 6: 0}
    # Parents are rows; a failed trial has none, so it can never be one.
    for e in entries:
        for p in e.get("parent_rows") or ():
            assert p < len(table) and by_row[p] not in failed


# ----------------------------------------------------------------------------- b. driver kills
def kill_then_resume(tmp: Path, args: list[str], fault: dict[str, Any], rows: int,
                     resume_timeout: float = 400) -> tuple[bytes, bytes]:
    """First run dies by SIGKILL at `fault`; `--resume` finishes it. Returns csv before/after."""
    plan = write_plan(tmp / "faults", fault)
    first = evolve(tmp, args, plan)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    run = tmp / "run"
    before = (run / "evolve.csv").read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    _, table = read_evolve_csv(run / "evolve.csv")  # parseable right after the kill
    assert len(table) < rows
    done = evolve(tmp, ["--resume", "run", "--project", str(tmp)], None, resume_timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    after = (run / "evolve.csv").read_bytes()
    assert after.startswith(complete)  # every row written before the kill, byte for byte
    check_consistent(run, rows)
    return before, done.stderr


@pytest.mark.parametrize("fault", [
    # right after row 1 is durable, while trial 2 trains
    pytest.param({"point": "store.after_csv", "row": 1, "action": "kill"}, id="during-trial",
                 marks=pytest.mark.slow),
    # row 1's sidecar entry written, its csv row not
    pytest.param({"point": "store.csv", "row": 1, "action": "kill"}, id="sidecar-not-row",
                 marks=pytest.mark.slow),
    # half of row 1's line written, then the kill
    pytest.param({"point": "store.csv", "row": 1, "action": "tear"}, id="mid-row"),
])
def test_classic_driver_sigkill_then_resume(tmp_path, synthetic_data, tiny_model_yaml,
                                            fault) -> None:
    args = classic_args(tmp_path, synthetic_data, tiny_model_yaml, 3, 1)
    before, log = kill_then_resume(tmp_path, args, fault, 3)
    with EvolutionStore(tmp_path / "run") as store:
        ids = [e["trial_id"] for e in store.entries() if e["row"] is not None]
    assert len(ids) == len(set(ids)) == 3  # no trial recorded twice
    if fault["action"] == "tear":
        assert not before.endswith(b"\n")  # the kill really left a torn line behind
        assert "removing a torn last line" in log
    if fault["point"] == "store.csv" and fault["action"] == "kill":
        assert before.count(b"\n") == 2  # header + row 0; row 1 only in the sidecar
        assert "entry for rows that never reached" in log


@pytest.mark.slow
def test_pbt_driver_sigkill_during_exploit_then_resume(tmp_path, synthetic_data,
                                                       tiny_model_yaml) -> None:
    """Killed while the weaker member clones the stronger (round 0 → 1): 2×2 rows at the end."""
    args = ["--strategy", "pbt", "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml),
            *TINY, "--epochs", "2", "--interval", "1", "--population", "2", "--generations",
            "2", "--device", "cpu", "--no-tensorboard", "--project", str(tmp_path),
            "--name", "run"]
    before, _ = kill_then_resume(tmp_path, args, {"point": "pbt.exploit", "round": 0,
                                                  "action": "kill"}, 4)
    assert before.count(b"\n") == 3  # header + the two round-0 rows
    rounds = sorted(e["generation"] for e in sidecar(tmp_path / "run") if e["row"] is not None)
    assert rounds == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- d. full disk
@pytest.mark.parametrize("point, errno_name, message", [
    ("store.csv", "ENOSPC", "cannot append: No space left on device"),
    pytest.param("store.sidecar", "EACCES", "cannot append: Permission denied",
                 marks=pytest.mark.slow),
])
def test_storage_full_or_unwritable_stops_cleanly(tmp_path, synthetic_data, tiny_model_yaml,
                                                  point, errno_name, message) -> None:
    """Row 1 cannot be written (uid 0 ignores chmod, so the plan raises the OSError): a
    one-line error naming the file, exit 2, and row 0 intact."""
    plan = write_plan(tmp_path / "faults",
                      {"point": point, "row": 1, "action": "errno", "errno": errno_name})
    done = evolve(tmp_path, classic_args(tmp_path, synthetic_data, tiny_model_yaml, 3, 1,
                                         "--max-concurrent", "1"), plan, 240)
    run = tmp_path / "run"
    target = run / ("evolve.csv" if point == "store.csv" else "evolve_trials.jsonl")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"yolo-ray: error: {target}: {message}" in done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    check_consistent(run, 1)


# ----------------------------------------------------------------------------- c. corrupt checkpoint
@pytest.mark.slow
def test_corrupt_pbt_checkpoint_on_resume_restarts_the_member(tmp_path, synthetic_data,
                                                              tiny_model_yaml) -> None:
    """Killed once round 1's rows are durable; every checkpoint after epoch 0 is then truncated:
    --resume retrains the members it restores from scratch with a warning naming the file."""
    args = ["--strategy", "pbt", "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml),
            *TINY, "--epochs", "3", "--interval", "1", "--population", "2", "--generations",
            "3", "--device", "cpu", "--no-tensorboard", "--project", str(tmp_path),
            "--name", "run"]
    plan = write_plan(tmp_path / "faults", {"point": "store.after_csv", "row": 3,
                                            "action": "kill"})
    first = evolve(tmp_path, args, plan)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    run = tmp_path / "run"
    before = (run / "evolve.csv").read_bytes()
    corrupted = []
    for meta in sorted(run.glob("ray/*/checkpoint_*/meta.json")):
        if json.loads(meta.read_text())["epoch"] >= 1:
            state = meta.parent / "state.pt"
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
            corrupted.append(state)
    assert corrupted
    done = evolve(tmp_path, ["--resume", "run", "--project", str(tmp_path), "--verbose", "2"],
                  None)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert any(f"{p}: corrupt checkpoint" in log and "restarts from scratch" in log
               for p in corrupted), log[-3000:]
    assert (run / "evolve.csv").read_bytes().startswith(before)
    check_consistent(run, 6)


@pytest.mark.slow
@pytest.mark.parametrize("resumed", [False, True], ids=["fresh", "resumed"])
def test_pbt_storage_full_stops_cleanly(tmp_path, synthetic_data, tiny_model_yaml,
                                        resumed: bool) -> None:
    """Round 1's first row cannot be written: exit 2, one line naming evolve.csv, round 0 intact.
    Also after --resume, where Tune's restored scheduler writes the rows."""
    args = ["--strategy", "pbt", "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml),
            *TINY, "--epochs", "2", "--interval", "1", "--population", "2", "--generations",
            "2", "--device", "cpu", "--no-tensorboard", "--project", str(tmp_path),
            "--name", "run"]
    plan = write_plan(tmp_path / "faults",
                      {"point": "store.csv", "row": 2, "action": "errno", "errno": "ENOSPC"})
    if resumed:
        first = evolve(tmp_path, args, write_plan(tmp_path / "kill", {
            "point": "store.after_csv", "row": 1, "action": "kill"}), 240)
        assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
        args = ["--resume", "run", "--project", str(tmp_path)]
    done = evolve(tmp_path, args, plan, 240)
    run = tmp_path / "run"
    assert done.returncode == 2, done.stderr[-3000:]
    line = f"yolo-ray: error: {run / 'evolve.csv'}: cannot append: No space left on device"
    assert line in done.stderr.splitlines()
    check_consistent(run, 2)
