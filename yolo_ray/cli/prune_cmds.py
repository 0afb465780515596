"""`yolo-ray prune`: the YOLOv5 pruning guide (val, prune, val, fine-tune) in one command."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from . import args_for, command


@args_for("prune")
def _prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="checkpoint to prune (left untouched)")
    p.add_argument("--data", required=True, help="data yaml for validation / fine-tuning")
    p.add_argument("--amount", type=float, default=0.3, help="fraction to prune, 0 <= a < 1")
    p.add_argument("--method", default="l1", choices=("l1", "global-l1", "channel"))
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="fine-tune epochs after pruning (after every step with --steps)")
    p.add_argument("--steps", type=int, default=1,
                   help="channel: reach --amount in this many prune + fine-tune steps")
    p.add_argument("--scope", default="global", choices=("global", "layer"),
                   help="channel: remove the least important channels network-wide (global) "
                        "or the same fraction of every layer (layer)")
    p.add_argument("--channel-multiple", type=int, default=8,
                   help="channel: keep multiples of this many channels per layer (8 suits GPUs "
                        "and AVX2 CPUs, 16 AVX-512 CPUs; 1 = any count)")
    p.add_argument("--calib-images", type=int, default=64,
                   help="channel: refit every pruned conv (least squares) to the unpruned "
                        "model's outputs on this many training images; 0 = off")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune with the unpruned model's head outputs as soft targets too "
                        "(knowledge distillation; default: labels only, as YOLOv5)")
    p.add_argument("--hyp", default=None, help="hyp yaml for fine-tuning")
    p.add_argument("--img", dest="imgsz", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--project", default="runs/prune")
    p.add_argument("--name", default="exp")


@command("prune", "prune a checkpoint (l1 / global-l1 / channel) and compare before/after")
def prune_cmd(a: argparse.Namespace) -> int:
    from ..train.assemble import increment_path
    from ..train.prune_run import (PruneRequest, check_prune_request, format_prune_table,
                                   run_prune)
    from ..train.val_run import ValRequest

    val = ValRequest(weights=a.weights, data=a.data, imgsz=a.imgsz, batch_size=a.batch_size * 2,
                     device=a.device, workers=a.workers)
    req = PruneRequest(val, a.amount, a.method, Path(a.project) / a.name, a.finetune_epochs,
                       a.hyp, a.batch_size, a.workers, a.steps, a.scope, a.calib_images,
                       a.distill, a.channel_multiple)
    check_prune_request(req)  # before any work or any file is written
    req = replace(req, out=increment_path(req.out, exist_ok=False))
    rows = run_prune(req)
    print(format_prune_table(rows))
    print(f"Pruned checkpoint: {req.out / 'pruned.pt'}")
    return 0
