"""`yolo-ray cluster check`: shipped cluster files pass; broken copies fail naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

pytest.importorskip("ray")

from yolo_ray.cluster.check import CheckReport, check_cluster_config, format_report  # noqa: E402
from yolo_ray.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "cluster.yaml"
GCP = ROOT / "configs" / "cluster" / "gcp.yaml"
ONPREM = ROOT / "configs" / "cluster" / "onprem.yaml"
SHIPPED = [AWS, *sorted((ROOT / "configs" / "cluster").glob("*.yaml"))]
RAY = "2.60.0"  # the pin in the shipped files; broken copies are judged against it


def _check_copy(tmp_path: Path, src: Path, mutate: Callable[[dict[str, Any]], Any]) -> CheckReport:
    cfg = copy.deepcopy(yaml.safe_load(src.read_text()))
    mutate(cfg)
    path = tmp_path / src.name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return check_cluster_config(path, ray_version=RAY)


def _gpu_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["available_node_types"]["gpu_worker"]


def _replace_in(key: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(cfg: dict[str, Any]) -> None:
        cfg[key] = [cmd.replace(old, new) for cmd in cfg[key]]
    return mutate


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_cluster_files_pass(path: Path) -> None:
    # Judged against the installed ray: a ray upgrade must come with new pins in these files.
    report = check_cluster_config(path)
    assert report.errors == [], format_report(report)
    assert report.warnings == [], format_report(report)
    assert report.ok and str(path) in report.summary


def test_shipped_files_cover_three_providers() -> None:
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in SHIPPED}
    assert providers == {"aws", "gcp", "local"}


BROKEN: list[tuple[str, Path, Callable[[dict[str, Any]], Any], tuple[str, ...]]] = [
    ("typo-top-level", AWS, lambda c: c.__setitem__("max_worker", c.pop("max_workers")),
     ("unknown key 'max_worker' at top level", "did you mean 'max_workers'?")),
    ("typo-in-node-type", AWS, lambda c: _gpu_worker(c).__setitem__("min_worker", 1),
     ("unknown key 'min_worker' at available_node_types.gpu_worker", "'min_workers'")),
    ("typo-in-metadata", AWS, lambda c: c["metadata"]["yolo_ray"].__setitem__("storge", "x"),
     ("unknown key 'storge' at metadata.yolo_ray", "'storage'")),
    ("missing-node-config", AWS, lambda c: _gpu_worker(c).pop("node_config"),
     ("available_node_types.gpu_worker:", "'node_config'")),
    ("missing-instance-type", AWS, lambda c: _gpu_worker(c)["node_config"].pop("InstanceType"),
     ("available_node_types.gpu_worker.node_config", "InstanceType")),
    ("fractional-gpu-resource", AWS, lambda c: _gpu_worker(c)["resources"].update(GPU=0.5),
     ("available_node_types.gpu_worker.resources.GPU", "integer")),
    ("min-over-max", AWS, lambda c: _gpu_worker(c).update(min_workers=3, max_workers=2),
     ("available_node_types.gpu_worker", "min_workers (3) > max_workers (2)")),
    ("min-sum-over-global-max", AWS, lambda c: _gpu_worker(c).update(min_workers=9, max_workers=9),
     ("max_workers:", "min_workers")),
    ("bad-head-node-type", AWS, lambda c: c.__setitem__("head_node_type", "hed"),
     ("head_node_type", "'hed'")),
    ("gpu-worker-without-gpus", AWS, lambda c: _gpu_worker(c)["resources"].pop("GPU"),
     ("available_node_types.gpu_worker.resources", "declares no GPUs", "g5.xlarge")),
    ("more-gpus-than-the-instance", AWS, lambda c: _gpu_worker(c)["resources"].update(GPU=4),
     ("available_node_types.gpu_worker.resources", "GPU: 4", "g5.xlarge has 1")),
    ("cpu-type-under-gpu-metadata", AWS, lambda c: _gpu_worker(c).update(
        resources={"CPU": 2}, node_config={"InstanceType": "m5.large"}),
     ("available_node_types.gpu_worker.resources", "declares no GPUs", "metadata.yolo_ray.gpu")),
    ("gcp-gpu-worker-without-gpus", GCP, lambda c: _gpu_worker(c)["resources"].pop("GPU"),
     ("available_node_types.gpu_worker.resources", "declares no GPUs", "n1-standard-8 has 1")),
    ("gcp-gpu-without-terminate", GCP, lambda c: _gpu_worker(c)["node_config"].pop("scheduling"),
     ("available_node_types.gpu_worker.node_config.scheduling.onHostMaintenance", "TERMINATE")),
    ("setup-without-yolo-ray", AWS, _replace_in("setup_commands", "-e ~/yolo-ray ", ""),
     ("setup_commands:", "nothing installs yolo-ray", "gpu_worker")),
    ("type-override-without-yolo-ray", AWS, lambda c: _gpu_worker(c).__setitem__(
        "worker_setup_commands", ['pip install "ray[tune]==2.60.0"']),
     ("available_node_types.gpu_worker.worker_setup_commands", "nothing installs yolo-ray")),
    ("mismatched-ray-pin", AWS, _replace_in("setup_commands", "==2.60.0", "==2.59.0"),
     ("setup_commands[0]", "ray==2.59.0", "2.60.0")),
    ("unpinned-ray", AWS, _replace_in("setup_commands", ' "ray[tune]==2.60.0"', ""),
     ("setup_commands:", "ray is not pinned", "ray[tune]==2.60.0")),
    ("mismatched-docker-image", AWS, lambda c: c["docker"].update(image="rayproject/ray:2.59.0"),
     ("docker.image", "2.59.0")),
    ("dashboard-on-all-interfaces", AWS,
     _replace_in("head_start_ray_commands", "-host=127.0.0.1", "-host=0.0.0.0"),
     ("head_start_ray_commands[1]", "--dashboard-host=0.0.0.0")),
    ("ray-default-start-commands", AWS, lambda c: c.pop("head_start_ray_commands"),
     ("head_start_ray_commands[1] (Ray's aws default)", "0.0.0.0")),
    ("no-shared-storage", AWS, lambda c: c["metadata"]["yolo_ray"].pop("storage"),
     ("metadata.yolo_ray.storage", "no shared storage", "--storage")),
    ("storage-path-not-mounted", ONPREM, lambda c: c["setup_commands"].pop(0),
     ("metadata.yolo_ray.storage", "/mnt/yolo-ray/runs", "NFS")),
    ("storage-relative-path", ONPREM, lambda c: c["metadata"]["yolo_ray"].update(storage="runs"),
     ("metadata.yolo_ray.storage", "'runs'")),
    ("onprem-with-node-types", ONPREM, lambda c: c.__setitem__(
        "available_node_types", {"w": {"resources": {}, "node_config": {}}}),
     ("available_node_types:", "on-prem")),
    ("onprem-without-worker-ips", ONPREM, lambda c: c["provider"].pop("worker_ips"),
     ("provider.worker_ips", "required")),
    ("world-open-dashboard-port", AWS, lambda c: c["provider"].update(security_group={
        "GroupName": "yolo", "IpPermissions": [{"FromPort": 8265, "ToPort": 8265, "IpProtocol":
                                                "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
     ("provider.security_group.IpPermissions[0]", "8265")),
    ("workers-without-token-auth", AWS, lambda c: (
        _replace_in("worker_start_ray_commands", "RAY_AUTH_MODE=token ", "")(c),
        c["setup_commands"].pop(1)),
     ("worker_start_ray_commands", "RAY_AUTH_MODE=token")),
    ("token-auth-without-token-file", AWS, lambda c: c["file_mounts"].pop("~/.ray/auth_token"),
     ("file_mounts", "auth_token")),
    ("credential-in-file", AWS, lambda c: c["setup_commands"].append(
        "export AWS_SECRET_ACCESS_KEY=not-a-real-secret"),
     ("setup_commands", "credential")),
    ("unknown-provider", AWS, lambda c: c["provider"].update(type="awz"),
     ("provider.type", "awz")),
]


@pytest.mark.parametrize("src, mutate, needles", [b[1:] for b in BROKEN],
                         ids=[b[0] for b in BROKEN])
def test_broken_copy_fails_naming_the_key(tmp_path: Path, src: Path, mutate: Callable[..., Any],
                                          needles: tuple[str, ...]) -> None:
    report = _check_copy(tmp_path, src, mutate)
    assert not report.ok
    assert any(all(n in e for n in needles) for e in report.errors), format_report(report)


def test_single_node_needs_no_shared_storage(tmp_path: Path) -> None:
    def single_node(cfg: dict[str, Any]) -> None:
        cfg["max_workers"] = 0
        for name in ("gpu_worker", "gpu4_worker"):
            cfg["available_node_types"][name]["max_workers"] = 0
        cfg["metadata"]["yolo_ray"].pop("storage")
    assert _check_copy(tmp_path, AWS, single_node).errors == []


def test_token_auth_off_is_a_warning(tmp_path: Path) -> None:
    def no_auth(cfg: dict[str, Any]) -> None:
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            _replace_in(key, "RAY_AUTH_MODE=token ", "")(cfg)
        cfg["setup_commands"].pop(1)
    report = _check_copy(tmp_path, AWS, no_auth)
    assert report.errors == []
    assert any("token authentication is off" in w for w in report.warnings)


def test_workers_without_bucket_identity_warn(tmp_path: Path) -> None:
    report = _check_copy(tmp_path, AWS, lambda c: _gpu_worker(c)["node_config"].pop(
        "IamInstanceProfile"))
    assert report.errors == []
    assert any(w.startswith("available_node_types.gpu_worker.node_config.IamInstanceProfile")
               for w in report.warnings)


def test_all_schema_errors_are_reported_at_once(tmp_path: Path) -> None:
    def two_typos(cfg: dict[str, Any]) -> None:
        cfg["setup_comands"] = cfg.pop("setup_commands")
        cfg["idle_timeout"] = cfg.pop("idle_timeout_minutes")
    errors = _check_copy(tmp_path, AWS, two_typos).errors
    assert any("'setup_comands'" in e and "'setup_commands'" in e for e in errors)
    assert any("'idle_timeout'" in e and "'idle_timeout_minutes'" in e for e in errors)


def test_format_report_lists_errors_and_verdict(tmp_path: Path) -> None:
    report = _check_copy(tmp_path, AWS, lambda c: _gpu_worker(c)["resources"].pop("GPU"))
    text = format_report(report)
    assert text.splitlines()[0] == report.summary
    assert ("error: available_node_types.gpu_worker.resources: GPU worker type declares no GPUs"
            in text)
    assert text.splitlines()[-1].startswith("FAILED: 1 error(s)")
    assert format_report(check_cluster_config(AWS, ray_version=RAY)).endswith("OK: 0 error(s), "
                                                                              "0 warning(s)")


def test_non_mapping_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    assert check_cluster_config(path).errors[0].startswith("top level:")


@pytest.mark.parametrize("text", [None, "cluster_name: [unclosed\n"])
def test_missing_or_invalid_yaml_raises_config_error(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "cluster.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match="cluster"):
        check_cluster_config(path)
