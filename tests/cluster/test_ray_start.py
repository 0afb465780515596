"""`ray start` head + worker on this machine (token auth on), then `yolo-ray evolve --address`.

Hermetic: HOME is a temp folder holding a freshly generated token, every port is a free one,
the Ray temp dir is ours, and teardown ends only the processes whose command line names that
temp dir (other Ray clusters on the machine are left alone; no global `ray stop`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from yolo_ray.evolve.files import read_evolve_csv

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")
STARTED = "Ray runtime started."


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:  # all bound at once: n distinct ports
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(home: Path, cache: Path, mode: str | None = "token") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1", YOLO_RAY_DATA_CACHE=str(cache))
    if mode is not None:
        env["RAY_AUTH_MODE"] = mode
    return env


def _node_args(head_port: int, head: bool) -> list[str]:
    """One node's flags: free ports for everything Ray would otherwise take by default."""
    p = _free_ports(8)
    args = ["--num-cpus", "1", "--disable-usage-stats", "--block",
            "--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
            "--min-worker-port", "0", "--max-worker-port", "0",  # 0/0: the OS picks
            "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
            "--runtime-env-agent-port", str(p[4]), "--metrics-export-port", str(p[5])]
    if head:
        return ["--head", "--port", str(head_port), "--include-dashboard", "false",
                "--dashboard-port", str(p[6]), "--ray-client-server-port", str(p[7]), *args]
    return ["--address", f"127.0.0.1:{head_port}", *args]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start --block` in its own session; returns once the node reports it is up."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([RAY, "start", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while STARTED not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"ray start {args[:2]} failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc


def _our_pids(tag: str) -> list[int]:
    """Processes whose command line names our Ray temp dir (every process of our nodes)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if tag in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue  # exited meanwhile
    return pids


def _stop(procs: list[subprocess.Popen], tag: str) -> list[int]:
    """Stop our nodes only: SIGTERM to each `ray start --block` (it ends its node's processes),
    then SIGKILL to its session and to anything still naming our temp dir. Returns leftovers."""
    for proc in reversed(procs):  # worker first, then head
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    while (_our_pids(tag) or any(p.poll() is None for p in procs)) and time.time() < deadline:
        time.sleep(0.5)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    for pid in _our_pids(tag):  # processes that outlived their `ray start` (e.g. a raylet)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 30
    while _our_pids(tag) and time.time() < deadline:
        time.sleep(0.5)
    return _our_pids(tag)


def _evolve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", ("import sys; from yolo_ray.cli import main; "
           "sys.exit(main(sys.argv[1:]))"), "evolve", *args]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=480)


def test_ray_start_two_nodes_then_evolve(synthetic_data: Path, tiny_model_yaml: Path) -> None:
    # Short path: Ray's unix sockets live under the temp dir (108-byte socket path limit).
    tmp = Path(tempfile.mkdtemp(prefix="yr-", dir="/tmp"))
    home, cache, ray_tmp = tmp / "home", tmp / "node-cache", tmp / "ray"
    home.mkdir()
    env = _env(home, cache)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=60)
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert token
    head_port = _free_ports(1)[0]
    address = f"127.0.0.1:{head_port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([*_node_args(head_port, head=True), "--temp-dir", str(ray_tmp)],
                            env, tmp / "head.log"))
        procs.append(_start(_node_args(head_port, head=False), env, tmp / "worker.log"))
        # A client without RAY_AUTH_MODE=token is refused, even with the token file in HOME.
        refused = subprocess.run([RAY, "status", "--address", address],
                                 check=False, env=_env(home, cache, mode=None),
                                 capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr + refused.stdout
        done = _evolve(["--strategy", "classic", "--address", address,
                        "--storage", str(tmp / "storage"), "--data", str(synthetic_data),
                        "--cfg", str(tiny_model_yaml), "--img", "64", "--batch-size", "8",
                        "--workers", "0", "--epochs", "1", "--generations", "2",
                        "--cpus-per-trial", "1", "--max-concurrent", "2", "--device", "cpu",
                        "--no-tensorboard", "--verbose", "0", "--project", str(tmp / "runs"),
                        "--name", "run"], env)
        assert done.returncode == 0, done.stderr[-4000:]
        run = tmp / "runs" / "run"
        _, rows = read_evolve_csv(run / "evolve.csv")
        assert len(rows) == 2
        entries = [json.loads(x) for x in (run / "evolve_trials.jsonl").read_text().splitlines()]
        assert sorted(e["status"] for e in entries) == ["finished", "finished"]
        assert (tmp / "storage" / "run" / "evolve.csv").read_text() == \
            (run / "evolve.csv").read_text()  # published beside Tune's state
        # Shipped, not read from the driver's folder: one extracted copy, label caches in it.
        copies = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert len(copies) == 1
        assert (copies[0] / "files" / "labels" / "train.cache").is_file()
    finally:
        leftovers = _stop(procs, str(ray_tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    assert leftovers == [], f"processes of our nodes still running: {leftovers}"
    assert all(p.returncode is not None for p in procs)
