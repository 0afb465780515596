"""PBT end to end on a real local Ray: rows, weight cloning, TensorBoard, resume after SIGKILL."""

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

from yolo_ray.cluster.pbt_launch import BEST_NAME, NUM_TO_KEEP, run_pbt
from yolo_ray.cluster.pbt_state import SCHEDULE_NAME, STATE_NAME
from yolo_ray.cluster.request import EvolveRequest
from yolo_ray.cluster.rundir import save_run_file
from yolo_ray.config.load import load_hyp
from yolo_ray.errors import ConfigError
from yolo_ray.evolve.files import SIDECAR_NAME

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def make_request(run_dir: Path, data: Path, cfg: Path, **kw: Any) -> EvolveRequest:
    values: dict[str, Any] = {
        "run_dir": run_dir.resolve(), "data": str(data), "hyp": load_hyp(None),
        "cfg": str(cfg), "strategy": "pbt", "epochs": 2, "generations": 2, "interval": 1,
        "population": 3, "imgsz": 64, "batch_size": 8, "workers": 0, "cpus_per_trial": 1,
        "gpus_per_trial": 0.0, "verbose": 0}
    values.update(kw)
    return EvolveRequest(**values)


def sidecar(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / SIDECAR_NAME).read_text().splitlines()]


def results_by_trial(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in (run_dir / "ray").glob("*/result.json"):
        out[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


@pytest.fixture
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# ----------------------------------------------------------------------------- end to end
def test_pbt_rows_cloning_and_tensorboard(local_ray, tmp_path, synthetic_data, tiny_model_yaml):
    """P=3 members on 2 CPU slots (paused and resumed on reused actors), G=2, K=1."""
    run = tmp_path / "exp"
    summary = run_pbt(make_request(run, synthetic_data, tiny_model_yaml))

    assert summary.complete and summary.rows == 6 == summary.population * summary.rounds
    entries = sidecar(run)
    assert [e["row"] for e in entries] == list(range(6))
    assert all(e["strategy"] == "pbt" and e["status"] == "finished" for e in entries)
    assert sorted(e["generation"] for e in entries) == [0, 0, 0, 1, 1, 1]
    assert len({e["trial_id"] for e in entries}) == 6
    cloned = [e for e in entries if e["cloned"]]
    assert cloned, "the bottom member must clone a top member at round 1"

    # The clone's first result continues its parent's weights and epoch counter.
    results = results_by_trial(run)
    by_row = {e["row"]: e for e in entries}
    for e in cloned:
        parent = by_row[e["parent_rows"][0]]
        child_id, parent_id = e["trial_id"].split("-m")[0], parent["trial_id"].split("-m")[0]
        parent_end = [r for r in results[parent_id] if r["epoch"] == 1][-1]
        child_next = [r for r in results[child_id] if r["epoch"] == 2][-1]
        assert child_next["start_crc"] == parent_end["weights_crc"]
    own = [e for e in entries if e["generation"] == 1 and not e["cloned"]]
    for e in own:  # members that kept their weights continue their own curve
        tid = e["trial_id"].split("-m")[0]
        first, second = ([r for r in results[tid] if r["epoch"] == ep][-1] for ep in (1, 2))
        assert second["start_crc"] == first["weights_crc"]

    # TensorBoard: one run per member plus the population view.
    trials_tb = sorted((run / "tensorboard" / "trials").iterdir())
    assert len(trials_tb) == 3 and all(list(d.glob("events.out.tfevents.*")) for d in trials_tb)
    assert list((run / "tensorboard" / "population").glob("events.out.tfevents.*"))

    # Outputs: best.pt in our checkpoint format, the schedule, the state, bounded checkpoints.
    from yolo_ray.train.checkpoint import load_checkpoint

    best = load_checkpoint(summary.best_weights)
    assert summary.best_weights == run / "weights" / BEST_NAME
    assert best["epoch"] == 1 and "train_state" not in best and best["hyp"]
    assert next(iter(best["model"].values())).dtype.is_floating_point
    import yaml

    schedule = yaml.safe_load((run / SCHEDULE_NAME).read_text())
    assert [r["round"] for r in schedule["rounds"]] == [0, 1]
    assert schedule["rounds"][-1]["row"] == summary.best_row
    assert json.loads((run / STATE_NAME).read_text())["round"] == 1
    for trial_dir in (run / "ray").glob("*_0000*"):
        assert len(list(trial_dir.glob("checkpoint_*"))) <= NUM_TO_KEEP


# ----------------------------------------------------------------------------- trainable
def member_config(data: Path, cfg: Path, member: int, **hyp: float) -> dict[str, Any]:
    from yolo_ray.cluster.pbt_trainable import INTERVAL_KEY, SETTINGS_KEY
    from yolo_ray.cluster.scheduler import MEMBER_KEY
    from yolo_ray.config.schema import TrainSettings

    settings = TrainSettings(data=str(data), cfg=str(cfg), epochs=4, batch_size=8, imgsz=64,
                             workers=0, device="cpu", threads=1, noval=True, patience=0,
                             tensorboard=False, progress=False)
    return {MEMBER_KEY: member, SETTINGS_KEY: settings, INTERVAL_KEY: 2,
            **load_hyp(None).replace(**hyp).as_dict()}


@pytest.fixture
def one_thread():
    """Members train with threads=1 (as a 1-CPU Ray trial); restore torch's setting after."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_member_checkpoint_resumes_exactly_on_a_reused_actor(
        tmp_path, monkeypatch, one_thread, synthetic_data, tiny_model_yaml):
    """Pause/restore and actor reuse (reset_config) change nothing about the training."""
    from yolo_ray.cluster.pbt_trainable import (
        PBTTrainable,
        checkpoint_size,
        weights_crc,
    )

    monkeypatch.setattr("ray.tune.trainable.trainable.DEFAULT_STORAGE_PATH", str(tmp_path))
    c0, c1 = (member_config(synthetic_data, tiny_model_yaml, m) for m in (0, 1))
    straight = PBTTrainable(config=c0)
    results = [straight.step() for _ in range(4)]
    assert [r["epoch"] for r in results] == [1, 2, 3, 4] and results[-1]["done"]
    assert [("weights_crc" in r) for r in results] == [False, True, False, True]  # round ends

    paused = PBTTrainable(config=c0)
    paused.step(), paused.step()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    paused.save_checkpoint(str(folder))
    assert checkpoint_size(folder) > 0 and not (folder / "weights.pt").exists()

    reused = PBTTrainable(config=c1)            # an actor that served member 1 ...
    reused.step()
    member1_epoch1 = weights_crc(reused.trainer.model)
    assert reused.reset_config(c0)              # ... takes over member 0 and its checkpoint
    reused.load_checkpoint(str(folder))
    after = [reused.step() for _ in range(2)]
    assert after[0]["start_crc"] == results[1]["weights_crc"] and after[0]["epoch"] == 3
    assert after[1]["weights_crc"] == results[3]["weights_crc"]   # bit-for-bit

    assert straight.reset_config(c1)            # no checkpoint follows: member 1 from scratch
    first = straight.step()
    assert first["member"] == 1 and first["epoch"] == 1
    assert weights_crc(straight.trainer.model) == member1_epoch1

    explored = member_config(synthetic_data, tiny_model_yaml, 0, lr0=0.02, momentum=0.9)
    assert paused.reset_config(explored)
    paused.load_checkpoint(str(folder))         # the saver's optimizer state, our new hyps
    group = paused.trainer.optimizer.param_groups[0]
    assert group["initial_lr"] == 0.02 and group["momentum"] == 0.9
    assert paused.trainer.epoch == 2 and paused.hyp["lr0"] == 0.02


def test_a_worker_never_reuses_a_checkpoint_folder(tmp_path):
    """Tune hands a worker the controller's checkpoint count, which can lag the folders the
    worker wrote (a save the controller dropped); the next save must not overwrite one."""
    from ray.train._internal.storage import StorageContext

    from yolo_ray.cluster.pbt_trainable import skip_used_checkpoint_dirs

    storage = StorageContext(str(tmp_path), "exp", trial_dir_name="t0",
                             current_checkpoint_index=1)
    assert skip_used_checkpoint_dirs(storage) == 1  # no trial folder yet: nothing used
    trial = tmp_path / "exp" / "t0"
    for i in (0, 1, 2):
        (trial / f"checkpoint_{i:06d}").mkdir(parents=True)
    (trial / "checkpoint_000009.tmp").mkdir()    # not Tune's name: ignored
    (trial / "checkpoint_000008").write_text("")  # a file, not a folder: ignored
    assert skip_used_checkpoint_dirs(storage) == 3
    assert storage.checkpoint_fs_path.endswith("t0/checkpoint_000003")
    storage.current_checkpoint_index = 5         # ahead of the folders: unchanged
    assert skip_used_checkpoint_dirs(storage) == 5 and skip_used_checkpoint_dirs(None) == -1


# ----------------------------------------------------------------------------- bad input
def test_population_below_two_is_refused(tmp_path, synthetic_data, tiny_model_yaml):
    with pytest.raises(ConfigError, match="at least 2 members"):
        run_pbt(make_request(tmp_path / "exp", synthetic_data, tiny_model_yaml, population=1))


def test_interval_outside_the_epochs_is_refused(tmp_path, synthetic_data, tiny_model_yaml):
    with pytest.raises(ConfigError, match="larger than --epochs"):
        run_pbt(make_request(tmp_path / "exp", synthetic_data, tiny_model_yaml, interval=3))
    with pytest.raises(ConfigError, match="--interval must be >= 1"):
        make_request(tmp_path / "exp", synthetic_data, tiny_model_yaml, interval=0)


def test_resume_of_a_classic_run_is_refused(tmp_path, synthetic_data, tiny_model_yaml):
    run = (tmp_path / "exp").resolve()
    run.mkdir()
    classic = make_request(run, synthetic_data, tiny_model_yaml, strategy="classic")
    save_run_file(classic, 4)
    (run / SIDECAR_NAME).write_text(json.dumps(
        {"row": None, "trial_id": "x", "strategy": "classic", "status": "failed"}) + "\n")
    with pytest.raises(ConfigError, match="--strategy classic"):
        run_pbt(make_request(run, synthetic_data, tiny_model_yaml, resume=True))


# ----------------------------------------------------------------------------- resume
DRIVER = """
import json, sys
from pathlib import Path
import ray
from yolo_ray.cluster.pbt_launch import run_pbt
from yolo_ray.cluster.request import EvolveRequest
from yolo_ray.config.load import load_hyp
a = json.loads(sys.argv[1])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
s = run_pbt(EvolveRequest(run_dir=Path(a["run"]), data=a["data"], hyp=load_hyp(None),
    cfg=a["cfg"], strategy="pbt", epochs=3, generations=3, interval=1, population=2,
    imgsz=64, batch_size=8, workers=0, cpus_per_trial=1, gpus_per_trial=0.0, verbose=0,
    resume=a["resume"], pbt_async=a["async"]))
print("ROWS", s.rows, s.complete)
"""


def start_driver(run: Path, data: Path, cfg: Path, resume: bool, log: Path,
                 pbt_async: bool = False) -> subprocess.Popen:
    args = json.dumps({"run": str(run), "data": str(data), "cfg": str(cfg), "resume": resume,
                       "async": pbt_async})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Its own session, so every Ray process it spawns can be found and ended afterwards.
    return subprocess.Popen([sys.executable, "-c", DRIVER, args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def end_session(sid: int) -> None:
    """SIGKILL what is left of a killed driver's Ray (raylet, workers): its session only."""
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        pid, session = (int(x) for x in line.split())
        if session == sid and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def recorded_rows(run: Path) -> int:
    """Complete evolve.csv data rows (the store writes the sidecar entry first, the csv row last)."""
    try:
        return max((run / "evolve.csv").read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("pbt_async", [False, True], ids=["sync", "async"])
def test_resume_after_driver_sigkill(tmp_path, synthetic_data, tiny_model_yaml,
                                     pbt_async):  # ~25-45 s each
    """Kill the driver mid-run (3 of 6 rows), resume: exactly 6 rows, earlier bytes intact
    (asynchronous: each member resumes at its own round)."""
    run = (tmp_path / "exp").resolve()
    driver = start_driver(run, synthetic_data, tiny_model_yaml, False, tmp_path / "first.log",
                          pbt_async)
    try:
        deadline = time.time() + 240
        while recorded_rows(run) < 3 and driver.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        end_session(driver.pid)
    csv_before = (run / "evolve.csv").read_bytes()
    side_before = (run / SIDECAR_NAME).read_bytes()
    assert 3 <= len(csv_before.splitlines()) - 1 < 6

    resumed = start_driver(run, synthetic_data, tiny_model_yaml, True, tmp_path / "second.log",
                           pbt_async)
    try:
        assert resumed.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        end_session(resumed.pid)
    assert "ROWS 6 True" in (tmp_path / "second.log").read_text()
    csv_after = (run / "evolve.csv").read_bytes()
    assert csv_after.startswith(csv_before) and len(csv_after.splitlines()) == 7
    assert (run / SIDECAR_NAME).read_bytes().startswith(side_before)
    rows = {e["row"]: e for e in sidecar(run) if e.get("row") is not None}
    assert sorted(rows) == list(range(6))
    # A kill between a row's csv and sidecar lines leaves it 'recovered' (trial id null).
    named = [e for e in rows.values() if e["trial_id"] is not None]
    cells = {(e["trial_id"].split("-m")[1].split("-r")[0], e["generation"]) for e in named}
    assert len(cells) == len(named) >= 5
    assert all(sum(e["generation"] == g for e in named) <= 2 for g in range(3))
    assert (run / "weights" / BEST_NAME).is_file()


def member_rounds(run_dir: Path) -> tuple[list[str], dict[str, tuple]]:
    """evolve.csv's header and sorted rows, and each row's lineage by member and round
    (rows are appended as members report, in an order that timing decides)."""
    header, *rows = (run_dir / "evolve.csv").read_text().splitlines()
    entries = sidecar(run_dir)
    name = {e["row"]: e["trial_id"].split("-", 1)[1] for e in entries}  # 'm1-r2'
    lineage = {name[e["row"]]: ([name[r] for r in e["parent_rows"]], e["cloned"])
               for e in entries}
    return [header] + sorted(rows), lineage


def test_held_members_train_exactly_as_pausing(tmp_path, synthetic_data, tiny_model_yaml,
                                               monkeypatch, caplog):
    """Real training, 3 members on 3 slots, 4 rounds: members held at each barrier on their
    workers (no pause, no restore unless cloned over) write the same evolve.csv rows, to
    the last digit, with the same lineage, as members that pause and restore."""
    import logging

    import ray

    from yolo_ray.cluster.pbt_hold import HeldMembers

    init = HeldMembers.__init__
    out = {}
    for hold in (True, False):
        monkeypatch.setattr(HeldMembers, "__init__",
                            lambda self, enabled=True, on=hold: init(self, enabled and on))
        ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
        try:
            run = tmp_path / f"hold-{hold}"
            with caplog.at_level(logging.INFO, logger="yolo_ray"):
                summary = run_pbt(make_request(run, synthetic_data, tiny_model_yaml, epochs=4,
                                               generations=4))
        finally:
            ray.shutdown()
        assert summary.complete and summary.rows == 12
        out[hold] = member_rounds(run)
        went_on = [int(m.split(": ")[1].split()[0]) for m in caplog.messages
                   if "held at the barrier went on" in m]
        caplog.clear()
        # 3 barriers; at each one member of 3 is cloned over (it restores), 2 go on
        assert went_on == ([2, 2, 2] if hold else []), went_on
    assert out[True] == out[False]
    assert any(cloned for _, cloned in out[True][1].values())


def test_async_rounds_rows_and_cloned_weights(local_ray, tmp_path, synthetic_data,
                                              tiny_model_yaml):
    """--pbt-async with real training, 3 members on 2 slots (they take turns), 4 rounds: one
    row per member and round, and every round starts from the weights its row's lineage
    names (a clone: its parent's at the end of the same round; else its own), whichever
    worker it restarts on."""
    run = tmp_path / "exp"
    summary = run_pbt(make_request(run, synthetic_data, tiny_model_yaml, epochs=4,
                                   generations=4, population=3, pbt_async=True))
    assert summary.complete and summary.rows == 12
    entries = sidecar(run)
    cells = sorted(e["trial_id"].split("-", 1)[1] for e in entries)
    assert cells == sorted(f"m{m}-r{r}" for m in range(3) for r in range(4))
    state = json.loads((run / STATE_NAME).read_text())
    assert state["synchronous"] is False and state["round"] == 3
    results = results_by_trial(run)
    by_row = {e["row"]: e for e in entries}
    for e in entries:
        if e["generation"] == 0:
            assert not e["parent_rows"]
            continue
        parent = by_row[e["parent_rows"][0]]
        assert parent["generation"] == e["generation"] - 1
        assert e["cloned"] == (parent["trial_id"].split("-m")[1].split("-")[0] !=
                               e["trial_id"].split("-m")[1].split("-")[0])
        child_id, parent_id = e["trial_id"].split("-m")[0], parent["trial_id"].split("-m")[0]
        parent_end = [r for r in results[parent_id] if r["epoch"] == e["generation"]][-1]
        child_start = [r for r in results[child_id] if r["epoch"] == e["generation"] + 1][-1]
        assert child_start["start_crc"] == parent_end["weights_crc"], e
    assert (run / "weights" / BEST_NAME).is_file()
