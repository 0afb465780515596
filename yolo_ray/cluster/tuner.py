"""The classic strategy's Tune objects (searcher, limiter, scheduler, callbacks) and its summary."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from ..errors import StoreError
from ..evolve.plot import plot_evolve
from .callbacks import (
    CheckpointCleanupCallback,
    FailureReasonCallback,
    TensorBoardCallback,
)
from . import faults
from .progress import ProgressCallback
from .request import EvolveRequest, EvolveSummary
from .searcher import EvolveSearcher
from .tune_failures import CountFailuresOnce
from .tune_logs import progress_printers, trial_loggers
from .trainable import (
    METRIC,
    MODE,
    TIME_ATTR,
    evolve_trial,
    result_values,
    suggestion_from_config,
)
from .trial_retirement import RetireRecordedTrials
from .worker_starts import LeaveStartingTrials

if TYPE_CHECKING:
    from .launch import PreparedRun

LOGGER = logging.getLogger("yolo_ray")


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default embeds every parameter)."""
    return str(trial.trial_id)


def trial_name(trial: Any) -> str:
    """`t0003` style names from the GA's trial index."""
    index = trial.config.get("trial_index") if isinstance(trial.config, dict) else None
    return f"t{int(index):04d}" if index is not None else str(trial.trial_id)


def build_scheduler(request: EvolveRequest) -> Any:
    """FIFO, or ASHA over finished epochs (`--early-stop asha`); metric stated here once."""
    if request.early_stop == "asha" and request.epochs > 1:
        scheduler: Any = _ASHA(time_attr=TIME_ATTR, metric=METRIC, mode=MODE,
                               max_t=request.epochs, grace_period=max(1, request.epochs // 3),
                               reduction_factor=3)
    else:
        scheduler = _FIFO()
    scheduler.keep_finished = max(0, int(request.tune_keep_finished))
    return scheduler


class _FIFO(RetireRecordedTrials, LeaveStartingTrials, CountFailuresOnce, FIFOScheduler):
    """FIFO; a worker dying during a reused worker's reset costs one retry, not the trial;
    a reused worker goes to a trial whose own is not starting; recorded trials retire."""


class _ASHA(RetireRecordedTrials, LeaveStartingTrials, CountFailuresOnce, ASHAScheduler):
    """ASHA; a worker dying during a reused worker's reset costs one retry, not the trial;
    a reused worker goes to a trial whose own is not starting; recorded trials retire."""


def build_trainable(request: EvolveRequest) -> Any:
    """`evolve_trial` with the resolved request in Ray's object store and its resources."""
    from .shipping import shipped_for

    resources = {"cpu": request.threads, "gpu": float(request.gpus_per_trial or 0.0)}
    shipped = shipped_for(request)  # with_parameters: one object-store copy, fetched per node
    extra = {"data_blob": shipped} if shipped is not None else {}
    return tune.with_resources(tune.with_parameters(evolve_trial, request=request, **extra),
                               resources)


def can_restore(experiment_path: str) -> bool:
    """Tune state to restore: tuner.pkl plus at least one experiment snapshot.

    A driver killed before its first snapshot leaves only tuner.pkl; the run then starts a
    fresh Tuner over the same store (rows already there count towards the target).
    """
    if not tune.Tuner.can_restore(experiment_path):
        return False
    try:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(experiment_path)
        infos = fs.get_file_info(pafs.FileSelector(path))
    except (OSError, ValueError):
        return True  # let Tune decide (and explain) for storage we cannot list
    return any(Path(i.path).name.startswith("experiment_state") for i in infos)


def limiter_size(slots: int) -> int:
    """Trials the limiter lets exist at once: the slots plus a few waiting for one.

    Tune (2.60) keeps a finished trial's actor for reuse only when a trial is already
    waiting for its resources; with exactly `slots` trials none is, so every trial started
    a new worker process (bench/scale.py: 64 slots ran at most 9 trials at once on 2 cores).
    The waiting trials are suggested one trial's time early, with the rows known then; below
    8 slots Tune's one always-kept actor suffices and suggestions stay as late as YOLOv5's.
    """
    slots = max(1, int(slots))
    return slots + slots // 8


def build_classic_tuner(prepared: PreparedRun, request: EvolveRequest,
                        trainable: Any = None) -> tune.Tuner:
    """A new Tuner, or the restored one for --resume (searcher state comes back with it).

    `trainable` replaces `evolve_trial` (bench/scale.py runs a sleeping stand-in through
    the same searcher, limiter and callbacks); None trains for real.
    """
    trainable = build_trainable(request) if trainable is None else trainable
    if request.resume and can_restore(request.experiment_path):
        LOGGER.info(f"evolve: restoring Tune state from {request.experiment_path}")
        # Errored trials stay errored: their failure is recorded and a replacement ran.
        return tune.Tuner.restore(request.experiment_path, trainable=trainable,
                                  resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    searcher = EvolveSearcher(prepared.ga, request.run_dir, prepared.target_rows)
    faults.attach(searcher.store)  # tests only: inert unless $YOLO_RAY_FAULTS names a plan
    limiter = ConcurrencyLimiter(searcher, max_concurrent=limiter_size(request.max_concurrent))
    verbose = 0 if request.verbose < 2 else 1
    callbacks: list[Any] = [*trial_loggers(), *progress_printers(verbose),
                            FailureReasonCallback(searcher), CheckpointCleanupCallback(),
                            ProgressCallback(searcher.store, prepared.target_rows,
                                             request.max_concurrent)]
    if request.tensorboard:
        callbacks.append(TensorBoardCallback(request.tb_dir, searcher.store))
    return tune.Tuner(
        trainable,
        param_space={},  # the searcher owns the space; constants only here
        tune_config=tune.TuneConfig(
            search_alg=limiter, scheduler=build_scheduler(request), num_samples=-1,
            reuse_actors=request.reuse_actors, trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=request.experiment_name, storage_path=request.storage_path,
            # Trials checkpoint every epoch; the newest is all a retry needs.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=request.max_failures),
            callbacks=callbacks, verbose=verbose),
    )


def reconcile_results(prepared: PreparedRun, grid: Any) -> int:
    """Record trials that finished but never reached the store (e.g. a crash in between).

    Idempotent: the store skips trial ids it already has. Returns rows added.
    """
    before = len(prepared.store.rows())
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        values = result_values(metrics)
        if not metrics.get("final") or values is None or "trial_index" not in config:
            continue
        if len(prepared.store.rows()) >= prepared.target_rows:
            break
        prepared.ga.tell(prepared.store, suggestion_from_config(config),
                         str(metrics.get("trial_id")), "finished", values,
                         node=metrics.get("node"), device=metrics.get("device"),
                         start=config.get("suggested_at"), end=time.time())
    return len(prepared.store.rows()) - before


def trial_timings(grid: Any, entries: list[dict[str, Any]]) -> tuple[dict[str, float], ...]:
    """Per trial: suggested, trial start, loop start/end, seconds spent checkpointing (Tune
    results) and recorded (sidecar); for the trials Tune still holds at the end, i.e. all of
    them up to `tune_keep_finished` trials (trial_retirement), else the newest."""
    recorded = {str(e.get("trial_id")): e.get("end") for e in entries}
    out = []
    for result in grid:
        m, c = result.metrics or {}, result.config or {}
        keys = ("t_trial_start", "t_loop_start", "t_loop_end")
        if not all(k in m for k in keys) or "suggested_at" not in c:
            continue
        row = {"suggested": float(c["suggested_at"]), **{k[2:]: float(m[k]) for k in keys}}
        end = recorded.get(str(m.get("trial_id")))
        row["recorded"] = float(end) if end is not None else math.nan
        row["checkpoint"] = float(m.get("checkpoint_s", 0.0))
        row["report"] = float(m.get("report_s", 0.0))
        out.append(row)
    return tuple(out)


PUBLISHED = ("evolve.csv", "evolve_trials.jsonl", "hyp_evolve.yaml", "evolve.png",
             "evolve_run.yaml", "tensorboard")


def publish_outputs(request: EvolveRequest) -> str | None:
    """Copy the run's outputs beside Tune's state in --storage (s3://, gs://, a shared mount).

    The store is written on the driver; with shared storage the results should live there
    too. Best effort: a failure is logged, the local copy stays. Returns the destination.
    """
    if request.storage is None:
        return None
    import pyarrow.fs as pafs

    dest = request.experiment_path
    try:
        fs, base = pafs.FileSystem.from_uri(dest)
        for name in PUBLISHED:
            src = request.run_dir / name
            if src.exists():
                pafs.copy_files(str(src), f"{base}/{name}", pafs.LocalFileSystem(), fs)
    except (OSError, ValueError) as e:
        LOGGER.warning(f"evolve: could not copy the results to {dest}: {e}")
        return None
    LOGGER.info(f"evolve: results copied to {dest}")
    return dest


def summarize(prepared: PreparedRun, t0: float, grid: Any = None) -> EvolveSummary:
    """Plot evolve.png and describe what the run's folder now holds."""
    request, store = prepared.request, prepared.store
    rows, entries = store.rows(), store.entries()
    ours = [e for e in entries if e.get("strategy") != "seed"]
    best = store.best_row()
    plot = None
    if best is not None:
        try:
            plot = plot_evolve(store.csv_path, log=LOGGER.info)
        except StoreError as e:
            LOGGER.warning(f"evolve: no plot: {e}")
    publish_outputs(request)
    complete = len(rows) >= prepared.target_rows
    if not complete:
        LOGGER.warning(f"evolve: stopped at {len(rows)}/{prepared.target_rows} rows; continue "
                       f"with: yolo-ray evolve --resume {request.run_dir}")
    return EvolveSummary(
        run_dir=request.run_dir, rows=len(rows), trials=len(ours),
        failed=sum(e.get("status") == "failed" for e in ours),
        early_stopped=sum(e.get("status") == "early-stopped" for e in ours),
        best_fitness=None if best is None else best.fitness,
        best_row=None if best is None else best.index,
        best_hyp={} if best is None else dict(best.hyp),
        evolve_csv=store.csv_path, hyp_yaml=store.yaml_path if store.yaml_path.exists() else None,
        plot=plot, tb_dir=request.tb_dir if request.tensorboard else None,
        wall_s=time.time() - t0, complete=complete,
        timings=trial_timings(grid, entries) if grid is not None else (),
    )
