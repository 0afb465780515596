"""Run an evolution on Ray Tune: check inputs, connect, build (or restore) the Tuner, summarise."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.load import load_data_config, resolve_model_cfg
from ..config.schema import Hyp
from ..errors import ConfigError
from ..evolve.files import read_evolve_csv
from ..evolve.ga import GeneticAlgorithm
from ..evolve.space import (
    SearchSpace,
    load_search_space,
    with_freeze_gene,
    with_prune_gene,
)
from ..evolve.store import EvolutionStore
from . import faults
from .request import EvolveRequest, EvolveSummary
from .rundir import load_run_file, save_run_file

LOGGER = logging.getLogger("yolo_ray")
# No AutoAnchor in our trainer: evolve as YOLOv5's --noautoanchor, without the anchors gene.
DROPPED_GENES = ("anchors",)


# ---------------------------------------------------------------------------- pure set-up
def build_space(request: EvolveRequest) -> SearchSpace:
    """The meta file's genes minus `anchors`, plus --evolve-freeze / --evolve-prune genes."""
    space = load_search_space(request.meta).without(*DROPPED_GENES)
    if request.evolve_freeze is not None:
        space = with_freeze_gene(space, int(request.evolve_freeze[0]),
                                 int(request.evolve_freeze[1]))
    if request.evolve_prune is not None:
        space = with_prune_gene(space, float(request.evolve_prune[0]),
                                float(request.evolve_prune[1]))
    return space


def base_hyp(request: EvolveRequest) -> Hyp:
    """The run's hyp without the genes we never evolve (anchors)."""
    return Hyp.from_mapping({k: v for k, v in request.hyp.as_dict().items()
                             if k not in DROPPED_GENES}, "<evolve hyp>")


def base_extras(request: EvolveRequest) -> dict[str, float]:
    """Starting values of the sidecar genes: the run's --freeze/--prune, else the midpoint.

    Mutation is multiplicative, so a start of 0 could never move: the midpoint is used then.
    """
    out: dict[str, float] = {}
    if request.evolve_freeze is not None:
        f_lo, f_hi = request.evolve_freeze
        first = request.freeze[0] if request.freeze else 0
        start = first if isinstance(first, int) and f_lo <= first <= f_hi and first > 0 else None
        mid = min(f_hi, max(1, round((f_lo + f_hi) / 2)))
        out["freeze"] = float(start if start is not None else mid)
    if request.evolve_prune is not None:
        p_lo, p_hi = request.evolve_prune
        amount = request.prune_amount
        out["prune"] = float(amount if p_lo <= amount <= p_hi and amount > 0 else (p_lo + p_hi) / 2)
    return out


def build_ga(request: EvolveRequest, warn: bool = True) -> GeneticAlgorithm:
    """The GA for this request; warns about genes stuck at 0."""
    ga = GeneticAlgorithm(build_space(request), base_hyp(request), seed=request.seed,
                          parent_method=request.parent,  # type: ignore[arg-type]
                          base_extras=base_extras(request))
    if warn and ga.zero_genes:
        LOGGER.warning(f"evolve: gene(s) {', '.join(ga.zero_genes)} start at 0 and cannot "
                       "move under multiplicative mutation; give them a non-zero start")
    return ga


def check_inputs(request: EvolveRequest) -> None:
    """Fail early and clearly (before Ray starts) on bad paths; the request checked its values."""
    load_data_config(request.data)
    if request.cfg:
        resolve_model_cfg(request.cfg)
    if request.weights and not Path(request.weights).is_file():
        raise ConfigError(f"--weights {request.weights}: file not found")
    if not request.cfg and not request.weights:
        raise ConfigError("evolve needs --cfg or --weights (the start every trial trains from)")
    if request.seed_csv:
        read_evolve_csv(request.seed_csv)  # StoreError naming a malformed line, nothing written
    if request.address:
        _check_reachable(request.address)  # before a run folder is created


@dataclass(frozen=True)
class PreparedRun:
    """Everything the driver needs besides Ray: the GA, the store and the row target."""

    request: EvolveRequest
    ga: GeneticAlgorithm
    store: EvolutionStore
    target_rows: int


def prepare_run(request: EvolveRequest) -> PreparedRun:
    """Validate inputs, open (or resume) the store, seed it, fix and save the row target.

    Raises:
        YoloRayError: any bad input, before Ray is started.
    """
    check_inputs(request)
    ga = build_ga(request)
    store = EvolutionStore(request.run_dir, ga.hyp_keys)  # validates an existing evolve.csv
    if request.resume:
        _, target = load_run_file(request.run_dir)
        return PreparedRun(request, ga, store, target)
    if request.seed_csv:
        added = store.seed_from_csv(request.seed_csv, drop=DROPPED_GENES)
        LOGGER.info(f"evolve: seeded {added} row(s) from {request.seed_csv}")
    target = len(store.rows()) + request.generations
    save_run_file(request, target)
    return PreparedRun(request, ga, store, target)


# ---------------------------------------------------------------------------- Ray
def connect(request: EvolveRequest) -> bool:
    """Start an embedded Ray (dashboard off) or join `--address`; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = request.verbose < 2
    # Passive OpenMP waits: spinning torch threads starve each other when several CPU trials
    # share a node (measured 7-10x slower with the default policy on a loaded 2-core box).
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    env.update(faults.env_vars())  # a test's fault plan reaches workers on any node
    common: dict[str, Any] = {"log_to_driver": not quiet,
                              "logging_level": logging.WARNING if quiet else logging.INFO,
                              "runtime_env": {"env_vars": env}}
    if request.address:
        _check_reachable(request.address)
        try:
            ray.init(address=request.address, **common)
        except (ConnectionError, RuntimeError) as e:  # incl. Ray's AuthenticationError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"--address {request.address}: cannot join the Ray cluster: {first} "
                "(is `ray start --head` running there, and for token authentication is "
                "RAY_AUTH_MODE=token with the cluster's token in ~/.ray/auth_token?)") from None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if request.storage is None and len(nodes) > 1:
            ray.shutdown()
            raise ConfigError(
                f"--address {request.address}: the cluster has {len(nodes)} nodes but no "
                "--storage was given; trial checkpoints must reach every node, so pass a "
                "shared --storage (s3://…, gs://… or a path mounted on every node)")
        if request.storage is None:
            LOGGER.warning("evolve: joined a cluster without --storage: fine while it has one "
                           "node; pass a shared --storage before adding workers")
    else:
        # address="local": always a fresh embedded Ray. With None, ray.init would silently join
        # whatever `ray start` cluster /tmp/ray/ray_current_cluster names on this machine.
        ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", **common)
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on HOST:PORT nothing listens on (ray.init would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if address in ("auto", "local") or "://" in address or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: nothing answers there ({e.strerror or e}); "
                          "start the head with `ray start --head --port PORT` or use "
                          "--address auto on the head node") from None


def resolve_resources(request: EvolveRequest, cluster: dict[str, float]) -> EvolveRequest:
    """Fill GPUs/CPUs per trial, loader workers and the number of concurrent slots.

    GPUs per trial default to 1 when the cluster has GPUs, else CPU slots of one CPU each;
    slots = GPUs // gpus_per_trial (or CPUs // cpus_per_trial), unless --max-concurrent.

    Raises:
        ConfigError: an embedded (local) Ray cannot ever fit one trial.
    """
    total_gpus, total_cpus = float(cluster.get("GPU", 0.0)), int(cluster.get("CPU", 1))
    gpus = request.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 else 0.0
    cpu_slots = lambda c: max(1, total_cpus // max(1, c))
    if gpus > 0:
        gpu_slots = max(1, math.floor(total_gpus / gpus + 1e-9))
        cpus = request.cpus_per_trial or max(1, min(8, total_cpus // gpu_slots))
        slots = min(gpu_slots, cpu_slots(cpus))
    else:
        cpus = request.cpus_per_trial or 1
        slots = cpu_slots(cpus)
    if request.address is None and (gpus > total_gpus or cpus > total_cpus):
        raise ConfigError(f"a trial asks for {gpus:g} GPU(s) and {cpus} CPU(s) but this machine "
                          f"has {total_gpus:g} GPU(s) and {total_cpus} CPU(s)")
    slots = request.max_concurrent or slots
    workers = request.workers if request.workers is not None else min(8, cpus - 1)
    return request.replace(gpus_per_trial=float(gpus), cpus_per_trial=int(cpus),
                           max_concurrent=int(slots), workers=int(workers))


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """Set environment variables for a block (Tune reads these when fit() starts)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Trials keep the driver's working directory (relative paths in user yamls keep working);
# our TensorBoard callback replaces Tune's own logger files' TensorBoard copy.
TUNE_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def quiet_tune_env(verbose: int) -> dict[str, str]:
    """Below --verbose 2: no Tune banner (the new output engine prints it even at verbose=0)
    and no traceback per failed attempt (the sidecar and one log line carry the reason)."""
    return {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"} if verbose < 2 else {}


# ---------------------------------------------------------------------------- entry points
def run_evolution(request: EvolveRequest) -> EvolveSummary:
    """Run `request` with its strategy: classic (this module) or pbt (pbt_launch)."""
    if request.strategy == "pbt":
        from .pbt_launch import run_pbt

        return run_pbt(request)
    return run_classic(request)


def run_classic(request: EvolveRequest) -> EvolveSummary:
    """YOLOv5's classic evolution: G trials through EvolveSearcher, one row each."""
    import ray

    from .tuner import build_classic_tuner, reconcile_results, summarize

    t0 = time.time()
    prepared = prepare_run(request)
    if len(prepared.store.rows()) >= prepared.target_rows:
        LOGGER.info(f"evolve: {request.run_dir} already holds its {prepared.target_rows} rows")
        try:
            return summarize(prepared, t0)
        finally:
            prepared.store.close()
    started = connect(request)
    try:
        resolved = resolve_resources(request, ray.cluster_resources())
        LOGGER.info(f"evolve: {resolved.max_concurrent} concurrent trial(s), "
                    f"{resolved.gpus_per_trial:g} GPU + {resolved.cpus_per_trial} CPU each; "
                    f"{prepared.target_rows - len(prepared.store.rows())} row(s) to go")
        if request.tensorboard:
            LOGGER.info(f"evolve: view with: tensorboard --logdir {request.run_dir}")
        quiet = quiet_tune_env(request.verbose)
        with scoped_env(**TUNE_ENV, **quiet):
            tuner = build_classic_tuner(prepared, resolved)
            grid = tuner.fit()
        reconcile_results(prepared, grid)
        return summarize(prepared, t0, grid)
    finally:
        prepared.store.close()
        if started:
            ray.shutdown()
