"""yolo-ray's rules for a Ray-prepared cluster config: GPUs, install, ray pin, storage, security."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator, NamedTuple

ERROR, WARNING = "error", "warning"
Finding = tuple[str, str]  # (ERROR or WARNING, message starting with the key path at fault)
Commands = list[tuple[str, str]]  # (key path such as "setup_commands[0]", shell command)

_STORAGE_URI = re.compile(r"(?:s3|gs|gcs|abfss?|az|hdfs)://\S+")
_MOUNT = re.compile(
    r"\bmount\b[^;&|]*-t\s*(?:nfs4?|efs|lustre|cifs|ceph|glusterfs)\b|\bmount\.(?:nfs4?|efs|lustre)\b"
    r"|\b(?:mountpoint|findmnt|gcsfuse|s3fs|mount-s3|goofys|blobfuse2?)\b")
_PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")
_YOLO_PKG = re.compile(r"yolo[-_]ray")
# `ray==X` / `ray[tune]==X`, but not `yolo-ray==X` or a path ending in /ray.
_RAY_PIN = re.compile(r"(?<![\w.\-/~])ray(?:\[[^\]]*\])?\s*==\s*([0-9][\w.*+!-]*)")
_RAY_IMAGE = re.compile(r"rayproject/ray(?:-ml|-llm)?:(\d+\.\d+\.\d+)")
_DASHBOARD_HOST = re.compile(r"--dashboard-host(?:=|\s+)(\S+)")
_ALL_INTERFACES = {"0.0.0.0", "::", "[::]", "*"}
_LOOPBACK = re.compile(r"^(?:127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$")
_SECRET = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
                     r"|(?i:aws_secret_access_key|aws_session_token|RAY_AUTH_TOKEN=)")

# NVIDIA instance families on EC2, and the GPU count of sizes that do not have exactly one.
_AWS_GPU_FAMILY = re.compile(r"^(?:p\d|g\d|gr\d)[a-z0-9-]*$")
_AWS_ONE_GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6"}  # every size not listed below has 1
_AWS_GPUS = {
    "g4dn.12xlarge": 4, "g4dn.metal": 8, "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8, "g6e.12xlarge": 4, "g6e.24xlarge": 4,
    "g6e.48xlarge": 8, "p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8, "p3dn.24xlarge": 8,
    "p4d.24xlarge": 8, "p4de.24xlarge": 8, "p5.48xlarge": 8, "p5e.48xlarge": 8, "p5en.48xlarge": 8,
}
_GCP_G2_GPUS = {"g2-standard-24": 2, "g2-standard-48": 4, "g2-standard-96": 8}  # other g2: 1

_WHY_SHARED = ("Ray Tune uploads checkpoints from every node into the run's storage, and a path "
               "that exists only on the head fails at the first upload from a worker")


class NodeCommands(NamedTuple):
    """The commands one kind of node runs: setup (inside Docker, if any) and initialization."""

    name: str
    setup: Commands
    init: Commands
    setup_key: str  # where a missing setup step belongs


@dataclass
class Cluster:
    """A cluster file as written and as Ray's prepare_config completed it."""

    raw: dict[str, Any]
    cfg: dict[str, Any]  # defaults merged, per-type min/max filled
    defaults: dict[str, Any]  # Ray's provider defaults, for command lists the file leaves out
    ray_version: str  # the Ray every node must run

    def __post_init__(self) -> None:
        self.ptype = str(self.cfg["provider"]["type"])
        self.head_type = str(self.cfg["head_node_type"])
        self.yolo: dict[str, Any] = (self.raw.get("metadata") or {}).get("yolo_ray") or {}

    def node_types(self) -> dict[str, dict[str, Any]]:
        return self.cfg["available_node_types"]

    def workers(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.node_types().items() if k != self.head_type}

    def commands(self, key: str) -> Commands:
        # prepare_config merges setup_commands into head/worker lists, so read the file's own.
        if key in self.raw:
            return [(f"{key}[{i}]", c) for i, c in enumerate(self.raw[key] or [])]
        default = self.defaults.get(key) or []
        return [(f"{key}[{i}] (Ray's {self.ptype} default)", c) for i, c in enumerate(default)]

    def typed(self, name: str, key: str) -> Commands:
        cmds = self.node_types()[name].get(key) or []
        return [(f"available_node_types.{name}.{key}[{i}]", c) for i, c in enumerate(cmds)]

    def _init(self, name: str) -> Commands:
        if "initialization_commands" in self.node_types().get(name, {}):
            return self.typed(name, "initialization_commands")
        return self.commands("initialization_commands")

    def nodes(self) -> list[NodeCommands]:
        """What the head and each worker type run (a type's own worker_setup_commands win)."""
        setup = self.commands("setup_commands")
        worker_setup = setup + self.commands("worker_setup_commands")
        out = [NodeCommands("head", setup + self.commands("head_setup_commands"),
                            self._init(self.head_type), "setup_commands")]
        for name, node in self.workers().items():
            if "worker_setup_commands" in node:
                out.append(NodeCommands(name, self.typed(name, "worker_setup_commands"),
                                        self._init(name),
                                        f"available_node_types.{name}.worker_setup_commands"))
            else:
                out.append(NodeCommands(name, worker_setup, self._init(name), "setup_commands"))
        if self.ptype == "local" and self.cfg.get("max_workers"):
            out.append(NodeCommands("worker nodes", worker_setup, self._init(""), "setup_commands"))
        return out


def instance(c: Cluster, node: dict[str, Any]) -> tuple[str, bool, int | None]:
    """(instance type, is a GPU type, GPU count when known) from a node type's node_config."""
    nc = node.get("node_config") or {}
    if c.ptype == "aws":
        itype = str(nc.get("InstanceType", ""))
        family = itype.split(".")[0]
        if not itype or not _AWS_GPU_FAMILY.match(family):
            return itype, False, 0 if itype else None
        one = 1 if family in _AWS_ONE_GPU_FAMILIES else None
        return itype, True, _AWS_GPUS.get(itype, one)
    if c.ptype == "gcp":
        mtype = str(nc.get("machineType", "")).rsplit("/", 1)[-1]
        accels = [a for a in nc.get("guestAccelerators") or [] if isinstance(a, dict)]
        n = sum(int(a.get("acceleratorCount", 1)) for a in accels)
        if n:
            return mtype, True, n
        per_vm = re.match(r"^a\d-\w+-(\d+)g$", mtype)  # a2-highgpu-4g, a3-highgpu-8g
        if per_vm or mtype.startswith("g2-"):
            return mtype, True, int(per_vm.group(1)) if per_vm else _GCP_G2_GPUS.get(mtype, 1)
        return mtype, False, 0
    return "", False, None


def check_node_types(c: Cluster) -> Iterator[Finding]:
    for name, node in c.node_types().items():
        key = f"available_node_types.{name}"
        yield from _min_max(c, name, key)
        yield from _node_config(c, node, key)
        if name != c.head_type:
            yield from _gpus(c, node, key)


def _min_max(c: Cluster, name: str, key: str) -> Iterator[Finding]:
    written = (c.raw.get("available_node_types") or {}).get(name) or {}
    lo, top = written.get("min_workers", 0), c.cfg.get("max_workers", 0)
    hi = written.get("max_workers", top)
    if lo > hi:
        yield ERROR, f"{key}: min_workers ({lo}) > max_workers ({hi})"
    elif hi > top and name != c.head_type:
        yield WARNING, f"{key}.max_workers: {hi} exceeds the global max_workers ({top})"


def _node_config(c: Cluster, node: dict[str, Any], key: str) -> Iterator[Finding]:
    nc = node.get("node_config") or {}
    need = {"aws": ("InstanceType", "g5.xlarge"), "gcp": ("machineType", "n1-standard-8")}
    if c.ptype in need and need[c.ptype][0] not in nc:
        yield ERROR, f"{key}.node_config: no {need[c.ptype][0]} (e.g. {need[c.ptype][1]})"
    if c.ptype == "gcp" and instance(c, node)[1]:
        sched = nc.get("scheduling") or {}
        items = sched if isinstance(sched, list) else [sched]  # Ray's examples use a list
        ohm = next((s["onHostMaintenance"] for s in items
                    if isinstance(s, dict) and "onHostMaintenance" in s), None)
        if ohm != "TERMINATE":
            yield ERROR, (f"{key}.node_config.scheduling.onHostMaintenance: GPU VMs need "
                          f"TERMINATE (GCE cannot live-migrate a GPU), got {ohm!r}")


def _gpus(c: Cluster, node: dict[str, Any], key: str) -> Iterator[Finding]:
    itype, is_gpu, known = instance(c, node)
    declared = (node.get("resources") or {}).get("GPU", 0)
    if (is_gpu or c.yolo.get("gpu") is True) and declared < 1:
        why = f"{itype} has {known}" if known else (
            f"{itype} is a GPU type" if is_gpu else "metadata.yolo_ray.gpu is true")
        yield ERROR, (f"{key}.resources: GPU worker type declares no GPUs ({why}); add "
                      f"\"GPU\": {known or 1} so one-GPU trials are scheduled here")
    elif known is not None and declared > known:
        yield ERROR, (f"{key}.resources: declares GPU: {declared} but {itype} has "
                      f"{known or 'no GPUs'}; "
                      "trials would be handed GPUs that do not exist")
    elif known and 0 < declared < known:
        yield WARNING, (f"{key}.resources: declares GPU: {declared} of the {known} on {itype}; "
                        "the rest stay idle")


def _pip_args(cmd: str) -> list[str]:
    """The argument text of every `pip install` in a shell command."""
    found = (_PIP_INSTALL.search(sub) for sub in re.split(r"&&|\|\||;|\n", cmd))
    return [m.string[m.end():] for m in found if m]


def check_install(c: Cluster) -> Iterator[Finding]:
    missing: dict[str, list[str]] = {}
    for n in c.nodes():
        if not any(_YOLO_PKG.search(args) for _, cmd in n.setup for args in _pip_args(cmd)):
            missing.setdefault(n.setup_key, []).append(n.name)
    for key, names in missing.items():
        yield ERROR, (f"{key}: nothing installs yolo-ray on {', '.join(names)}; add "
                      "`pip install -e ~/yolo-ray` (the file_mounts copy of this repository)")


def _same_version(pin: str, version: str) -> bool:
    if pin.endswith(".*"):
        return version == pin[:-2] or version.startswith(pin[:-1])
    try:
        from packaging.version import Version
        return Version(pin) == Version(version)
    except (ImportError, ValueError):
        return pin == version


def check_ray_version(c: Cluster) -> Iterator[Finding]:
    want = c.ray_version
    unpinned: dict[str, list[str]] = {}
    bad: dict[str, str] = {}
    for n in c.nodes():
        pins = [(where, v) for where, cmd in n.setup for args in _pip_args(cmd)
                for v in _RAY_PIN.findall(args)]
        if not pins:
            unpinned.setdefault(n.setup_key, []).append(n.name)
        bad.update({where: v for where, v in pins if not _same_version(v, want)})
    for key, names in unpinned.items():
        yield ERROR, (f"{key}: ray is not pinned on {', '.join(names)}; add "
                      f"\"ray[tune]=={want}\" to the pip install so every node runs the head's Ray")
    for where, v in bad.items():
        yield ERROR, (f"{where}: pins ray=={v} but the cluster must run ray {want} (the Ray that "
                      "runs `ray up` and the head); pin the same version everywhere")
    docker = c.raw.get("docker") or {}
    images = [(f"docker.{k}", docker.get(k)) for k in ("image", "head_image", "worker_image")]
    images += [(f"available_node_types.{n}.docker.worker_image", (t.get("docker") or {})
                .get("worker_image")) for n, t in c.node_types().items()]
    for where, image in images:
        tag = _RAY_IMAGE.search(str(image or ""))
        if tag and not _same_version(tag.group(1), want):
            yield ERROR, (f"{where}: {image} runs ray {tag.group(1)} but the cluster must run "
                          f"ray {want}")


def _mounts(cmd: str, path: str) -> bool:
    """Whether a command mounts shared storage at `path` or at one of its parents (not /x)."""
    if not _MOUNT.search(cmd):
        return False
    p = PurePosixPath(path)
    candidates = [p, *[q for q in p.parents if len(q.parts) > 2]]
    return any(re.search(re.escape(str(q)) + r"(?![\w.-])", cmd) for q in candidates)


def check_storage(c: Cluster) -> Iterator[Finding]:
    n, key = int(c.cfg.get("max_workers") or 0), "metadata.yolo_ray.storage"
    if n == 0:  # a single node shares its own disk
        return
    storage = c.yolo.get("storage")
    cmds = {node.name: [cmd for _, cmd in node.setup + node.init] for node in c.nodes()}
    if storage and _STORAGE_URI.fullmatch(storage):
        yield from _cloud_identity(c, storage)
    elif storage and storage.startswith(("/", "~/")):
        bare = [name for name, lst in cmds.items() if not any(_mounts(x, storage) for x in lst)]
        if bare:
            yield ERROR, (f"{key}: {storage} is a path, but no command mounts shared storage "
                          f"(NFS/EFS) there on {', '.join(bare)}; {_WHY_SHARED}")
    elif storage:
        yield ERROR, (f"{key}: {storage!r} is neither a cloud URI (s3://, gs://) nor an "
                      "absolute path on a shared mount")
    elif not (any(_STORAGE_URI.search(x) for lst in cmds.values() for x in lst)
              or all(any(_MOUNT.search(x) for x in lst) for lst in cmds.values())):
        yield ERROR, (f"{key}: no shared storage for a cluster of up to {n} worker nodes; "
                      f"{_WHY_SHARED}. Set it to an s3:// or gs:// URI (and pass the same to "
                      "`yolo-ray evolve --storage`) or mount EFS/NFS at one path on every node")


def _cloud_identity(c: Cluster, storage: str) -> Iterator[Finding]:
    """Workers upload checkpoints themselves, but Ray gives its cloud identity to the head only."""
    need = {("aws", "s3"): "IamInstanceProfile", ("gcp", "gs"): "serviceAccounts"}
    field_name = need.get((c.ptype, storage.split(":", 1)[0]))
    for name, node in c.workers().items() if field_name else ():
        if field_name not in (node.get("node_config") or {}):
            yield WARNING, (f"available_node_types.{name}.node_config.{field_name}: not set, so "
                            f"these workers may have no credentials to write {storage}")


def check_dashboard(c: Cluster) -> Iterator[Finding]:
    for where, cmd in c.commands("head_start_ray_commands"):
        if "ray start" not in cmd or "--head" not in cmd:
            continue
        m = _DASHBOARD_HOST.search(cmd)
        host = m.group(1).strip("'\"") if m else "127.0.0.1"  # Ray's default is localhost
        if host in _ALL_INTERFACES:
            yield ERROR, (f"{where}: --dashboard-host={host} serves the dashboard and its job API "
                          "(which runs any code) on every interface; use "
                          "--dashboard-host=127.0.0.1 and tunnel it with `ray dashboard`")
        elif not _LOOPBACK.match(host):
            yield WARNING, (f"{where}: --dashboard-host={host} is not localhost; prefer "
                            "127.0.0.1 and `ray dashboard` port-forwarding")


def check_security_group(c: Cluster) -> Iterator[Finding]:
    group = (c.cfg["provider"].get("security_group") or {}) if c.ptype == "aws" else {}
    for i, perm in enumerate(group.get("IpPermissions") or []):
        world = any(x.get("CidrIp") == "0.0.0.0/0" for x in perm.get("IpRanges") or []) or any(
            x.get("CidrIpv6") == "::/0" for x in perm.get("Ipv6Ranges") or [])
        ports = (perm.get("FromPort"), perm.get("ToPort"))
        if world and ports != (22, 22):
            yield ERROR, (f"provider.security_group.IpPermissions[{i}]: opens ports "
                          f"{ports[0]}-{ports[1]} to the internet; keep only SSH (22) public "
                          "and tunnel the dashboard with `ray dashboard`")


def check_auth(c: Cluster) -> Iterator[Finding]:
    """Ray 2.60 token auth: all nodes or none, and every node needs the same token file."""
    def token_mode(*keys: str) -> bool:
        return any("RAY_AUTH_MODE=token" in cmd for k in keys for _, cmd in c.commands(k))

    if not token_mode("setup_commands", "head_setup_commands", "head_start_ray_commands"):
        yield WARNING, ("head_start_ray_commands: token authentication is off, so anything that "
                        "reaches the head's ports can run code on the cluster; start Ray with "
                        "RAY_AUTH_MODE=token (docs/cluster.md)")
        return
    if c.cfg.get("max_workers") and not token_mode(
            "setup_commands", "worker_setup_commands", "worker_start_ray_commands"):
        yield ERROR, ("worker_start_ray_commands: the head uses RAY_AUTH_MODE=token but workers "
                      "do not, so they cannot join; start them with RAY_AUTH_MODE=token too")
    if not any("auth_token" in str(k) for k in c.cfg.get("file_mounts") or {}):
        yield ERROR, ("file_mounts: token auth is on but no node receives the token; add "
                      "\"~/.ray/auth_token\": \"~/.ray/auth_token\" (after `ray get-auth-token "
                      "--generate`)")


def check_secrets(c: Cluster) -> Iterator[Finding]:
    bad = [k for k, v in c.raw.items() if _SECRET.search(json.dumps({k: v}, default=str))]
    if "gcp_credentials" in (c.raw.get("provider") or {}):
        bad.append("provider.gcp_credentials")
    for key in bad:
        yield ERROR, (f"{key}: holds what looks like a credential; cluster files get shared and "
                      "synced, so use IAM roles / service accounts and `ray get-auth-token`")


def summarize(c: Cluster) -> str:
    """One line: provider, name, nodes with instance types and GPUs, storage."""
    provider = c.cfg["provider"]
    if c.ptype == "local":
        nodes = f"head {provider.get('head_ip')}, workers {provider.get('worker_ips')}"
    else:
        nodes = f"head {instance(c, c.node_types()[c.head_type])[0] or c.head_type}, workers: " + (
            ", ".join(f"{n} {instance(c, t)[0]} x{t.get('min_workers', 0)}-"
                      f"{t.get('max_workers')} ({(t.get('resources') or {}).get('GPU', 0)} GPU)"
                      for n, t in c.workers().items()) or "none")
    return (f"{c.ptype} cluster '{c.cfg.get('cluster_name')}' (max_workers "
            f"{c.cfg.get('max_workers')}, ray {c.ray_version}); {nodes}; "
            f"storage {c.yolo.get('storage', 'not declared')}")


RULES: tuple[Callable[[Cluster], Iterator[Finding]], ...] = (
    check_node_types, check_install, check_ray_version, check_storage, check_dashboard,
    check_security_group, check_auth, check_secrets,
)
