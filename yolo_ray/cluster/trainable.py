"""The Tune function trainable: one evolution trial is one Trainer run, reported every epoch."""

from __future__ import annotations

import json
import logging
import pickle
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..evolve.ga import Suggestion
from ..train.results import RESULT_KEYS
from . import faults
from .request import EvolveRequest, isolate_devices

TRAIN_LOSS_KEYS = ("train/box_loss", "train/obj_loss", "train/cls_loss")
LR_KEYS = ("x/lr0", "x/lr1", "x/lr2")
METRIC = "fitness"   # what Tune's searcher and schedulers optimise
MODE = "max"
TIME_ATTR = "epoch"  # ASHA's clock: finished epochs (1-based)
CKPT_STATE = "state.pt"     # per-epoch trial checkpoint: trainer.state_dict() (fp32)
CKPT_INFO = "trial.json"    # beside it: epoch and node, for people and tests
# What torch.load raises on a truncated, garbled or missing state.pt.
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError)
LOGGER = logging.getLogger("yolo_ray")


def trial_config(s: Suggestion, suggested_at: float) -> dict[str, Any]:
    """The Tune config of a trial: everything needed to train it and to record its row."""
    return {
        "trial_index": s.trial_index, "hyp": dict(s.hyp), "extras": dict(s.extras),
        "parent_rows": list(s.parent_rows), "seed": s.seed, "generation": s.generation,
        "cloned": s.cloned, "strategy": s.strategy, "suggested_at": suggested_at,
    }


def suggestion_from_config(config: Mapping[str, Any]) -> Suggestion:
    """Rebuild the Suggestion a config was made from (after a restore, from Tune's state)."""
    return Suggestion(
        int(config["trial_index"]), {k: float(v) for k, v in config["hyp"].items()},
        {k: float(v) for k, v in config.get("extras", {}).items()},
        tuple(int(i) for i in config.get("parent_rows", ())), int(config["seed"]),
        int(config["generation"]), bool(config.get("cloned", False)),
        str(config.get("strategy", "classic")))


def epoch_report(record: Any, metrics: Any = None, fitness: float | None = None) -> dict[str, Any]:
    """Tune result for one EpochRecord: results.csv names plus `fitness` and `epoch` (1-based).

    `metrics`/`fitness` override the record's (e.g. the final, pruned validation).
    """
    m = metrics if metrics is not None else record.metrics
    lrs = (tuple(record.lrs) + (0.0, 0.0, 0.0))[:3]
    out: dict[str, Any] = {TIME_ATTR: record.epoch + 1,
                           METRIC: float(record.fitness if fitness is None else fitness),
                           "validated": bool(record.validated), "epoch_time": record.epoch_time}
    out.update(zip(TRAIN_LOSS_KEYS, (float(v) for v in record.train_losses)))
    out.update(zip(RESULT_KEYS, m.as_row()))
    out.update(zip(LR_KEYS, (float(v) for v in lrs)))
    return out


def result_values(result: Mapping[str, Any]) -> list[float] | None:
    """The seven evolve.csv result values of a Tune result (None when it has none)."""
    try:
        return [float(result[k]) for k in RESULT_KEYS]
    except (KeyError, TypeError, ValueError):
        return None


def node_label() -> str:
    """`<ip>/<node id[:8]>` of the calling Ray worker: nodes sharing one IP stay apart."""
    import ray

    node_id = ray.get_runtime_context().get_node_id() or ""
    return f"{ray.util.get_node_ip_address()}/{node_id[:8]}"


def save_trial_checkpoint(trainer: Any, folder: Path, info: Mapping[str, Any]) -> None:
    """The trainer's exact-resumption state plus a small JSON (epoch, node) into `folder`."""
    import torch

    torch.save(trainer.state_dict(), folder / CKPT_STATE)
    (folder / CKPT_INFO).write_text(json.dumps({"epoch": trainer.epoch, "node": info["node"]}))


def checkpoint_due(train_s: float, last_cost_s: float | None, budget: float) -> bool:
    """Checkpoint after this epoch? The first time always (it measures the cost); then once the
    training time since the last one is at least cost / budget, so checkpoints take at most
    `budget` of the trial and a lost node costs at most about cost / budget of training."""
    return last_cost_s is None or budget >= 1 or last_cost_s <= budget * train_s


def read_trial_state(folder: Path) -> dict[str, Any] | None:
    """The trainer state saved in checkpoint `folder`, or None (with a warning naming the file)
    when it cannot be read: a corrupt checkpoint costs the trial its progress, not the run."""
    import torch

    path = folder / CKPT_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        first = str(e).splitlines()[0] if str(e) else ""
        LOGGER.warning(f"{path}: corrupt checkpoint ({type(e).__name__}: {first}); "
                       f"the trial restarts at epoch 0")
        return None


def restore_trial_checkpoint(trainer: Any) -> int:
    """Load Tune's checkpoint for this trial (a retry after a failure or a lost node).

    Returns the epoch training resumes at (0 when there is no checkpoint or it is unreadable).
    """
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = read_trial_state(Path(folder))
    if state is None:
        return 0
    trainer.load_train_state(state)
    return int(trainer.epoch)


def evolve_trial(config: dict[str, Any], request: EvolveRequest, data_blob: Any = None) -> None:
    """Train one suggested hyp set for `request.epochs`; report every epoch, then `final`.

    The last report carries `final=True`: a trial whose last result lacks it was stopped
    early (ASHA). Exceptions (non-finite loss, OOM) propagate so Tune retries the trial.
    `data_blob` (a shipping.ShippedData) is extracted once per node and trained from.
    """
    import ray
    from ray import tune

    t_start = time.time()
    gpu_ids = list(ray.get_gpu_ids())
    isolate_devices(gpu_ids, request.device_policy)  # before anything initialises CUDA
    import torch

    from ..config.schema import Hyp
    from ..train.trainer import Trainer
    from .shipping import localize

    settings = request.trial_settings(config.get("extras"), gpu_ids, seed=config["seed"],
                                      cuda_available=torch.cuda.is_available())
    settings = localize(settings, data_blob)
    info = {"node": node_label(), "device": settings.device,
            "t_trial_start": t_start, "data": settings.data, "checkpoint_s": 0.0,
            "report_s": 0.0}
    records: list[Any] = []

    clock = {"since": time.perf_counter(), "cost": None}  # last checkpoint's end and cost

    def timed_report(metrics: dict[str, Any], **kwargs: Any) -> None:
        # Tune's report returns only once the driver has taken the result and asked for the
        # next one: the trial's core idles meanwhile (reported, so benchmarks can show it).
        t0 = time.perf_counter()
        tune.report(metrics, **kwargs)
        info["report_s"] += time.perf_counter() - t0

    def report_epoch(record: Any) -> None:
        records.append(record)
        if record.epoch + 1 < settings.epochs:  # the last epoch is reported after fit()
            now = time.perf_counter()
            if checkpoint_due(now - clock["since"], clock["cost"], request.checkpoint_budget):
                # A retry after a failure or a lost node resumes here instead of from epoch 0.
                with tempfile.TemporaryDirectory(prefix="yolo-ray-ckpt-") as folder:
                    save_trial_checkpoint(trainer, Path(folder), info)
                    timed_report(epoch_report(record) | info | {"final": False},
                                 checkpoint=tune.Checkpoint.from_directory(folder))
                clock["since"] = time.perf_counter()
                clock["cost"] = clock["since"] - now
                info["checkpoint_s"] += clock["cost"]  # seconds this trial spent checkpointing
            else:
                timed_report(epoch_report(record) | info | {"final": False})
        faults.before_epoch(index, attempt, record.epoch + 1, trainer.model)  # tests only

    trainer = Trainer(settings, Hyp.from_mapping(config["hyp"], "<trial hyp>"),
                      hooks=[report_epoch], write_files=False)
    trainer.setup()
    info["resumed_at_epoch"] = restore_trial_checkpoint(trainer)
    index, attempt = int(config["trial_index"]), faults.start_attempt(f"t{config['trial_index']}")
    faults.before_epoch(index, attempt, trainer.epoch, trainer.model)  # tests only
    info["t_loop_start"] = time.time()
    result = trainer.fit()
    info["t_loop_end"] = time.time()
    # Same metrics as the last epoch unless --prune-at end re-validated the pruned model.
    tune.report(epoch_report(records[-1], result.metrics, result.fitness) | info
                | {"final": True})
