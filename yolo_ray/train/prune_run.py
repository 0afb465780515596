"""The pruning guide in one call: validate, prune, validate, optionally fine-tune, compare."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config.load import load_hyp
from ..config.schema import TrainSettings
from ..errors import ConfigError
from ..models.prune import (check_prune_args, prune_model, sparsity_report,
                             step_ratios)
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
    steps: int = 1          # channel: prune in this many steps, fine-tuning after each
    scope: str = "global"   # channel: allocation, see plan_channel_prune
    calib_images: int = 0   # channel: refit the pruned convs on this many training images
    distill: bool = False   # fine-tune with the unpruned model's head as soft targets
    divisor: int = 1        # channel: kept counts are multiples of this


def check_prune_request(req: PruneRequest) -> None:
    """ConfigError for a request that cannot run (before any work or file)."""
    check_prune_args(req.amount, req.method)
    step_ratios(req.amount, req.steps)
    if req.steps > 1 and (req.method != "channel" or req.finetune_epochs < 1):
        raise ConfigError("--steps > 1 needs --method channel and --finetune-epochs >= 1 "
                          "(gradual pruning fine-tunes after every step)")
    if req.divisor < 1:
        raise ConfigError(f"--channel-multiple must be >= 1, got {req.divisor}")
    if req.calib_images < 0:
        raise ConfigError(f"--calib-images must be >= 0, got {req.calib_images}")
    if req.scope not in ("global", "layer"):
        raise ConfigError(f"--scope {req.scope!r} is not 'global' or 'layer'")


def _row(label: str, model: torch.nn.Module, outcome, imgsz: int) -> PruneRow:
    rep = sparsity_report(model, imgsz)
    m = outcome.result.metrics
    return PruneRow(label, rep.params, rep.sparsity_all, float(rep.gflops or 0.0), m.map50,
                    m.map, outcome.result.speed_ms[1])


def save_pruned(path: Path, model: torch.nn.Module, yaml: dict, names: list[str],
                amount: float, method: str) -> Path:
    """A checkpoint of a pruned model that `load_model_for_inference` and `train --weights`
    rebuild: the yaml plus the channel plan (pruned shapes), fp16 weights like YOLOv5's."""
    plan = getattr(model, "channel_plan", None)
    payload = {"model": half_state_dict(model.state_dict()), "yaml": dict(yaml),
               "nc": int(model.nc), "names": list(names),
               "prune_plan": plan.as_dict() if plan is not None else None,
               "prune": {"amount": amount, "method": method}, "epoch": -1}
    return save_checkpoint(path, payload)


def run_prune(req: PruneRequest) -> list[PruneRow]:
    """Baseline val → prune → val → (fine-tune → val); writes the pruned checkpoint.

    With `steps` > 1 (channel only) the amount is reached gradually: prune a share, fine-tune
    `finetune_epochs`, repeat; the rows are the baseline, the last pruning before its
    fine-tune and the end result.
    """
    check_prune_request(req)
    base = run_val(req.val)
    rows = [_row("baseline", base.model, base, req.val.imgsz)]
    model = load_model_for_inference(req.val.weights, req.val.cfg)
    meta_yaml = dict(model.yaml)  # the architecture actually built (no second unpickling)
    names = list(getattr(model, "names", []))
    ratios = step_ratios(req.amount, req.steps) if req.method == "channel" else [req.amount]
    tuned_path = None
    fit = req.method == "channel" and req.calib_images > 0
    calib = (calibration_images(req.val.data, req.val.imgsz, req.calib_images, req.batch_size,
                                req.workers) if fit else None)  # the same images every step
    for k, ratio in enumerate(ratios, 1):
        if tuned_path is not None:
            model = load_model_for_inference(str(tuned_path))
        result = prune_model(model, ratio, req.method, imgsz=req.val.imgsz, scope=req.scope,
                             calib=calib, reconstruct=fit, divisor=req.divisor)
        if result.fits:
            LOGGER.info(_fit_summary(result.fits, req.calib_images))
            if req.steps == 1:  # (a later step's original is itself pruned)
                LOGGER.info(_held_out_check(req, model, result, calib))
        LOGGER.info(f"Pruned ({req.method}, step {k}/{len(ratios)}: {ratio:.3f} of what was "
                    f"left): {result.summary()}")
        pruned_path = save_pruned(req.out / "pruned.pt", result.model, meta_yaml, names,
                                  req.amount * k / len(ratios), req.method)
        if req.finetune_epochs > 0:
            name = f"finetune{k}" if req.steps > 1 else "finetune"
            tuned_path = finetune_pruned(req, pruned_path, name)
    label = f"{req.method} {req.amount:g}" + (f" ({req.steps} steps)" if req.steps > 1 else "")
    pruned = run_val(replace(req.val, weights=str(pruned_path), cfg=None))
    rows.append(_row(label if req.steps == 1 else f"{label}, last step", pruned.model, pruned,
                     req.val.imgsz))
    if tuned_path is not None:
        tuned = run_val(replace(req.val, weights=str(tuned_path), cfg=None))
        ep = req.finetune_epochs * req.steps
        rows.append(_row(f"{label} + {ep} ep fine-tune", tuned.model, tuned, req.val.imgsz))
    return rows


def calibration_images(data: str, imgsz: int, n: int, batch_size: int = 16,
                       workers: int = 0, split: str = "train") -> list[torch.Tensor]:
    """The first `n` images of the data yaml's `split`, letterboxed at `imgsz`, in [0, 1]."""
    from ..config.load import load_data_config
    from ..data.loader import create_val_loader
    from ..models.prune_reconstruct import calibration_batches

    loader = create_val_loader(load_data_config(data), imgsz, batch_size, split=split,
                               workers=workers, log=lambda *a, **k: None)
    return calibration_batches((imgs for imgs, *_ in loader), n)


def _held_out_check(req: PruneRequest, original: torch.nn.Module, result,
                    calib: list[torch.Tensor]) -> str:
    """`refit_check` on the val split, unless the val images are the training images (as in
    coco128's yaml): then there is nothing unseen to check against, and the line says so."""
    from ..config.load import load_data_config
    from ..data.files import list_image_files

    cfg = load_data_config(req.val.data)
    if set(list_image_files(cfg.val)) <= set(list_image_files(cfg.train)):
        return ("Refit check skipped: the val images are training images, so the refit may "
                "have seen them; validate on images it did not see to judge the refit")
    held_out = calibration_images(req.val.data, req.val.imgsz, req.calib_images,
                                  req.batch_size, req.workers, split="val")
    return refit_check(original, result, calib, held_out)


def refit_residuals(original: torch.nn.Module, result, calib: list[torch.Tensor],
                    held_out: list[torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """Each refitted layer's residual (`block_residuals`) on the calibration images and on
    `held_out` images."""
    from ..models.prune_reconstruct import block_residuals

    keep = result.model.channel_plan.keep
    paths = [f.path for f in result.fits]
    return (block_residuals(original, result.model, keep, paths, calib),
            block_residuals(original, result.model, keep, paths, held_out))


def mean_residual(residuals: dict[str, float]) -> float:
    """Mean over layers of a `block_residuals` result."""
    return sum(residuals.values()) / max(len(residuals), 1)


def largest_gaps(seen: dict[str, float], unseen: dict[str, float], k: int) -> list[str]:
    """The `k` layers whose residual grows most from seen to unseen images, worst first."""
    return sorted(seen, key=lambda b: unseen[b] - seen[b], reverse=True)[:k]


def refit_check(original: torch.nn.Module, result, calib: list[torch.Tensor],
                held_out: list[torch.Tensor], worst: int = 3) -> str:
    """One log line: the refitted layers' residual on the calibration images and on images
    the refit did not see (the val split), with the layers that generalise worst."""
    seen, unseen = refit_residuals(original, result, calib, held_out)
    return refit_check_line(seen, unseen, sum(len(b) for b in calib),
                            sum(len(b) for b in held_out), worst)


def refit_check_line(seen: dict[str, float], unseen: dict[str, float], n_seen: int,
                     n_unseen: int, worst: int = 3) -> str:
    """`refit_check`'s line from per-layer residuals on seen and unseen images (pure)."""
    line = (f"Refit check: mean layer residual {mean_residual(seen):.3f} on the {n_seen} "
            f"calibration images, {mean_residual(unseen):.3f} on {n_unseen} validation "
            "images; largest gaps: "
            + ", ".join(f"{b} {seen[b]:.2f} -> {unseen[b]:.2f}"
                        for b in largest_gaps(seen, unseen, worst)))
    # A rule of thumb, not a test: 64 coco128 images gave 0.37 vs 0.59 (layer 0.3) and
    # 0.17 vs 0.30 (global) with held-out mAP far below the calibration images'.
    if mean_residual(unseen) > 1.25 * mean_residual(seen):
        line += " (the refit memorised its calibration images: more --calib-images help)"
    return line


def _fit_summary(fits, n_images: int) -> str:
    before = sum(f.error_before for f in fits) / len(fits)
    after = sum(f.error_after for f in fits) / len(fits)
    return (f"Refitted {len(fits)} convs to the unpruned outputs on {n_images} training "
            f"images: mean residual {before:.3f} -> {after:.3f} of each layer's output variance")


def finetune_pruned(req: PruneRequest, pruned_path: Path, name: str = "finetune") -> Path:
    """Fine-tune `pruned_path` (run folder `req.out / name`) and return its last.pt, the
    pruning kept: masks re-applied after every step (unstructured), or the smaller
    architecture itself (channel)."""
    from .trainer import Trainer

    unstructured = req.method != "channel"
    settings = TrainSettings(
        data=req.val.data, weights=req.val.weights if unstructured else str(pruned_path),
        epochs=req.finetune_epochs, batch_size=req.batch_size, imgsz=req.val.imgsz,
        device=req.val.device, workers=req.workers, project=str(req.out), name=name,
        exist_ok=True, prune_amount=req.amount if unstructured else 0.0,
        prune_method=req.method if unstructured else "l1", prune_at="start", progress=False,
        noval=True, patience=0, distill=req.val.weights if req.distill else None)
    result = Trainer(settings, load_hyp(req.hyp)).fit()
    assert result.last is not None
    return result.last


def format_prune_table(rows: list[PruneRow]) -> str:
    """Side-by-side comparison, one model per line (the label column widens for long labels)."""
    w = max([28, *(len(r.label) + 1 for r in rows)])
    head = f"{'model':>{w}} {'params':>11} {'sparsity':>9} {'GFLOPs':>7} {'mAP50':>7} " \
           f"{'mAP50-95':>9} {'ms/img':>8}"
    lines = [head]
    for r in rows:
        lines.append(f"{r.label:>{w}} {r.params:>11,} {r.sparsity:>9.3f} {r.gflops:>7.2f} "
                     f"{r.map50:>7.3f} {r.map:>9.3f} {r.ms_per_img:>8.1f}")
    return "\n".join(lines)
