"""Benchmark: prune yolov5n.pt (l1 / global-l1 / channel × amounts) — size, speed and mAP.

For each method and amount: parameters, sparsity (YOLOv5's, over all parameters, and over
conv weights), conv GFLOPs at 640, CPU inference ms/img at batch 1 for each --speed-img
(BN-fused model, forward only, NMS excluded as in YOLOv5's speed figures; fastest of all
forwards (--stat), variants timed round-robin, at each --speed-threads) with the speed-up
over the unpruned model, and mAP50 / mAP50-95 on coco128 with YOLOv5's val settings (conf
0.001, IoU 0.6). Pruning is applied to the released weights; channel variants keep multiples
of --divisor channels per layer and are refitted layer by layer on --calib-images training
images (`yolo-ray prune`'s path); then the unpruned model and every channel variant (or those
of --finetune-amounts) are also fine-tuned --finetune-epochs K (5) epochs and measured again
('+K ep' rows). coco128's yaml validates on its own training images, which rewards
memorising them; by default the refit and the fine-tunes therefore use only the
even-numbered training images and every row is validated on the odd-numbered ones
(--no-holdout: the yaml's own val images).
Channel amount = the fraction of prunable output channels removed ('channel': the lowest-L1
channels network-wide, at most half of any layer; 'channel/layer': that fraction of every
layer).

    python bench/prune.py --markdown --finetune-epochs 100 --finetune-amounts 0.3 --distill
    python bench/prune.py --amounts 0.3 --methods channel --no-map
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    p.add_argument("--data", default=str(SHARED / "datasets" / "coco128.yaml"))
    p.add_argument("--methods", nargs="+", default=["l1", "global-l1", "channel"])
    p.add_argument("--amounts", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    p.add_argument("--img", type=int, default=320, help="validation image size (mAP)")
    p.add_argument("--speed-img", type=int, nargs="+", default=[320, 640],
                   help="image sizes for the CPU timing")
    p.add_argument("--scopes", nargs="+", default=["global", "layer"],
                   help="channel allocation scopes to run (global, layer)")
    p.add_argument("--divisor", type=int, default=None,
                   help="channel: kept counts are multiples of this (default: oneDNN's block "
                        "on this CPU, 16 with AVX-512, else 8)")
    p.add_argument("--calib-images", type=int, default=128,
                   help="channel: refit the pruned convs on this many training images "
                        "(`yolo-ray prune --calib-images`; 0: surgery only)")
    p.add_argument("--finetune-epochs", type=int, default=5,
                   help="also fine-tune every channel variant this many epochs at --img "
                        "(0 or --no-map: skip)")
    p.add_argument("--finetune-amounts", type=float, nargs="+", default=None,
                   help="fine-tune only the channel variants of these amounts (default: all)")
    p.add_argument("--finetune-hyp", default=None,
                   help="hyp yaml for the fine-tunes (default hyp.scratch-low: mosaic etc.)")
    p.add_argument("--batch", type=int, default=16, help="validation batch size")
    p.add_argument("--speed-rounds", type=int, default=4, help="round-robin timing rounds")
    p.add_argument("--speed-runs", type=int, default=4, help="batch-1 forwards per round")
    p.add_argument("--stat", choices=("median", "min"), default="min",
                   help="per-variant timing statistic (min: the least disturbed by other "
                        "processes on a shared box, as timeit recommends)")
    p.add_argument("--threads", type=int, default=2, help="threads for validation/fine-tuning")
    p.add_argument("--speed-threads", type=int, nargs="+", default=[1, 2],
                   help="torch threads for the batch-1 timing (1: no OpenMP wake-ups)")
    p.add_argument("--no-holdout", action="store_true",
                   help="validate on the data yaml's val images (coco128: the same images the "
                        "refit and fine-tunes use); default: refit and fine-tune on the even-"
                        "numbered training images, validate every row on the odd-numbered ones")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune with the unpruned model's head as soft targets (--distill)")
    p.add_argument("--calib-sweep", type=int, nargs="+", default=None, metavar="N",
                   help="instead of the table: refit each channel variant on N images for "
                        "each N, and report its layers' residual on those images and on the "
                        "held-out ones, and its held-out mAP")
    p.add_argument("--no-map", action="store_true", help="skip validation (size/speed only)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    return p.parse_args(argv)


def holdout_split(data: str, out_dir: Path) -> Path:
    """A data yaml whose train images are the even-numbered (sorted) training images of `data`
    and whose val images are the odd-numbered ones: nothing is validated on an image that the
    refit or a fine-tune has seen (coco128's own yaml validates on its training images)."""
    import yaml

    from yolo_ray.config.load import load_data_config
    from yolo_ray.data.files import list_image_files

    cfg = load_data_config(data)
    images = list_image_files(cfg.train)
    if len(images) < 2:
        raise SystemExit(f"{data}: a held-out split needs at least 2 training images")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("fit.txt", images[0::2]), ("held_out.txt", images[1::2])):
        (out_dir / name).write_text("".join(f"{q}\n" for q in part))
    split = out_dir / "holdout.yaml"
    split.write_text(yaml.safe_dump({"path": str(out_dir), "train": "fit.txt",
                                     "val": "held_out.txt", "names": list(cfg.names)}))
    return split


def load_model(weights: str):
    """yolov5n built from the checkpoint's yaml with its weights loaded."""
    from yolo_ray.models.weights import load_weights, transfer_state_dict
    from yolo_ray.models.yolo import build_model

    sd, meta = load_weights(weights)
    model = build_model(meta.get("yaml") or "yolov5n", nc=meta.get("nc"))
    n, total = transfer_state_dict(model, sd)
    if n != total:
        raise SystemExit(f"{weights}: only {n}/{total} tensors matched")
    return model.eval()


def infer_ms(models: list, img: int, rounds: int, runs: int,
             stat: str = "median") -> list[float]:
    """Min (or median) batch-1 forward time (ms) of each BN-fused model, timed round-robin.

    Round-robin (every model `runs` forwards per round) so that load from other processes
    on a shared machine hits all variants alike.
    """
    import torch

    fused = [copy.deepcopy(m).eval().fuse() for m in models]
    x = torch.rand(1, 3, img, img, generator=torch.Generator().manual_seed(0))
    times: list[list[float]] = [[] for _ in fused]
    with torch.no_grad():
        for m in fused:  # warm-up
            m(x)
        for _ in range(rounds):
            for ts, m in zip(times, fused):
                for _ in range(runs):
                    t = time.perf_counter()
                    m(x)
                    ts.append(time.perf_counter() - t)
    pick = statistics.median if stat == "median" else min
    return [1000 * pick(ts) for ts in times]


def val_map(model, loader) -> tuple[float, float]:
    """mAP50, mAP50-95 with YOLOv5's validation settings (conf 0.001, IoU 0.6)."""
    from yolo_ray.train.validate import evaluate

    m = evaluate(model, loader, "cpu", conf_thres=0.001, iou_thres=0.6).metrics
    return m.map50, m.map


def measure(model, method: str, amount: float, loader) -> dict:
    """Size, sparsity and (when a loader is given) mAP of one variant."""
    from yolo_ray.models.prune import sparsity_report

    rep = sparsity_report(model, imgsz=640)
    row = {"method": method, "amount": amount, "params": rep.params,
           "sparsity_all": rep.sparsity_all, "sparsity_conv": rep.sparsity_conv,
           "gflops": rep.gflops}
    row["map50"], row["map"] = val_map(model, loader) if loader is not None else (None, None)
    print(f"# {method} {amount}: {row}", file=sys.stderr)
    return row


def speed_label(cfg: tuple[int, int], cfgs: list[tuple[int, int]]) -> str:
    """'@320' or, when several thread counts are timed, '@320 1t'."""
    one = len({t for _, t in cfgs}) == 1
    return f"@{cfg[0]}" if one else f"@{cfg[0]} {cfg[1]}t"


def _suffix(method: str) -> str:
    """' +30 ep' for a fine-tuned row's label, '' otherwise."""
    return method[method.index(" +"):] if " +" in method else ""


def _alike(row: dict, refs: dict[str, dict]) -> str:
    """mAP50-95 over the unpruned model's after the same fine-tune (coco128's train = val
    rewards memorising, so a fine-tuned row is compared with a fine-tuned reference too)."""
    ref = refs.get(_suffix(row["method"]))
    if not _suffix(row["method"]) or ref is None or row["map"] is None or not ref["map"]:
        return "n/a"
    return f"{row['map'] / ref['map']:.2f}"


def format_table(rows: list[dict], sizes: list[tuple[int, int]], markdown: bool) -> str:
    head = ["method", "amount", "params", "sparsity (all)", "sparsity (conv)", "GFLOPs@640"]
    head += [h for n in sizes for h in (f"CPU ms/img b1 {speed_label(n, sizes)}",
                                        f"speed-up {speed_label(n, sizes)}")]
    head += ["mAP50", "mAP50-95", "mAP50-95 vs none", "vs none fine-tuned alike"]
    base = rows[0]
    tuned_ref = {_suffix(r["method"]): r for r in rows if r["method"].startswith("none")}
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = []
    for r in rows:
        rel = None if r["map"] is None or not base["map"] else r["map"] / base["map"]
        lines.append([r["method"], str(r["amount"]), f"{r['params']:,}",
                      f"{r['sparsity_all']:.3f}", f"{r['sparsity_conv']:.3f}", f"{r['gflops']:.2f}"]
                     + [x for n in sizes for x in (f"{r['ms'][n]:.1f}",
                                                   f"{base['ms'][n] / r['ms'][n]:.2f}×")]
                     + [fmt(r["map50"]), fmt(r["map"]), "n/a" if rel is None else f"{rel:.2f}",
                        _alike(r, tuned_ref)])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(x) + " |" for x in lines])
    w = [max(len(x) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(x.rjust(n) for x, n in zip(row, w)) for row in [head, *lines])


def default_divisor() -> int:
    """oneDNN's fp32 channel block on this CPU: 16 with AVX-512, else 8."""
    import torch

    return 16 if "AVX512" in torch.backends.cpu.get_cpu_capability() else 8


def prune_variants(model, args) -> list[tuple[str, float, object]]:
    """(label, amount, pruned model) for every method × amount (× scope for 'channel')."""
    from yolo_ray.models.prune import prune_model
    from yolo_ray.train.prune_run import calibration_images

    # (timing alone does not depend on the weights: no refit with --no-map)
    calib = (calibration_images(args.data, args.img, args.calib_images, args.batch)
             if args.calib_images > 0 and "channel" in args.methods and not args.no_map
             else None)
    out = []
    for m in args.methods:
        scopes = args.scopes if m == "channel" else ["global"]
        for scope in scopes:
            label = m if scope == "global" else f"{m}/{scope}"
            for a in args.amounts:
                t = time.perf_counter()
                kw = dict(calib=calib, reconstruct=calib is not None,
                          divisor=args.divisor) if m == "channel" else {}
                out.append((label, a, prune_model(model, a, m, imgsz=None, scope=scope,
                                                  **kw).model.eval()))
                print(f"# pruned {label} {a}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out


def calib_sweep(model, loader, args) -> str:
    """Markdown rows: per channel variant and calibration size, the refitted layers' mean
    residual on the calibration images and on the validation images, the layer that
    generalises worst, and the validation mAP."""
    from yolo_ray.models.prune import prune_model
    from yolo_ray.train.prune_run import (calibration_images, largest_gaps, mean_residual,
                                          refit_residuals)

    held = calibration_images(args.data, args.img, 10**9, args.batch, split="val")
    lines = ["| variant | amount | calibration images | layer residual (calibration) | "
             "layer residual (held-out) | worst layer (calibration → held-out) | "
             "mAP50-95 (held-out) |", "|---|---|---|---|---|---|---|"]
    for scope in args.scopes:
        for amount in args.amounts:
            for n in args.calib_sweep:
                calib = calibration_images(args.data, args.img, n, args.batch)
                r = prune_model(model, amount, "channel", imgsz=None, scope=scope, calib=calib,
                                reconstruct=True, divisor=args.divisor)
                seen, unseen = refit_residuals(model, r, calib, held)
                worst = largest_gaps(seen, unseen, 1)[0]
                label = "channel" if scope == "global" else f"channel/{scope}"
                lines.append(f"| {label} | {amount:g} | {sum(len(b) for b in calib)} | "
                             f"{mean_residual(seen):.3f} | {mean_residual(unseen):.3f} | {worst} "
                             f"{seen[worst]:.2f} → {unseen[worst]:.2f} | "
                             f"{val_map(r.model.eval(), loader)[1]:.3f} |")
                print(f"# {lines[-1]}", file=sys.stderr, flush=True)
    return "\n".join(lines)


def finetuned(model, variants, args, out_dir: Path) -> list[tuple[str, float, object]]:
    """The unpruned model (the same protocol's reference) and every channel variant
    fine-tuned `args.finetune_epochs` epochs on the data at --img with --finetune-hyp."""
    from yolo_ray.train.prune_run import PruneRequest, finetune_pruned, save_pruned
    from yolo_ray.train.val_run import ValRequest, load_model_for_inference

    val = ValRequest(weights=args.weights, data=args.data, imgsz=args.img,
                     batch_size=args.batch * 2, device="cpu", workers=2)
    out = []
    for i, (label, amount, v) in enumerate(variants):
        if not (label.startswith("channel") or label == "none"):
            continue
        if label != "none" and args.finetune_amounts and amount not in args.finetune_amounts:
            continue
        req = PruneRequest(val, amount, "channel", out_dir / f"{i}", args.finetune_epochs,
                           hyp=args.finetune_hyp, batch_size=args.batch, workers=2,
                           distill=args.distill)
        path = save_pruned(req.out / "pruned.pt", v, model.yaml, list(model.names), amount,
                           "channel")
        t = time.perf_counter()
        last = finetune_pruned(req, path)
        print(f"# fine-tuned {label} {amount}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        out.append((f"{label} +{args.finetune_epochs} ep", amount,
                    load_model_for_inference(str(last)).float().eval()))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    # Sleeping (not spinning) OpenMP workers: a shared machine otherwise slows torch ~10×.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> int:
    """The benchmark, its split yaml and fine-tune runs under `tmp`."""
    import torch

    from yolo_ray.config.load import load_data_config
    from yolo_ray.data.files import list_image_files
    from yolo_ray.data.loader import create_val_loader

    torch.set_num_threads(args.threads)
    args.divisor = args.divisor or default_divisor()
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    holdout = not args.no_holdout and not args.no_map
    if holdout:
        args.data = str(holdout_split(args.data, tmp / "split"))
        fit_images = len(list_image_files(load_data_config(args.data).train))
        args.calib_images = min(args.calib_images, fit_images)  # for the header line
    model = load_model(args.weights)
    loader = None if args.no_map else create_val_loader(
        load_data_config(args.data), args.img, args.batch, stride=32, workers=0,
        log=lambda *a, **k: None)
    if args.calib_sweep:
        print(f"# {Path(args.weights).name}, refit on the first N of the "
              f"{'even-numbered' if holdout else 'training'} images, residuals and mAP on "
              f"the {'odd-numbered' if holdout else 'val'} ones, at {args.img}; kept counts "
              f"multiples of {args.divisor}")
        print(calib_sweep(model, loader, args))
        return 0
    variants = [("none", 0.0, model)] + prune_variants(model, args)
    if args.finetune_epochs > 0 and not args.no_map:
        variants += finetuned(model, variants, args, tmp / "finetune")
        torch.set_num_threads(args.threads)  # the trainer may have changed it
    rows = [measure(v, m, a, loader) for m, a, v in variants]
    cfgs = [(n, t) for n in args.speed_img for t in args.speed_threads]
    for n, t in cfgs:
        torch.set_num_threads(t)
        for row, ms in zip(rows, infer_ms([v for *_, v in variants], n, args.speed_rounds,
                                          args.speed_runs, args.stat)):
            row.setdefault("ms", {})[(n, t)] = ms
    torch.set_num_threads(args.threads)
    refit = args.calib_images > 0 and not args.no_map  # (--no-map skips the refit too)
    ch = (f"channel: kept counts multiples of {args.divisor}, "
          + (f"refitted on {args.calib_images} training images" if refit
             else "surgery only") + "; ")
    which = ("channel variants" if not args.finetune_amounts else "channel variants of "
             + "/".join(f"{a:g}" for a in args.finetune_amounts))
    ft = ch + (f"{which} (and the unpruned model) also fine-tuned {args.finetune_epochs} "
               f"epochs at {args.img}"
               + (" with --distill" if args.distill else "")
               if args.finetune_epochs and not args.no_map else "no fine-tuning")
    split = ("held-out: refit and fine-tunes on the even-numbered images, mAP on the odd-"
             "numbered ones" if holdout else "no mAP" if args.no_map
             else "mAP on the data yaml's val images")
    print(f"# {Path(args.weights).name}, {split}, val at {args.img}, CPU batch-1 timing at "
          f"{'/'.join(map(str, args.speed_img))} ({args.stat} of {args.speed_rounds}×"
          f"{args.speed_runs}, {'/'.join(map(str, args.speed_threads))} threads), "
          f"{args.threads} threads for val "
          f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), {ft}; load average "
          f"{load0:.2f} → {os.getloadavg()[0]:.2f}; {time.perf_counter() - t0:.0f} s")
    print(format_table(rows, cfgs, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
