"""The pruning guide in one call: validate, prune, validate, optionally fine-tune, compare."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config.load import load_hyp
from ..config.schema import TrainSettings
from ..models.prune import check_prune_args, prune_model, sparsity_report
from .checkpoint import half_state_dict, save_checkpoint
from .val_run import ValRequest, load_model_for_inference, run_val

LOGGER = logging.getLogger("yolo_ray")


@dataclass(frozen=True)
class PruneRow:
    """One line of the side-by-side table."""

    label: str
    params: int
    sparsity: float
    gflops: float
    map50: float
    map: float
    ms_per_img: float


@dataclass(frozen=True)
class PruneRequest:
    """What `yolo-ray prune` was asked to do."""

    val: ValRequest
    amount: float
    method: str
    out: Path
    finetune_epochs: int = 0
    hyp: str | None = None
    batch_size: int = 16
    workers: int = 2


def _row(label: str, model: torch.nn.Module, outcome, imgsz: int) -> PruneRow:
    rep = sparsity_report(model, imgsz)
    m = outcome.result.metrics
    return PruneRow(label, rep.params, rep.sparsity_all, float(rep.gflops or 0.0), m.map50,
                    m.map, outcome.result.speed_ms[1])


def run_prune(req: PruneRequest) -> list[PruneRow]:
    """Baseline val → prune → val → (fine-tune → val); writes the pruned checkpoint."""
    check_prune_args(req.amount, req.method)
    base = run_val(req.val)
    rows = [_row("baseline", base.model, base, req.val.imgsz)]
    model = load_model_for_inference(req.val.weights, req.val.cfg)
    result = prune_model(model, req.amount, req.method, imgsz=req.val.imgsz)
    LOGGER.info(f"Pruned ({req.method}, {req.amount}): {result.summary()}")
    meta_yaml = dict(model.yaml)  # the architecture actually built (no second unpickling)
    payload = {"model": half_state_dict(result.model.state_dict()), "yaml": meta_yaml,
               "nc": int(result.model.nc), "names": list(getattr(model, "names", [])),
               "prune_plan": result.plan, "prune": {"amount": req.amount, "method": req.method},
               "epoch": -1}
    pruned_path = save_checkpoint(req.out / "pruned.pt", payload)
    pruned = run_val(replace(req.val, weights=str(pruned_path), cfg=None))
    rows.append(_row(f"{req.method} {req.amount:g}", pruned.model, pruned, req.val.imgsz))
    if req.finetune_epochs > 0:
        tuned_path = _finetune(req, pruned_path)
        tuned = run_val(replace(req.val, weights=str(tuned_path), cfg=None))
        rows.append(_row(f"{req.method} {req.amount:g} + {req.finetune_epochs} ep fine-tune",
                         tuned.model, tuned, req.val.imgsz))
    return rows


def _finetune(req: PruneRequest, pruned_path: Path) -> Path:
    """Fine-tune with the pruning kept: masks re-applied after every step (unstructured), or
    the smaller architecture itself (channel)."""
    from .trainer import Trainer

    unstructured = req.method != "channel"
    settings = TrainSettings(
        data=req.val.data, weights=req.val.weights if unstructured else str(pruned_path),
        epochs=req.finetune_epochs, batch_size=req.batch_size, imgsz=req.val.imgsz,
        device=req.val.device, workers=req.workers, project=str(req.out), name="finetune",
        exist_ok=True, prune_amount=req.amount if unstructured else 0.0,
        prune_method=req.method if unstructured else "l1", prune_at="start", progress=False,
        noval=True, patience=0)
    result = Trainer(settings, load_hyp(req.hyp)).fit()
    assert result.last is not None
    return result.last


def format_prune_table(rows: list[PruneRow]) -> str:
    """Side-by-side comparison, one model per line."""
    head = f"{'model':>28} {'params':>11} {'sparsity':>9} {'GFLOPs':>7} {'mAP50':>7} " \
           f"{'mAP50-95':>9} {'ms/img':>8}"
    lines = [head]
    for r in rows:
        lines.append(f"{r.label:>28} {r.params:>11,} {r.sparsity:>9.3f} {r.gflops:>7.2f} "
                     f"{r.map50:>7.3f} {r.map:>9.3f} {r.ms_per_img:>8.1f}")
    return "\n".join(lines)
