"""Joining a multi-node Ray cluster (ray.cluster_utils.Cluster on this machine)."""

from __future__ import annotations

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
