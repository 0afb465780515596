"""Build a run's parts from settings: device, model (with weights), data loaders, save dir."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.load import load_model_yaml
from ..config.schema import DataConfig, Hyp, TrainSettings
from ..errors import ConfigError, WeightsError
from ..models.weights import load_weights, transfer_state_dict
from ..models.yolo import DetectionModel, build_model

LOGGER = logging.getLogger("yolo_ray")


def select_device(spec: str = "") -> torch.device:
    """'' → CUDA when present else CPU; 'cpu'; '0' / 'cuda:0' → that GPU (error if absent)."""
    spec = (spec or "").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    index = spec.split(":")[-1] if spec.startswith("cuda") else spec
    if not index.isdigit():
        raise ConfigError(f"--device {spec!r} is not 'cpu', '' or a GPU index like '0'")
    if not torch.cuda.is_available() or int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: CUDA device {index} is not available "
                          f"({torch.cuda.device_count()} visible)")
    return torch.device(f"cuda:{index}")


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op CPU threads (a Ray trial sets this to its CPU share)."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))


def increment_path(base: Path, exist_ok: bool) -> Path:
    """runs/train/exp, exp2, exp3 … (YOLOv5's naming), or `base` itself when exist_ok."""
    if exist_ok or not base.exists():
        return base
    stem = re.sub(r"\d+$", "", base.name) or base.name
    n = 2
    while (base.parent / f"{stem}{n}").exists():
        n += 1
    return base.parent / f"{stem}{n}"


def make_save_dir(settings: TrainSettings) -> Path:
    """Create the run folder; an unwritable project folder is a clear error."""
    save_dir = increment_path(Path(settings.project) / settings.name, settings.exist_ok)
    try:
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run folder {save_dir}: {e.strerror}") from None
    if not os.access(save_dir, os.W_OK):
        raise ConfigError(f"run folder {save_dir} is not writable")
    return save_dir


@dataclass
class ModelBundle:
    """A built model plus what came with its weights."""

    model: DetectionModel
    yaml: dict
    checkpoint: dict[str, Any] | None
    prune_plan: dict | None


def build_run_model(settings: TrainSettings, hyp: Hyp, nc: int, names: tuple[str, ...],
                    resume: bool = False) -> ModelBundle:
    """Build the model from --cfg / --weights, transferring same-shape tensors (YOLOv5 rules)."""
    sd, meta = (load_weights(settings.weights) if settings.weights else (None, {}))
    if settings.cfg:
        cfg: Any = load_model_yaml(settings.cfg)
    elif meta.get("yaml"):
        cfg = dict(meta["yaml"])
    else:
        raise ConfigError("give --cfg (a model yaml or yolov5n/s/m/l/x) or --weights")
    anchors = hyp.get("anchors")
    if anchors:
        # YOLOv5 would replace the yaml anchors with placeholders and re-derive them with
        # AutoAnchor; we keep the yaml's (or checkpoint's) anchors and say so.
        LOGGER.warning(f"hyp 'anchors: {anchors:g}' is ignored: the model's own anchors are used")
    plan = meta.get("prune_plan")
    # Weight init draws from torch's RNG: fork it and seed from the run seed, so a run is
    # reproducible without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = _build(cfg, nc, plan)
    model.names = list(names)
    if sd is not None:
        exclude = ("anchor",) if settings.cfg and not resume else ()
        n, total = transfer_state_dict(model, sd, exclude=exclude)
        LOGGER.info(f"Transferred {n}/{total} items from {settings.weights}")
        if n == 0:
            raise WeightsError(f"{settings.weights}: no tensor matches the model "
                               f"(is it a checkpoint of a different architecture?)")
    return ModelBundle(model, cfg, meta if sd is not None else None, plan)


def _build(cfg: Any, nc: int, plan: dict | None) -> DetectionModel:
    if plan:
        from ..models.prune import rebuild_from_plan

        return rebuild_from_plan(cfg, nc, plan)
    return build_model(cfg, nc=nc)


def names_for(data: DataConfig, single_cls: bool) -> tuple[str, ...]:
    """Class names (one 'item' class when --single-cls)."""
    return ("item",) if single_cls else data.names
