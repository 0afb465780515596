"""`yolo-ray cluster check [FILE]`: offline validation of a Ray cluster launcher file."""

from __future__ import annotations

import argparse

from . import args_for, command


@args_for("cluster")
def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("check",), help="check: validate a cluster yaml offline")
    p.add_argument("file", nargs="?", default="cluster.yaml", help="cluster launcher yaml")


@command("cluster", "cluster tools (check: validate a cluster.yaml with Ray's schema and ours)")
def cluster_cmd(a: argparse.Namespace) -> int:
    from ..cluster.check import check_cluster_config, format_report

    report = check_cluster_config(a.file)
    print(format_report(report))
    return 0 if report.ok else 1
