"""Fault injection for tests: a JSON plan named by $YOLO_RAY_FAULTS; inert when it is unset."""

from __future__ import annotations

import errno as errno_codes
import json
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENV = "YOLO_RAY_FAULTS"
# Far above any tiny test model's needs, far below what a lowered RLIMIT_AS leaves free.
OOM_REQUEST_BYTES = 8 << 30
OOM_HEADROOM_BYTES = 256 << 20


@dataclass(frozen=True)
class Fault:
    """One planned fault: where (`point`), what (`action`) and for which trial/epoch/attempt.

    `trials` lists trial indices (None: any); `fraction` instead picks trials by a draw from
    `np.random.default_rng([seed, trial])` that also draws the epoch in [0, epochs);
    `attempts` lists the attempts that fault (None: every attempt, a permanent fault).
    Driver points match on `row` (evolve.csv row about to be written) or `round` (PBT).
    """

    point: str
    action: str
    trials: tuple[int, ...] | None = None
    fraction: float | None = None
    seed: int = 0
    epoch: int | None = None
    epochs: int = 1
    attempts: tuple[int, ...] | None = None
    row: int | None = None
    round: int | None = None
    errno: str = "ENOSPC"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fault:
        def ints(v: Any) -> tuple[int, ...] | None:
            return None if v is None else tuple(int(x) for x in v)
        return cls(str(d["point"]), str(d["action"]), ints(d.get("trials")),
                   d.get("fraction"), int(d.get("seed", 0)), d.get("epoch"),
                   int(d.get("epochs", 1)), ints(d.get("attempts")), d.get("row"),
                   d.get("round"), str(d.get("errno", "ENOSPC")))

    def drawn_epoch(self, trial: int) -> int | None:
        """The epoch at which `trial` faults (None: it does not)."""
        if self.fraction is not None:
            rng = np.random.default_rng([self.seed, trial])
            hit = rng.random() < self.fraction
            epoch = int(rng.integers(0, max(1, self.epochs)))
            return epoch if hit else None
        if self.trials is not None and trial not in self.trials:
            return None
        return 0 if self.epoch is None else int(self.epoch)


def plan_path() -> Path | None:
    """The plan file, or None in production (the variable is unset)."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def load_plan(path: Path) -> list[Fault]:
    """The faults of a plan file: {"faults": [...], "state_dir": optional}."""
    return [Fault.from_dict(d) for d in json.loads(path.read_text())["faults"]]


def _faults(point: str) -> list[Fault]:
    path = plan_path()
    if path is None:
        return []
    return [f for f in load_plan(path) if f.point == point]


def env_vars() -> dict[str, str]:
    """What Ray workers need to see the plan (runtime_env env_vars); empty when inert."""
    value = os.environ.get(ENV)
    return {ENV: value} if value else {}


# ---------------------------------------------------------------------------- trial side
def start_attempt(key: str) -> int:
    """Number this attempt of trial `key` (0, 1, …) with marker files beside the plan.

    Tune retries a trial in a fresh process, so the count must live on disk.
    """
    path = plan_path()
    if path is None:
        return 0
    folder = path.parent / "fault_state"
    folder.mkdir(exist_ok=True)
    n = 0
    while True:
        try:
            os.close(os.open(folder / f"{key}.attempt{n}", os.O_CREAT | os.O_EXCL))
            return n
        except FileExistsError:
            n += 1


def before_epoch(trial: int, attempt: int, epoch: int, model: Any) -> None:
    """Worker point `trial.epoch`: called before `epoch` trains; raise, poison or exhaust."""
    for f in _faults("trial.epoch"):
        if f.drawn_epoch(trial) != epoch or (f.attempts is not None and attempt not in f.attempts):
            continue
        if f.action == "raise":
            raise RuntimeError(f"injected fault: trial {trial} epoch {epoch} attempt {attempt}")
        if f.action == "nan":
            poison_weights(model)
        elif f.action == "oom":
            exhaust_memory()


def poison_weights(model: Any) -> None:
    """Every parameter becomes NaN: the next forward pass really yields a NaN loss."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def exhaust_memory() -> None:
    """A real allocation failure: cap the address space just above its use, then allocate.

    torch's allocator fails (RuntimeError 'can't allocate memory'); the cap is lifted again
    before the error propagates so the reused worker process stays healthy.
    """
    import torch

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + OOM_HEADROOM_BYTES, hard))
    try:
        block = torch.empty(OOM_REQUEST_BYTES, dtype=torch.uint8)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    del block
    raise AssertionError("exhaust_memory: an over-limit allocation succeeded")


# ---------------------------------------------------------------------------- driver side
def kill_self() -> None:
    """What a crash looks like: SIGKILL, no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)


def store_hook(point: str, row: int | None, path: Path, data: bytes) -> None:
    """EvolutionStore.fault_hook: points store.sidecar / store.csv / store.after_csv / store.yaml.

    Actions: `kill` (SIGKILL before the write), `tear` (write half of it, then SIGKILL),
    `errno` (raise OSError(errno) as a full or read-only disk would).
    """
    for f in _faults(point):
        if f.row is not None and row != f.row:
            continue
        if f.action == "kill":
            kill_self()
        elif f.action == "tear":
            with open(path, "ab") as out:
                out.write(data[: max(1, len(data) // 2)])
                out.flush()
                os.fsync(out.fileno())
            kill_self()
        elif f.action == "errno":
            code = getattr(errno_codes, f.errno)
            raise OSError(code, os.strerror(code), str(path))


def attach(store: Any) -> None:
    """Give `store` the fault hook when a plan is set (production: nothing changes)."""
    if plan_path() is not None:
        store.fault_hook = store_hook


def at_point(point: str, round_index: int | None = None) -> None:
    """Driver point without data (e.g. `pbt.exploit`): only the `kill` action applies."""
    for f in _faults(point):
        if (f.round is None or f.round == round_index) and f.action == "kill":
            kill_self()

