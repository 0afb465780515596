"""A classic run of sleeping stand-in trials with trial retirement on (`tune_keep_finished`),
as a script, so a test can SIGKILL its driver and resume it (test_trial_retirement.py).

    python -m tests.cluster.retire_run ROOT ROWS KEEP [--resume]

Runs in ROOT/classic; prints one JSON line: rows in evolve.csv, trials in Tune's last
snapshot and in its grid, and the most Trial objects alive in the driver during the fit.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import threading
import time
from pathlib import Path

from bench.scale import tune_snapshot
from yolo_ray.cluster.launch import (
    TUNE_ENV, PreparedRun, build_ga, quiet_tune_env, resolve_resources, scoped_env,
)
from yolo_ray.evolve.store import EvolutionStore

from .test_tuner_trainable import request_for, results

SLEEP_S = 0.4


def sleeping_trial(config: dict) -> None:
    """Sleeps, then reports fitness = lr0 (so each row's fitness is its own hyp)."""
    from ray import tune

    time.sleep(SLEEP_S)
    fit = round(float(config["hyp"]["lr0"]), 4)
    tune.report(results(fit) | {"fitness": fit, "epoch": 1, "final": True})


def most_trials_alive(stop: threading.Event, seen: list[int]) -> None:
    """Every 0.2 s until `stop`: the Trial objects still reachable in this process."""
    from ray.tune.experiment import Trial

    while not stop.wait(0.2):
        gc.collect()  # count what something holds, not cycles awaiting collection
        seen.append(sum(isinstance(o, Trial) for o in gc.get_objects()))


def main(argv: list[str]) -> int:
    import ray
    from ray import tune

    from yolo_ray.cluster.tuner import build_classic_tuner

    root, rows, keep, resume = Path(argv[0]), int(argv[1]), int(argv[2]), "--resume" in argv
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    request = request_for(root, "classic", generations=rows, epochs=1, resume=resume,
                          tune_keep_finished=keep)
    request = resolve_resources(request, ray.cluster_resources())
    ga = build_ga(request)
    store = EvolutionStore(request.run_dir, ga.hyp_keys)
    prepared = PreparedRun(request, ga, store, rows)
    trainable = tune.with_resources(sleeping_trial, {"cpu": 1})
    # A snapshot at every step: each one retires what it can.
    stop, seen = threading.Event(), [0]
    sampler = threading.Thread(target=most_trials_alive, args=(stop, seen), daemon=True)
    with scoped_env(**TUNE_ENV, **quiet_tune_env(0), TUNE_GLOBAL_CHECKPOINT_S="0"):
        tuner = build_classic_tuner(prepared, request, trainable=trainable)
        sampler.start()
        grid = tuner.fit()
    stop.set()
    sampler.join()
    snapshot = tune_snapshot(Path(request.experiment_path))["snapshot_trials"]
    print(json.dumps({"rows": len(store.rows()), "grid": len(grid), "snapshot": snapshot,
                      "held": max(seen)}))
    store.close()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
