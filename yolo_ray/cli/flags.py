"""Flags shared by several subcommands, and Namespace -> settings conversion."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

LOGGER = logging.getLogger("yolo_ray")


def add_data_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="data yaml (default: a generated synthetic set)")
    p.add_argument("--cfg", default=None, help="model yaml path or yolov5n/s/m/l/x")
    p.add_argument("--weights", default=None, help="official YOLOv5 .pt or a yolo-ray checkpoint")
    p.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640, help="image size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="", help="'' (auto), 'cpu' or a CUDA index like 0")
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--single-cls", action="store_true")


def add_train_flags(p: argparse.ArgumentParser) -> None:
    add_data_model(p)
    p.add_argument("--hyp", default=None, help="hyp yaml (default hyp.scratch-low.yaml)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--optimizer", default="SGD", choices=("SGD", "Adam", "AdamW"))
    p.add_argument("--cos-lr", action="store_true")
    p.add_argument("--patience", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freeze", nargs="+", default=["0"],
                   help="N (freeze layers 0..N-1), several indices, or 'backbone'")
    p.add_argument("--freeze-bn-stats", type=parse_bool, default=True,
                   help="keep frozen BatchNorm statistics fixed (false = YOLOv5 behaviour)")
    p.add_argument("--prune", dest="prune_amount", type=float, default=0.0)
    p.add_argument("--prune-method", default="l1", choices=("l1", "global-l1", "channel"))
    p.add_argument("--prune-at", default="end", choices=("end", "start"))
    p.add_argument("--distill", default=None, metavar="WEIGHTS",
                   help="teacher checkpoint: add its head outputs as soft targets (e.g. the "
                        "unpruned weights when fine-tuning a channel-pruned model)")
    p.add_argument("--distill-gain", type=float, default=1.0)
    p.add_argument("--cache", nargs="?", const="ram", default="", help="cache images in RAM")
    p.add_argument("--project", default=None)
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--noval", action="store_true")
    p.add_argument("--nosave", action="store_true")
    p.add_argument("--rect", action="store_true")
    p.add_argument("--multi-scale", action="store_true")
    p.add_argument("--save-period", type=int, default=-1)
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def default_data(workdir: Path = Path("runs/data")) -> str:
    """The embedded default dataset: generate the synthetic set once and reuse it.

    512 training images at 96 px: enough optimizer steps per epoch (at YOLOv5's nominal batch
    of 64) that yolov5n learns the shapes from scratch in about 15 epochs on a CPU.
    """
    from ..data.synthetic import write_synthetic_dataset

    yaml_path = workdir / "synthetic-512x96" / "data.yaml"
    if not yaml_path.exists():
        LOGGER.info(f"No --data given: generating the synthetic dataset in {yaml_path.parent}")
        write_synthetic_dataset(yaml_path.parent, n_train=512, n_val=64, imgsz=96, seed=0)
    return str(yaml_path)


def settings_from_args(a: argparse.Namespace, project: str = "runs/train"):
    """Build TrainSettings from parsed flags (the only place a Namespace is read)."""
    from ..config.schema import TrainSettings

    return TrainSettings(
        data=a.data or default_data(), cfg=a.cfg, weights=a.weights, epochs=a.epochs,
        batch_size=a.batch_size, imgsz=a.imgsz, optimizer=a.optimizer, cos_lr=a.cos_lr,
        patience=a.patience, workers=a.workers, device=a.device, threads=a.threads,
        seed=a.seed, freeze=_freeze_values(a.freeze), freeze_bn_stats=a.freeze_bn_stats,
        prune_amount=a.prune_amount, prune_method=a.prune_method, prune_at=a.prune_at,
        distill=a.distill, distill_gain=a.distill_gain, cache=a.cache,
        project=a.project or project, name=a.name, exist_ok=a.exist_ok,
        label_smoothing=a.label_smoothing, noval=a.noval, nosave=a.nosave, rect=a.rect,
        multi_scale=a.multi_scale, single_cls=a.single_cls, save_period=a.save_period,
        tensorboard=a.tensorboard, progress=a.progress,
    )


def _freeze_values(values: Sequence[str]) -> tuple[int | str, ...]:
    """Integers become ints; names ('backbone') stay strings for models.freeze to resolve."""
    return tuple(int(v) if str(v).strip().lstrip("-").isdigit() else str(v).strip()
                 for v in values)
