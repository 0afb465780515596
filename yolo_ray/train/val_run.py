"""Validate a weights file on a dataset (YOLOv5's val.py), optionally scored by pycocotools."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..config.load import load_data_config, load_model_yaml
from ..data.loader import create_val_loader
from ..errors import ConfigError, WeightsError
from ..models.weights import load_weights
from ..models.yolo import DetectionModel, build_model
from .assemble import select_device, set_threads
from .coco_eval import coco_map, predictions_to_coco, write_json, yolo_labels_to_coco
from .validate import ValResult, evaluate

LOGGER = logging.getLogger("yolo_ray")


@dataclass(frozen=True)
class ValRequest:
    """What to validate, with YOLOv5 val.py's defaults."""

    weights: str
    data: str
    imgsz: int = 640
    batch_size: int = 32
    device: str = ""
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    task: str = "val"
    workers: int = 2
    single_cls: bool = False
    cfg: str | None = None
    coco_eval: bool = False
    save_dir: Path | None = None
    threads: int | None = None


@dataclass(frozen=True)
class ValOutcome:
    """The validation result, class names and the optional pycocotools numbers."""

    result: ValResult
    names: tuple[str, ...]
    coco: tuple[float, float] | None     # (mAP50-95, mAP50) from COCOeval
    model: DetectionModel


def load_model_for_inference(weights: str, cfg: str | None = None,
                             nc: int | None = None) -> DetectionModel:
    """Build the architecture from the checkpoint (or --cfg) and load its weights strictly."""
    sd, meta = load_weights(weights)
    yaml_cfg = load_model_yaml(cfg) if cfg else meta.get("yaml")
    if not yaml_cfg:
        raise WeightsError(f"{weights}: carries no model yaml; pass --cfg")
    nc = nc or meta.get("nc")
    if meta.get("prune_plan"):
        from ..models.prune import rebuild_from_plan

        model = rebuild_from_plan(yaml_cfg, nc, meta["prune_plan"])
    else:
        model = build_model(yaml_cfg, nc=nc)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{weights}: weights do not fit the model: "
                           f"{str(e).splitlines()[0]}") from None
    if meta.get("names"):
        model.names = list(meta["names"])
    return model


def run_val(req: ValRequest) -> ValOutcome:
    """Load, validate and (optionally) cross-check with pycocotools."""
    set_threads(req.threads)
    device = select_device(req.device)
    data = load_data_config(req.data)
    model = load_model_for_inference(req.weights, req.cfg)
    nc = 1 if req.single_cls else data.nc
    if model.nc != nc:
        raise ConfigError(f"{req.weights} has {model.nc} classes but {req.data} has {nc}")
    model = model.fuse().to(device).eval()
    half = device.type == "cuda"
    if half:
        model.half()
    grid = max(int(model.stride.max()), 32)
    loader = create_val_loader(data, req.imgsz, req.batch_size, None, grid, workers=req.workers,
                               single_cls=req.single_cls, split=req.task,
                               log=LOGGER.info)
    result = evaluate(model, loader, device, None, req.conf_thres, req.iou_thres,
                      req.max_det, nc=nc, half=half, keep_predictions=req.coco_eval,
                      single_cls=req.single_cls)
    names = ("item",) if req.single_cls else data.names
    coco = _coco_eval(loader.dataset, result, names, req) if req.coco_eval else None
    return ValOutcome(result, tuple(names), coco, model)


def _coco_eval(dataset, result: ValResult, names, req: ValRequest) -> tuple[float, float]:
    """Second opinion: our predictions scored by pycocotools against GT built from the labels."""
    # The val loader does not shuffle, so the i-th image seen is dataset image i (rect
    # batching re-sorts the dataset's own lists, keeping them aligned).
    shapes = [tuple(int(v) for v in s) for s in dataset.shapes]
    gt = yolo_labels_to_coco(dataset.im_files, dataset.labels, shapes, names)
    preds = predictions_to_coco(
        (i, p[:, :4], p[:, 4], p[:, 5]) for i, p in result.predictions)
    if req.save_dir is not None:
        stem = Path(req.weights).stem
        write_json(req.save_dir / f"{stem}_predictions.json", preds)
        write_json(req.save_dir / "ground_truth.json", gt)
    return coco_map(gt, preds)
