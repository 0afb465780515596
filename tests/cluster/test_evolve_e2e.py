"""End-to-end `yolo-ray evolve` on a real local Ray (fake GPUs for placement, CPU training)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from yolo_ray.cli import main
from yolo_ray.evolve.files import read_evolve_csv

pytestmark = pytest.mark.ray
TINY = ["--img", "64", "--batch-size", "8", "--workers", "0"]
GENERATIONS = 4


@pytest.fixture(scope="module")
def ray_fake_gpus():
    """2 CPUs and 2 logical GPUs; trials are placed on 'GPUs' but must train on the CPU."""
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def evolved(ray_fake_gpus, tmp_path_factory, synthetic_data) -> Path:
    """One classic run: G=4 trials, 2 at a time, 1 epoch each, freeze depth evolved too."""
    tmp = tmp_path_factory.mktemp("evolve")
    from tests.conftest import TINY_MODEL_YAML

    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY_MODEL_YAML)
    rc = main(["evolve", "--strategy", "classic", "--data", str(synthetic_data), "--cfg", str(cfg), *TINY,
               "--epochs", "1", "--generations", str(GENERATIONS), "--gpus-per-trial", "1",
               "--device", "cpu", "--evolve-freeze", "1", "6", "--project", str(tmp),
               "--name", "run", "--storage", str(tmp / "shared")])
    assert rc == 0
    return tmp / "run"


def sidecar(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "evolve_trials.jsonl").read_text().splitlines()]


def test_g_rows_and_sidecar(evolved: Path) -> None:
    columns, rows = read_evolve_csv(evolved / "evolve.csv")
    assert len(rows) == GENERATIONS
    assert "anchors" not in columns  # --noautoanchor semantics
    entries = sidecar(evolved)
    assert [e["row"] for e in entries] == list(range(GENERATIONS))
    assert {e["status"] for e in entries} == {"finished"}
    assert len({e["trial_id"] for e in entries}) == GENERATIONS
    # Placed on a (fake) GPU, but device policy 'cpu' kept every trial off CUDA.
    assert {e["device"] for e in entries} == {"cpu"}
    assert all(1 <= e["freeze"] <= 6 for e in entries)


def test_hyp_evolve_yaml_is_the_argmax_row(evolved: Path) -> None:
    _, rows = read_evolve_csv(evolved / "evolve.csv")
    best = max(rows, key=lambda r: r.fitness)
    saved = yaml.safe_load((evolved / "hyp_evolve.yaml").read_text())
    assert saved == pytest.approx(dict(best.hyp))
    assert f"# Best generation: {best.index}" in (evolve_text := (evolved / "hyp_evolve.yaml")
                                                   .read_text())
    assert f"# Last generation: {GENERATIONS - 1}" in evolve_text


def test_plot_run_file_and_shared_storage(evolved: Path) -> None:
    assert (evolved / "evolve.png").stat().st_size > 10_000
    assert (evolved / "evolve_run.yaml").is_file()
    shared = evolved.parent / "shared" / "run"  # --storage: Tune state + a copy of the results
    assert (shared / "tuner.pkl").is_file()
    assert (shared / "evolve.csv").read_bytes() == (evolved / "evolve.csv").read_bytes()
    assert (shared / "tensorboard" / "population").is_dir()


def test_tensorboard_tags(evolved: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = sorted((evolved / "tensorboard" / "trials").iterdir())
    assert len(trials) == GENERATIONS
    acc = EventAccumulator(str(trials[0])).Reload()
    assert {"train/box_loss", "train/obj_loss", "metrics/precision", "metrics/recall",
            "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "x/lr0", "metrics/fitness",
            "hparams/fitness"} <= set(acc.Tags()["scalars"])
    assert "_hparams_/session_start_info" in acc.summary_metadata
    pop = EventAccumulator(str(evolved / "tensorboard" / "population")).Reload()
    tags = set(pop.Tags()["scalars"])
    assert {"population/fitness", "population/best_fitness", "genes/lr0", "genes/mosaic",
            "genes/freeze"} <= tags
    assert [e.step for e in pop.Scalars("population/fitness")] == list(range(GENERATIONS))


def test_plot_evolve_command_redraws(evolved: Path) -> None:
    (evolved / "evolve.png").unlink()
    assert main(["plot-evolve", str(evolved)]) == 0
    assert (evolved / "evolve.png").is_file()


# ------------------------------------------------------------------ slow
def _evolve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", ("import sys; from yolo_ray.cli import main; "
            "sys.exit(main(sys.argv[1:]))"), "evolve", "--strategy", "classic", *args]


def _rows(csv: Path) -> int:
    return max(0, len(csv.read_text().splitlines()) - 1) if csv.exists() else 0


def test_resume_after_sigkill_ends_with_exactly_g_rows(tmp_path: Path, synthetic_data,
                                                       tiny_model_yaml) -> None:
    g, run = 6, tmp_path / "run"
    args = ["--data", str(synthetic_data), "--cfg", str(tiny_model_yaml), *TINY, "--epochs",
            "2", "--generations", str(g), "--project", str(tmp_path), "--name", "run"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_evolve_cmd(*args), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while _rows(run / "evolve.csv") < 1 and time.time() < deadline:
            time.sleep(0.2)
        assert _rows(run / "evolve.csv") >= 1, "no row before the deadline"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    before = (run / "evolve.csv").read_bytes()
    assert _rows(run / "evolve.csv") < g

    done = subprocess.run(_evolve_cmd("--resume", "run", "--project", str(tmp_path)),
                          env=env, capture_output=True, text=True, timeout=420,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    after = (run / "evolve.csv").read_bytes()
    assert after.startswith(before)  # pre-kill rows byte-identical
    _, rows = read_evolve_csv(run / "evolve.csv")
    assert len(rows) == g
    ids = [e["trial_id"] for e in sidecar(run) if e["row"] is not None]
    assert len(ids) == len(set(ids)) == g


@pytest.mark.slow
def test_failed_trials_are_retried_then_recorded_with_reason(ray_fake_gpus, tmp_path: Path,
                                                             synthetic_data) -> None:
    bad = tmp_path / "bad.pt"  # exists (the driver's check passes), but is no checkpoint
    bad.write_bytes(b"not a checkpoint")
    rc = main(["evolve", "--strategy", "classic", "--data", str(synthetic_data), "--weights", str(bad), *TINY,
               "--epochs", "1", "--generations", "2", "--max-failures", "1", "--device", "cpu",
               "--project", str(tmp_path), "--name", "fail"])
    entries = sidecar(tmp_path / "fail")
    assert rc == 1  # incomplete: no row could be made
    # max(3, G) failures stop the search; a trial already running may add one more.
    assert len(entries) >= 3 and {e["status"] for e in entries} == {"failed"}
    assert all(e["row"] is None and "WeightsError" in e["reason"] for e in entries)
    assert not (tmp_path / "fail" / "evolve.csv").exists()


@pytest.mark.slow
def test_asha_early_stopped_rows(ray_fake_gpus, tmp_path: Path, synthetic_data,
                                 tiny_model_yaml) -> None:
    rc = main(["evolve", "--strategy", "classic", "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml),
               "--img", "64", "--batch-size", "64", "--workers", "0", "--epochs", "4",
               "--generations", "6", "--early-stop", "asha", "--device", "cpu",
               "--project", str(tmp_path), "--name", "asha"])
    assert rc == 0
    entries = sidecar(tmp_path / "asha")
    assert [e["row"] for e in entries] == list(range(6))
    statuses = [e["status"] for e in entries]
    assert set(statuses) <= {"finished", "early-stopped"} and "early-stopped" in statuses
    header = (tmp_path / "asha" / "hyp_evolve.yaml").read_text().splitlines()
    best = int(next(x for x in header if x.startswith("# Best generation:")).split(":")[1])
    assert statuses[best] == "finished"  # an early-stopped row is never the best


def test_trial_timings_split_the_loop_into_checkpoints_and_report_waits(
        ray_fake_gpus, tmp_path: Path, synthetic_data, tiny_model_yaml) -> None:
    """summary.timings (bench/evolve_overhead.py's source): per trial the suggestion, loop and
    row times, seconds spent checkpointing and seconds blocked in tune.report."""
    from yolo_ray.cluster.launch import run_classic
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.config.load import load_hyp

    request = EvolveRequest(
        run_dir=tmp_path / "run", data=str(synthetic_data), hyp=load_hyp(None),
        cfg=str(tiny_model_yaml), strategy="classic", epochs=3, generations=1, imgsz=64,
        batch_size=8, workers=0, cpus_per_trial=1, max_concurrent=1, gpus_per_trial=0.0,
        device_policy="cpu", tensorboard=False, verbose=0)
    summary = run_classic(request)
    (t,) = summary.timings
    assert t["suggested"] <= t["trial_start"] <= t["loop_start"] < t["loop_end"] <= t["recorded"]
    loop = t["loop_end"] - t["loop_start"]
    # Two intermediate reports (epochs 1 and 2; the last is reported after the loop), the
    # first always with a checkpoint: both waits are inside the loop and take time.
    assert 0 < t["report"] < loop and 0 < t["checkpoint"] < loop
