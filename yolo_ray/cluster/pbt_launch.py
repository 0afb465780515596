"""`--strategy pbt`: GAPopulationBasedTraining on Ray Tune, resumable, ending in best.pt + schedule."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.schema import ALL_HYP_KEYS, Hyp, TrainSettings
from ..errors import ConfigError
from ..evolve.records import Row
from ..evolve.space import SearchSpace
from ..evolve.store import EvolutionStore
from .actor_parking import PROBE_S
from .callbacks import HPARAM_METRICS, TensorBoardCallback, trial_label
from .launch import (
    TUNE_ENV,
    base_hyp,
    build_space,
    check_inputs,
    connect,
    resolve_resources,
    scoped_env,
)
from .pbt_state import (
    LAG_ROUNDS,
    SCHEDULE_NAME,
    STATE_NAME,
    best_final_row,
    check_resumable,
    run_strategy,
    write_hyp_schedule,
)
from .request import EvolveRequest, EvolveSummary
from .rundir import load_run_file, save_run_file
from .trainable import METRIC

LOGGER = logging.getLogger("yolo_ray")
MIN_POPULATION = 4       # default population when the cluster has fewer slots
NUM_TO_KEEP = 4          # > 2 (ray#9036): a parent's checkpoint must outlive its clones' starts
# Asynchronous: a cohort parent may be LAG_ROUNDS + 1 rounds past the round a clone takes,
# with a pause save beside each round-end save when members take turns for workers.
NUM_TO_KEEP_ASYNC = 2 * (LAG_ROUNDS + 2)
BEST_NAME = "best.pt"


@dataclass(frozen=True)
class PBTSummary(EvolveSummary):
    """EvolveSummary plus the PBT outputs: the best member's weights and hyp schedule."""

    best_weights: Path | None = None
    hyp_schedule: Path | None = None
    population: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class PBTPlan:
    """A PBT run's shape: P members × G rounds of K epochs (one evolve.csv row per cell)."""

    population: int
    rounds: int
    interval: int

    @property
    def epochs(self) -> int:
        """Epochs every member trains (the LR schedule spans all of them)."""
        return self.rounds * self.interval

    @property
    def rows(self) -> int:
        """evolve.csv rows of a complete run."""
        return self.rounds * self.population


def plan_pbt(request: EvolveRequest, slots: int) -> PBTPlan:
    """G = --generations rounds of K = --interval epochs; P = --population or max(4, slots).

    Raises:
        ConfigError: interval < 1 or larger than --epochs, population < 2, or sidecar genes
            (freeze/prune cannot change within one member's training).
    """
    k = request.interval
    if k < 1:
        raise ConfigError(f"--interval must be >= 1 epoch, got {k}")
    if k > request.epochs:
        raise ConfigError(f"--interval {k} is larger than --epochs {request.epochs}: members "
                          "would never be compared; use an interval <= epochs")
    population = request.population or max(MIN_POPULATION, int(slots))
    if population < 2:
        raise ConfigError(f"--population {population}: PBT needs at least 2 members "
                          "(one to copy from, one to replace)")
    if request.evolve_freeze is not None or request.evolve_prune is not None:
        raise ConfigError("--evolve-freeze/--evolve-prune need --strategy classic: a PBT member "
                          "keeps one model for its whole training (freeze/prune apply to all)")
    return PBTPlan(population, request.generations, k)


def member_settings(request: EvolveRequest, plan: PBTPlan) -> TrainSettings:
    """Settings every member shares: G·K epochs, validation at round ends only, no files."""
    return request.base_settings().replace(epochs=plan.epochs, noval=True, patience=0)


def plain(settings: TrainSettings) -> dict[str, Any]:
    """TrainSettings as JSON-friendly values (Tune writes configs to params.json)."""
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(settings).items()}


# ---------------------------------------------------------------------------- run folder
def resumed_request(request: EvolveRequest) -> EvolveRequest:
    """The saved request of the run that `--resume` names (only address/verbosity may change).

    Raises:
        ConfigError: missing folder, or a folder another strategy made.
    """
    check_resumable(request.run_dir)
    saved, _ = load_run_file(request.run_dir)
    if saved.strategy != "pbt":
        raise ConfigError(f"--resume: {request.run_dir} was made with --strategy "
                          f"{saved.strategy}, not pbt")
    return saved.replace(resume=True, address=request.address or saved.address,
                         verbose=request.verbose, ship_data=request.ship_data)


def open_run(request: EvolveRequest, plan: PBTPlan) -> EvolutionStore:
    """Open the store; a new run also checks the folder is free and saves the run file."""
    run_dir = request.run_dir
    if not request.resume:
        found = run_strategy(run_dir) if run_dir.is_dir() else None
        if found is not None or (run_dir / STATE_NAME).exists():
            raise ConfigError(f"{run_dir} already holds a {found or 'pbt'} evolution; resume it "
                              "with --resume or choose a new --name")
    store = EvolutionStore(run_dir, tuple(base_hyp(request).keys()))
    if not request.resume:
        save_run_file(request.replace(population=plan.population), plan.rows)
    return store


# ---------------------------------------------------------------------------- Tune objects
def build_trainable(request: EvolveRequest) -> Any:
    """PBTTrainable with one slot's resources (identical requests, so actors are reused)."""
    from ray import tune

    from .pbt_trainable import PBTTrainable
    from .shipping import shipped_for

    shipped = shipped_for(request)  # with_parameters: one object-store copy, fetched per node
    cls = tune.with_parameters(PBTTrainable, data_blob=shipped) if shipped else PBTTrainable
    return tune.with_resources(cls, {"cpu": request.threads,
                                     "gpu": float(request.gpus_per_trial or 0.0)})


def build_scheduler(request: EvolveRequest, plan: PBTPlan, space: SearchSpace, hyp: Hyp,
                    store: EvolutionStore) -> Any:
    """The GA scheduler writing rows to `store` and its state to the run folder."""
    from .scheduler import GAPopulationBasedTraining

    # Members keep their workers across rounds everywhere. On a cluster a kept worker can die
    # with its node before Ray declares the node dead, so kept workers are also pinged after
    # each round and after any member error, and the silent ones replaced (actor_parking.py).
    return GAPopulationBasedTraining(space, hyp, plan.interval, seed=request.seed, store=store,
                                     state_path=request.run_dir / STATE_NAME,
                                     keep_workers=True, asynchronous=request.pbt_async,
                                     probe_workers_s=0.0 if request.address is None else PROBE_S)


def build_pbt_tuner(request: EvolveRequest, plan: PBTPlan, store: EvolutionStore,
                    trainable: Any = None) -> Any:
    """A new Tuner, or Tuner.restore for --resume (the scheduler reloads pbt_state.json).

    `trainable` replaces PBTTrainable (bench/scale.py's sleeping stand-in); None trains.
    """
    from ray import tune

    from .pbt_trainable import DEVICE_POLICY_KEY, INTERVAL_KEY, SETTINGS_KEY
    from .progress import ProgressCallback
    from .scheduler import MEMBER_KEY
    from .tune_logs import progress_printers, trial_loggers
    from .tuner import trial_dirname, trial_name

    trainable = build_trainable(request) if trainable is None else trainable
    if request.resume:
        if tune.Tuner.can_restore(request.experiment_path):
            LOGGER.info(f"evolve: restoring the PBT run from {request.experiment_path}")
            return tune.Tuner.restore(request.experiment_path, trainable=trainable,
                                      resume_unfinished=True, resume_errored=True)
        _restart_if_nothing_ran(request, store)
    scheduler = build_scheduler(request, plan, build_space(request), base_hyp(request), store)
    verbose = 0 if request.verbose < 2 else 1
    callbacks: list[Any] = [*trial_loggers(), *progress_printers(verbose),
                            ProgressCallback(store, plan.rows, request.max_concurrent)]
    if request.tensorboard:
        callbacks.append(MemberTensorBoard(request.tb_dir, store))
    return tune.Tuner(
        trainable,
        param_space={MEMBER_KEY: tune.grid_search(list(range(plan.population))),
                     SETTINGS_KEY: plain(member_settings(request, plan)),
                     INTERVAL_KEY: plan.interval, DEVICE_POLICY_KEY: request.device_policy},
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=1, reuse_actors=True,
                                    trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=request.experiment_name, storage_path=request.storage_path,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=NUM_TO_KEEP_ASYNC if request.pbt_async else NUM_TO_KEEP,
                checkpoint_at_end=True),
            failure_config=tune.FailureConfig(max_failures=request.max_failures),
            callbacks=callbacks, verbose=verbose),
    )


def _restart_if_nothing_ran(request: EvolveRequest, store: EvolutionStore) -> None:
    """Killed before Tune saved its state: start over if no row was written yet."""
    if len(store.rows()):
        raise ConfigError(f"--resume: {request.experiment_path} has no Tune state to restore "
                          f"but {store.csv_path} has rows; start a new run")
    (request.run_dir / STATE_NAME).unlink(missing_ok=True)
    LOGGER.warning("evolve: no Tune state to restore; starting the PBT run from the beginning")


class MemberTensorBoard(TensorBoardCallback):
    """The evolve TensorBoard callback, with HParams from PBT's top-level hyp keys."""

    def _write_hparams(self, trial: Any) -> None:
        from torch.utils.tensorboard.summary import hparams

        result, config = trial.last_result or {}, trial.config or {}
        if METRIC not in result:
            return
        genes: dict[str, Any] = {k: float(v) for k, v in config.items() if k in ALL_HYP_KEYS}
        genes["status"] = "finished" if result.get("final") else "stopped"
        metrics = {tag: float(result.get(key, math.nan)) for tag, key in HPARAM_METRICS.items()}
        w = self._writer(trial_label(trial))
        for summary in hparams(genes, metrics):
            w.file_writer.add_summary(summary)
        w.flush()


# ---------------------------------------------------------------------------- results
def save_best_weights(grid: Any, best: Row, out: Path) -> Path | None:
    """Copy the best member's final weights (weights.pt in its last checkpoint) to `out`."""
    from ..train.checkpoint import load_checkpoint, save_checkpoint
    from .pbt_trainable import WEIGHTS_FILE

    tune_id = str(best.meta.get("trial_id", "")).rsplit("-m", 1)[0]
    for result in grid:
        if result.metrics.get("trial_id") != tune_id or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as folder:
            path = Path(folder) / WEIGHTS_FILE
            if not path.is_file():
                break
            return save_checkpoint(out, load_checkpoint(path))
    LOGGER.warning(f"evolve: no final weights for trial {tune_id}; {out} not written")
    return None


def summarize(request: EvolveRequest, plan: PBTPlan, store: EvolutionStore, grid: Any,
              t0: float) -> PBTSummary:
    """best.pt, hyp_schedule.yaml, evolve.png and the summary of the run folder."""
    from ..errors import StoreError
    from ..evolve.plot import plot_evolve

    rows = store.rows()
    best = best_final_row(rows)
    weights = schedule = plot = None
    complete = len(rows) >= plan.rows
    if best is not None:
        schedule = write_hyp_schedule(request.run_dir / SCHEDULE_NAME, rows, best.index,
                                      plan.interval)
        if complete:
            weights = save_best_weights(grid, best, request.run_dir / "weights" / BEST_NAME)
        try:
            plot = plot_evolve(store.csv_path, log=LOGGER.info)
        except StoreError as e:
            LOGGER.warning(f"evolve: no plot: {e}")
    if not complete:
        LOGGER.warning(f"evolve: stopped at {len(rows)}/{plan.rows} rows; continue with: "
                       f"yolo-ray evolve --resume {request.run_dir}")
    failed = sum(1 for r in grid if r.error is not None) if grid is not None else 0
    return PBTSummary(
        run_dir=request.run_dir, rows=len(rows), trials=plan.population, failed=failed,
        best_fitness=None if best is None else best.fitness,
        best_row=None if best is None else best.index,
        best_hyp={} if best is None else dict(best.hyp), evolve_csv=store.csv_path,
        hyp_yaml=store.yaml_path if store.yaml_path.exists() else None, plot=plot,
        tb_dir=request.tb_dir if request.tensorboard else None, wall_s=time.time() - t0,
        complete=complete, best_weights=weights, hyp_schedule=schedule,
        population=plan.population, rounds=plan.rounds)


# ---------------------------------------------------------------------------- entry point
def run_pbt(request: EvolveRequest) -> EvolveSummary:
    """Population-based evolution: P members, G rounds of K epochs, G×P evolve.csv rows.

    A resumed run (request.resume) restores Tune's trials and the scheduler's saved round
    and finishes with exactly G×P rows. Returns a PBTSummary (an EvolveSummary).

    Raises:
        YoloRayError: bad input (before Ray starts where possible).
    """
    import ray

    t0 = time.time()
    if request.resume:
        request = resumed_request(request)
    check_inputs(request)
    plan_pbt(request, 1)  # the input checks that need no cluster, before Ray starts
    started = connect(request)
    store = None
    try:
        resolved = resolve_resources(request, ray.cluster_resources())
        plan = plan_pbt(resolved, resolved.max_concurrent)
        store = open_run(resolved, plan)
        from . import faults

        faults.attach(store)  # tests only: inert unless $YOLO_RAY_FAULTS names a plan
        LOGGER.info(f"evolve: PBT with {plan.population} members x {plan.rounds} rounds of "
                    f"{plan.interval} epoch(s); {resolved.max_concurrent} concurrent slot(s)")
        if plan.epochs != request.epochs:
            LOGGER.warning(f"evolve: each member trains {plan.rounds} x {plan.interval} = "
                           f"{plan.epochs} epochs (--epochs {request.epochs} only bounds "
                           "--interval)")
        with scoped_env(**TUNE_ENV):
            grid = build_pbt_tuner(resolved, plan, store).fit()
        if store.write_error is not None:  # Tune swallowed it; the scheduler stopped the run
            raise store.write_error
        return summarize(resolved, plan, store, grid, t0)
    finally:
        if store is not None:
            store.close()
        if started:
            ray.shutdown()
