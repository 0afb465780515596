"""Joining a multi-node Ray cluster (ray.cluster_utils.Cluster on this machine)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yolo_ray.cli import main

ray = pytest.importorskip("ray")


@pytest.mark.ray
def test_multinode_without_shared_storage_is_refused(tmp_path, synthetic_data, tiny_model_yaml,
                                                     capsys) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        rc = main(["evolve", "--strategy", "classic", "--address", cluster.address,
                   "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml), "--img", "64",
                   "--epochs", "1", "--generations", "2", "--project", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "the cluster has 2 nodes but no --storage was given" in err
        assert not (tmp_path / "exp" / "evolve.csv").exists()  # nothing started
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_unreachable_address_fails_fast(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["evolve", "--strategy", "classic", "--address", f"127.0.0.1:{port}",
               "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml), "--img", "64",
               "--epochs", "1", "--generations", "1", "--project", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and f"--address 127.0.0.1:{port}: nothing answers there" in err
    assert not (tmp_path / "runs").exists()  # no run folder left behind


# ----------------------------------------------------------------------------- end to end
# A head without GPUs plus two workers with one fake GPU and one CPU each: the default of one
# GPU per trial puts every trial on a worker, one at a time per worker.
WORKER = {"num_cpus": 1, "num_gpus": 1}


@contextlib.contextmanager
def gpu_cluster(n_workers: int = 2) -> Iterator[Any]:
    """A Cluster (head: 1 CPU, no GPU) with `n_workers` fake-GPU workers; torn down after."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    try:
        for _ in range(n_workers):
            cluster.add_node(**WORKER)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def node_labels(cluster: Any) -> tuple[str, list[str]]:
    """The sidecar's node column for the head and for each worker (`<ip>/<node id[:8]>`)."""
    label = lambda n: f"{n.node_ip_address}/{n.node_id[:8]}"
    workers = [n for n in cluster.list_all_nodes() if n is not cluster.head_node]
    return label(cluster.head_node), [label(n) for n in workers]


def hidden_copy(tmp_path: Path, data_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the dataset that is renamed away right after the driver packs it."""
    from yolo_ray.cluster import shipping

    copy = tmp_path / "ds"
    shutil.copytree(data_yaml.parent, copy)
    real_ship = shipping.ship

    def ship_then_hide(data, weights=None):
        out = real_ship(data, weights)
        copy.rename(copy.with_name("moved-away"))  # trials can only read the shipped copy
        return out

    monkeypatch.setattr(shipping, "ship", ship_then_hide)
    return copy / data_yaml.name


def tune_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial's result.json lines, by trial folder (the trial id)."""
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line]
            for p in experiment.glob("*/result.json")}


def evolve_args(data: Path, cfg: Path, project: Path, storage: Path, address: str,
                *extra: str) -> list[str]:
    return ["evolve", "--address", address, "--storage", str(storage), "--data", str(data),
            "--cfg", str(cfg), "--img", "64", "--batch-size", "8", "--project", str(project),
            "--no-tensorboard", "--verbose", "0", *extra]


@pytest.mark.ray
@pytest.mark.parametrize("strategy, extra, rows", [
    ("classic", ("--epochs", "1", "--generations", "4"), 4),
    ("pbt", ("--epochs", "2", "--generations", "2", "--interval", "1", "--population", "4"), 8),
])
def test_evolution_on_two_gpu_workers_from_shipped_data(
        tmp_path, synthetic_data, tiny_model_yaml, monkeypatch, strategy, extra, rows) -> None:
    from yolo_ray.cluster.shipping import CACHE_ENV
    from yolo_ray.evolve.files import SIDECAR_NAME, read_evolve_csv

    cache = tmp_path / "node-cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))  # before the nodes start: their workers inherit it
    data = hidden_copy(tmp_path, synthetic_data, monkeypatch)
    storage = tmp_path / "storage"  # every node shares this machine's disk
    with gpu_cluster() as cluster:
        head, workers = node_labels(cluster)
        rc = main(evolve_args(data, tiny_model_yaml, tmp_path / "runs", storage,
                              cluster.address, "--strategy", strategy, *extra))
    assert rc == 0
    assert not data.exists() and (tmp_path / "moved-away").is_dir()

    run = tmp_path / "runs" / "exp"
    header, parsed = read_evolve_csv(run / "evolve.csv")  # parses every row or raises
    text = (run / "evolve.csv").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == rows + 1  # no torn last line
    assert len(parsed) == rows
    assert all(len(r.values) + len(r.hyp) == len(header) for r in parsed)
    entries = [json.loads(line) for line in (run / SIDECAR_NAME).read_text().splitlines()]
    recorded = [e for e in entries if e["row"] is not None]
    assert [e["row"] for e in recorded] == list(range(rows))
    assert all(e["status"] == "finished" for e in recorded)
    nodes = {e["node"] for e in recorded}
    assert head not in nodes and nodes <= set(workers), (nodes, head, workers)
    # A fake GPU has no CUDA behind it: Ray gave each trial a GPU id, the trainer chose CPU.
    assert {e["device"] for e in recorded} == {"cpu"}
    results = [r for res in tune_results(storage / "exp").values() for r in res]
    assert head not in {r["node"] for r in results} <= set(workers)
    if strategy == "classic":  # the first two trials start together, one per worker's GPU
        assert nodes == set(workers), (nodes, workers)
    # PBT members pause and resume on whichever worker's actor is free (through the shared
    # storage); on a loaded box one actor can serve every member, so no both-nodes check.
    copies = [p for p in cache.iterdir() if p.is_dir()]  # one extracted copy, shared by both
    assert len(copies) == 1 and (copies[0] / "data.yaml").is_file()
    used = {r["data"] for r in results if "data" in r}  # classic trials report their data
    assert all(u.startswith(str(cache)) for u in used) and (used or strategy == "pbt"), used
