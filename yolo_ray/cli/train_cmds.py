"""Subcommand implementations for `yolo-ray` (train, val, info, data, export-config)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import yaml

from . import args_for, command
from .flags import add_data_model, add_train_flags, settings_from_args

LOGGER = logging.getLogger("yolo_ray")


# ------------------------------------------------------------------ train
@args_for("train")
def _train_args(p: argparse.ArgumentParser) -> None:
    add_train_flags(p)
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="resume from a last.pt (default: the most recent run's)")


@command("train", "train a YOLOv5 model (YOLOv5's train.py)")
def train_cmd(a: argparse.Namespace) -> int:
    from ..config.load import load_hyp
    from ..train.trainer import Trainer

    if a.resume:
        trainer = _resume_trainer(a.resume, a.project or "runs/train")
    else:
        settings = settings_from_args(a)
        if not settings.cfg and not settings.weights:
            settings = settings.replace(cfg="yolov5n")
        trainer = Trainer(settings, load_hyp(a.hyp))
        trainer.setup()
        _write_run_config(trainer)
    LOGGER.info(f"Logging results to {trainer.save_dir}; "
                f"view with: tensorboard --logdir {trainer.save_dir}")
    result = trainer.fit()
    m = result.metrics
    LOGGER.info(f"{result.epochs_run} epochs completed. Final: P {m.precision:.3f} "
                f"R {m.recall:.3f} mAP50 {m.map50:.3f} mAP50-95 {m.map:.3f}; best fitness "
                f"{result.best_fitness:.4f} at epoch {result.best_epoch}")
    LOGGER.info(f"Results saved to {result.save_dir}")
    return 0


def _resume_trainer(spec: str, project: str):
    from ..config.schema import Hyp
    from ..errors import ConfigError
    from ..train.checkpoint import load_checkpoint
    from ..train.trainer import Trainer, settings_from_plain

    path = _latest_last(Path(project)) if spec == "last" else Path(spec)
    ckpt = load_checkpoint(path)
    if "train_state" not in ckpt:
        raise ConfigError(f"{path}: has no training state to resume (a stripped best.pt?)")
    if int(ckpt["train_state"]["epoch"]) >= int(ckpt["settings"]["epochs"]):
        raise ConfigError(f"{path}: training already finished; nothing to resume")
    settings = settings_from_plain(ckpt["settings"]).replace(weights=str(path), exist_ok=True)
    trainer = Trainer(settings, Hyp.from_mapping(ckpt["hyp"], str(path)),
                      save_dir=path.resolve().parent.parent)
    trainer.setup(resume_state=ckpt)
    LOGGER.info(f"Resuming training from {path} at epoch {trainer.epoch}")
    return trainer


def _latest_last(project: Path) -> Path:
    from ..errors import ConfigError

    found = sorted(project.glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"--resume: no last.pt found under {project}")
    return found[-1]


def _write_run_config(trainer) -> None:
    """YOLOv5 writes hyp.yaml and opt.yaml into the run folder."""
    if trainer.save_dir is None:
        return
    (trainer.save_dir / "hyp.yaml").write_text(yaml.safe_dump(trainer.hyp.as_dict(),
                                                               sort_keys=False))
    opt = {k: (list(v) if isinstance(v, tuple) else v)
           for k, v in dataclasses.asdict(trainer.settings).items()}
    (trainer.save_dir / "opt.yaml").write_text(yaml.safe_dump(opt, sort_keys=False))


# ------------------------------------------------------------------ val
@args_for("val")
def _val_args(p: argparse.ArgumentParser) -> None:
    add_data_model(p)
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--task", default="val", choices=("val", "train", "test"))
    p.add_argument("--verbose", action="store_true", help="per-class rows")
    p.add_argument("--coco-eval", action="store_true", help="also score with pycocotools")
    p.add_argument("--project", default="runs/val")
    p.add_argument("--name", default="exp")


@command("val", "validate a model on a dataset (YOLOv5's val.py)")
def val_cmd(a: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..train.assemble import increment_path
    from ..train.val_run import ValRequest, run_val
    from ..train.validate import format_speed, format_val_table

    if not a.weights:
        raise ConfigError("yolo-ray val needs --weights")
    save_dir = None
    if a.coco_eval:
        save_dir = increment_path(Path(a.project) / a.name, exist_ok=False)
        save_dir.mkdir(parents=True, exist_ok=True)
    req = ValRequest(weights=a.weights, data=a.data or _default_data(), imgsz=a.imgsz,
                     batch_size=a.batch_size, device=a.device, conf_thres=a.conf_thres,
                     iou_thres=a.iou_thres, max_det=a.max_det, task=a.task, workers=a.workers,
                     single_cls=a.single_cls, cfg=a.cfg, coco_eval=a.coco_eval,
                     save_dir=save_dir, threads=a.threads)
    out = run_val(req)
    print(format_val_table(out.result, out.names, verbose=a.verbose))
    print(format_speed(out.result))
    if out.coco is not None:
        print(f"pycocotools COCOeval: mAP50-95 {out.coco[0]:.3f}, mAP50 {out.coco[1]:.3f} "
              f"(yolo-ray: {out.result.metrics.map:.3f}, {out.result.metrics.map50:.3f}); "
              f"JSON files in {save_dir}")
    return 0


def _default_data() -> str:
    from .flags import default_data

    return default_data()


# ------------------------------------------------------------------ info
@args_for("info")
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", default="yolov5s", help="model yaml path or yolov5n/s/m/l/x")
    p.add_argument("--nc", type=int, default=None, help="override the number of classes")
    p.add_argument("--img", dest="imgsz", type=int, default=640, help="image size for GFLOPs")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into convs first")


@command("info", "print a model's layer table and YOLOv5-style summary")
def info_cmd(a: argparse.Namespace) -> int:
    from ..config.load import load_model_yaml
    from ..models.summary import format_layer_table, format_summary, model_info
    from ..models.yolo import build_model

    cfg = load_model_yaml(a.cfg)
    model = build_model(cfg, nc=a.nc)
    print(format_layer_table(model))
    if a.fuse:
        model.fuse()
    name = Path(str(cfg.get("yaml_file", a.cfg))).stem
    print(format_summary(model_info(model, a.imgsz), name))
    return 0


# ------------------------------------------------------------------ data
@args_for("data")
def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("synth",), help="synth: write a synthetic dataset")
    p.add_argument("--out", default="runs/data/synthetic", help="output folder")
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--img", dest="imgsz", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)


@command("data", "dataset tools (synth: generate the synthetic YOLO dataset)")
def data_cmd(a: argparse.Namespace) -> int:
    from ..data.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(Path(a.out), n_train=a.n_train, n_val=a.n_val,
                                   imgsz=a.imgsz, seed=a.seed)
    print(path)
    return 0


# ------------------------------------------------------------------ export-config
@args_for("export-config")
def _export_args(p: argparse.ArgumentParser) -> None:
    add_train_flags(p)


@command("export-config", "print the resolved training settings and hyperparameters as YAML")
def export_config_cmd(a: argparse.Namespace) -> int:
    from ..config.load import load_hyp

    settings = settings_from_args(a)
    opt = {k: (list(v) if isinstance(v, tuple) else v)
           for k, v in dataclasses.asdict(settings).items()}
    print(yaml.safe_dump({"settings": opt, "hyp": load_hyp(a.hyp).as_dict()}, sort_keys=False))
    return 0
