"""build_classic_tuner drives a stand-in trainable (bench/scale.py) exactly as the real one."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_ray.cluster.launch import (
    TUNE_ENV, PreparedRun, build_ga, quiet_tune_env, resolve_resources, scoped_env,
)
from yolo_ray.cluster.request import EvolveRequest
from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.store import EvolutionStore
from yolo_ray.train.results import RESULT_KEYS

pytestmark = pytest.mark.ray


def results(fit: float) -> dict[str, float]:
    """Seven result values whose fitness (0.1·mAP50 + 0.9·mAP50-95) is `fit`."""
    return dict(zip(RESULT_KEYS, (0.5, 0.5, fit, fit, 0.05, 0.03, 0.01)))


def lr_trial(config: dict) -> None:
    """Reports fitness = lr0 (no training), so each row's fitness is its own hyp."""
    from ray import tune

    fit = round(float(config["hyp"]["lr0"]), 4)
    tune.report(results(fit) | {"fitness": fit, "epoch": 1, "final": True})


def request_for(tmp_path: Path, strategy: str, **kw: object) -> EvolveRequest:
    data = tmp_path / "data.yaml"  # never read: the stand-ins do not train
    data.write_text("path: .\ntrain: images\nval: images\nnames: {0: a}\n")
    return EvolveRequest(run_dir=tmp_path / strategy, data=str(data), hyp=load_hyp(),
                         cfg="yolov5n", strategy=strategy, verbose=0, tensorboard=False,
                         gpus_per_trial=0.0, cpus_per_trial=1, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_classic_tuner_runs_a_given_trainable_through_the_searcher(local_ray,
                                                                   tmp_path: Path) -> None:
    import ray
    from ray import tune

    from yolo_ray.cluster.tuner import build_classic_tuner

    request = resolve_resources(request_for(tmp_path, "classic", generations=3, epochs=1),
                                ray.cluster_resources())
    ga = build_ga(request)
    store = EvolutionStore(request.run_dir, ga.hyp_keys)
    prepared = PreparedRun(request, ga, store, 3)
    trainable = tune.with_resources(lr_trial, {"cpu": 1})
    with scoped_env(**TUNE_ENV, **quiet_tune_env(0)):
        build_classic_tuner(prepared, request, trainable=trainable).fit()
    rows = store.rows()
    assert len(rows) == 3
    assert rows[0].hyp["lr0"] == 0.01  # trial 0 is YOLOv5's unmutated base row
    for row in rows:  # the stand-in's fitness, recorded by our searcher
        assert row.fitness == pytest.approx(round(row.hyp["lr0"], 4), abs=1e-6)
    store.close()


def test_limiter_lets_trials_wait_for_a_slot_only_with_many_slots() -> None:
    from yolo_ray.cluster.tuner import limiter_size

    # Below 8 slots suggestions stay as late as YOLOv5's (no trial waits); above, one in 8
    # extra trials waits so Tune can hand it a finished trial's actor.
    assert [limiter_size(n) for n in (0, 1, 2, 7, 8, 64, 256)] == [1, 1, 2, 7, 9, 72, 288]
