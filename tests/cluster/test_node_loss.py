"""A worker node lost mid-run: its trial moves to the other worker and resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from yolo_ray.cli import main

from .test_multinode import evolve_args, gpu_cluster, node_labels, tune_results

ray = pytest.importorskip("ray")

EPOCHS = 8       # enough that the trial is still training when its node goes
GENERATIONS = 2  # one trial per worker, started together


def first_checkpoint(experiment: Path, pattern: str,
                     min_epoch: int = 1) -> dict[str, Any] | None:
    """The first checkpoint of epoch >= min_epoch a trial has written to storage."""
    for info in sorted(experiment.glob(pattern)):
        try:
            meta = json.loads(info.read_text())
        except (OSError, ValueError):  # still being copied
            continue
        if meta.get("epoch", min_epoch) < min_epoch:
            continue
        return {"trial_id": info.parent.parent.name, **meta}
    return None


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), so a node's workers can die with it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        found += kids
        frontier = kids
    return found


def lose_node(cluster: Any, node: Any) -> None:
    """A machine lost at once: its raylet and every worker under it, not only the raylet.

    `Cluster.remove_node` kills the node's Ray daemons; orphaned workers notice only later and
    can meanwhile report results from a node that is gone, which a real loss never does."""
    from ray._private import ray_constants
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for pid in [raylet, *descendants(raylet)]:  # together, as power loss would
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    cluster.remove_node(node, allow_graceful=False)  # the node's other daemons, and reaping


class NodeKiller(threading.Thread):
    """Removes the node of the first trial that checkpointed epoch >= min_epoch (beside the
    driver)."""

    def __init__(self, cluster: Any, experiment: Path, labels: dict[str, Any],
                 pattern: str = "*/checkpoint_*/trial.json", min_epoch: int = 1,
                 with_workers: bool = True) -> None:
        super().__init__(daemon=True)
        self.cluster, self.experiment, self.labels = cluster, experiment, labels
        self.pattern, self.min_epoch, self.with_workers = pattern, min_epoch, with_workers
        self.victim: dict[str, Any] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            found = first_checkpoint(self.experiment, self.pattern, self.min_epoch)
            if found is not None and found["node"] in self.labels:
                node = self.labels[found["node"]]
                if self.with_workers:
                    lose_node(self.cluster, node)
                else:
                    self.cluster.remove_node(node, allow_graceful=False)
                self.victim = found | {"killed_at": time.time()}
                return
            self.stop.wait(0.1)


@pytest.mark.ray
def test_lost_worker_trial_resumes_on_the_other_from_its_checkpoint(
        tmp_path, synthetic_data, tiny_model_yaml) -> None:
    from yolo_ray.evolve.files import SIDECAR_NAME, read_evolve_csv

    storage = tmp_path / "storage"
    with gpu_cluster() as cluster:
        head, workers = node_labels(cluster)
        nodes = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
        # Checkpoint every epoch (budget 1) and kill after the 2nd reaches storage: a
        # checkpoint's files can land before the driver has registered it (the trial then
        # resumes from the one before), but by the time epoch 2's files exist, epoch 1's
        # report was processed an epoch earlier.
        killer = NodeKiller(cluster, storage / "exp", dict(zip(workers, nodes)), min_epoch=2)
        killer.start()
        try:
            rc = main(evolve_args(synthetic_data, tiny_model_yaml, tmp_path / "runs", storage,
                                  cluster.address, "--strategy", "classic", "--data-on-nodes",
                                  "--epochs", str(EPOCHS), "--generations", str(GENERATIONS),
                                  "--max-failures", "3", "--checkpoint-budget", "1"))
        finally:
            killer.stop.set()
            killer.join()
    assert rc == 0
    victim = killer.victim
    assert victim is not None and 2 <= victim["epoch"] < EPOCHS, victim
    survivor = next(w for w in workers if w != victim["node"])

    run = tmp_path / "runs" / "exp"
    _, rows = read_evolve_csv(run / "evolve.csv")
    assert len(rows) == GENERATIONS and len((run / "evolve.csv").read_text().splitlines()) == 3
    entries = [json.loads(line) for line in (run / SIDECAR_NAME).read_text().splitlines()]
    assert [e["row"] for e in entries] == [0, 1]  # no failed entry: the retry succeeded
    assert all(e["status"] == "finished" and e["node"] == survivor for e in entries), \
        [(e["trial_id"], e["status"], e["node"]) for e in entries] + [victim, survivor]
    moved = next(e for e in entries if e["trial_id"] == victim["trial_id"])
    assert moved["node"] == survivor

    # Its Tune results: epochs on the lost worker, then a restart on the survivor that
    # resumed after a checkpointed epoch (not from 0) and ran to the last epoch.
    results = tune_results(storage / "exp")[victim["trial_id"]]
    after = [r for r in results if r["node"] == survivor]
    assert after and after[-1]["final"] and after[-1]["epoch"] == EPOCHS
    resumed = after[0]["resumed_at_epoch"]
    assert resumed >= victim["epoch"] - 1 >= 1, (resumed, victim)  # from a checkpoint, not 0
    assert [r["epoch"] for r in after] == list(range(resumed + 1, EPOCHS + 1))
    assert all(r["resumed_at_epoch"] == 0 for r in results if r["node"] == victim["node"])
    assert head not in {r["node"] for r in results}


@pytest.mark.ray
def test_lost_worker_pbt_run_keeps_exact_rows(
        tmp_path, synthetic_data, tiny_model_yaml) -> None:
    """PBT: the worker that wrote the first member checkpoint is killed mid-run.

    The run still ends with exactly G×P rows, one per (round, member); the last round runs on
    the surviving worker, and the loss costs a member at most one epoch trained again.
    """
    from yolo_ray.evolve.files import SIDECAR_NAME, read_evolve_csv

    population, rounds = 2, 5
    storage = tmp_path / "storage"
    with gpu_cluster() as cluster:
        head, workers = node_labels(cluster)
        nodes = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
        killer = NodeKiller(cluster, storage / "exp", dict(zip(workers, nodes)),
                            pattern="*/checkpoint_*/meta.json",
                            # The whole machine at once. Workers are kept across rounds, so
                            # a kept worker can die inside a member's reset: Ray reports that
                            # twice and Tune ended the member for good on the second report
                            # (4 of 24 runs before the scheduler had it counted once).
                            with_workers=True)
        killer.start()
        try:
            rc = main(evolve_args(synthetic_data, tiny_model_yaml, tmp_path / "runs", storage,
                                  cluster.address, "--strategy", "pbt", "--data-on-nodes",
                                  "--epochs", str(rounds), "--generations", str(rounds),
                                  "--interval", "1", "--population", str(population),
                                  "--max-failures", "3"))
        finally:
            killer.stop.set()
            killer.join()
    assert rc == 0
    victim = killer.victim
    assert victim is not None and victim["epoch"] >= 1, victim
    survivor = next(w for w in workers if w != victim["node"])

    run = tmp_path / "runs" / "exp"
    _, rows = read_evolve_csv(run / "evolve.csv")
    assert len(rows) == rounds * population
    assert len((run / "evolve.csv").read_text().splitlines()) == rounds * population + 1
    entries = [json.loads(line) for line in (run / SIDECAR_NAME).read_text().splitlines()]
    assert [e["row"] for e in entries] == list(range(rounds * population))
    cells = sorted((e["generation"], e["trial_id"].rsplit("-r", 1)[0]) for e in entries)
    members = sorted({m for _, m in cells})
    assert len(members) == population  # every (round, member) recorded exactly once:
    assert cells == sorted((g, m) for g in range(rounds) for m in members)
    results = tune_results(storage / "exp")
    for trial, res in results.items():
        assert res[-1]["epoch"] == rounds and head not in {r["node"] for r in res}
        after = [r["epoch"] for r in res
                 if r["round_end"] > victim["killed_at"] and r["node"] == survivor]
        # The loss costs a member at most one round (one epoch here) trained again: a member
        # that clones a parent whose newest checkpoint died with the node gets the parent's
        # previous one (seen in about one run in five, on the surviving node too: epochs
        # 2, 2, 3, ...). Rows stay exact either way (asserted above).
        assert after == sorted(after) and len(after) - len(set(after)) <= 1, (
            trial, [(r["node"], r["epoch"]) for r in res])
    # Not asserted: that a member resumes from its own last checkpoint. Seen once in five
    # runs: a member paused on the lost worker trained epoch 1 again from fresh weights on
    # the survivor (PBT then cloned a parent at the next round, so the rows stay exact).
    # The last round ran after the loss (the killed worker may finish an epoch or two first).
    assert {r["node"] for res in results.values() for r in res if r["epoch"] == rounds} == {
        survivor}
