"""Benchmark: training images/s and peak memory for --freeze 0/10/24 (and YOLOv5's BN mode).

Speed: one process per model builds every config and times them round-robin, so load spikes
on a shared machine hit all configs alike; per-iteration times give img/s from the median and
from the best iteration. Memory: a fresh process per config (ru_maxrss is per process) runs
three steps. A step is YOLOv5's: forward, ComputeLoss, backward, grad-norm clip 10, nesterov
SGD over the trainer's parameter groups (frozen parameters get no optimizer state).

    python bench/freeze.py                     # the run recorded in docs/benchmarks.md
    python bench/freeze.py --models yolov5n --img 160 --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# (label, freeze count, bn_stats_fixed); "yolov5" rows = YOLOv5's own behaviour
CONFIGS = {
    "0": (0, True),
    "10-yolov5": (10, False),
    "10": (10, True),
    "24-yolov5": (24, False),
    "24": (24, True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                   help="freeze configs; '-yolov5' = BN stats update, no folding (YOLOv5)")
    p.add_argument("--img", type=int, default=256, help="square image size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per config per round")
    p.add_argument("--repeats", type=int, default=5, help="round-robin rounds over the configs")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--omp-wait", default="PASSIVE", choices=("PASSIVE", "ACTIVE"),
                   help="OMP_WAIT_POLICY for the workers (PASSIVE survives a shared machine)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _batch(bs: int, img: int, nc: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(bs, 3, img, img, generator=g)
    n = 4 * bs  # four boxes per image
    xy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.25 + 0.05
    cls = torch.randint(0, nc, (n, 1), generator=g).float()
    bi = torch.arange(bs).repeat_interleave(4).float().unsqueeze(1)
    return imgs, torch.cat([bi, cls, xy, wh], 1)


def _setup(name: str, label: str, img: int, batch: int):
    """Model with the config's freeze applied, its optimizer and a training-step closure."""
    import torch

    from yolo_ray.config.load import load_hyp
    from yolo_ray.models.freeze import apply_freeze, parse_freeze_spec, set_train_mode
    from yolo_ray.models.yolo import build_model
    from yolo_ray.train.loss import ComputeLoss
    from yolo_ray.train.optim import build_optimizer, split_param_groups

    count, fixed = CONFIGS[label]
    model = build_model(name)
    report = apply_freeze(model, parse_freeze_spec([count], model.yaml, len(model.model)), fixed)
    hyp = load_hyp()
    opt = build_optimizer(split_param_groups(model), "SGD", hyp.lr0, hyp.momentum, hyp.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = ComputeLoss(model, hyp, img)
    batches = [_batch(batch, img, model.nc, s) for s in range(4)]
    set_train_mode(model, report)

    def step(i: int) -> None:
        imgs, targets = batches[i % len(batches)]
        loss, _ = loss_fn(model(imgs), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return report, step


def speed_worker(args: argparse.Namespace, name: str) -> dict:
    """All configs of one model in one process, timed round-robin so load spikes hit all alike."""
    import torch

    torch.set_num_threads(args.threads)
    setups = {c: _setup(name, c, args.img, args.batch) for c in args.configs}
    times: dict[str, list[float]] = {c: [] for c in args.configs}
    for _, step in setups.values():
        for i in range(args.warmup):
            step(i)
    for _ in range(args.repeats):
        for c, (_, step) in setups.items():
            for i in range(args.iters):
                t = time.perf_counter()
                step(i)
                times[c].append(time.perf_counter() - t)
    return {c: {"median_img_s": args.batch / statistics.median(ts),
                "best_img_s": args.batch / min(ts),
                "trainable": setups[c][0].trainable_params, "fused": setups[c][0].fused_convs}
            for c, ts in times.items()}


def memory_worker(args: argparse.Namespace, name: str, label: str) -> dict:
    """Peak RSS of one config after a few steps (a fresh process: ru_maxrss is per process)."""
    import torch

    torch.set_num_threads(args.threads)
    _, step = _setup(name, label, args.img, args.batch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(3):
        step(i)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_mb": rss / 1024, "train_rss_mb": (rss - rss0) / 1024}


def _sub(args: argparse.Namespace, *worker: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", *worker, "--img", str(args.img),
           "--batch", str(args.batch), "--warmup", str(args.warmup), "--iters", str(args.iters),
           "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--omp-wait", args.omp_wait, "--configs", *args.configs]
    # PASSIVE: on a shared machine, spinning OpenMP threads collapse throughput ~10× whenever
    # another process holds a core; idle threads that sleep cost little when it is quiet.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": args.omp_wait}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"worker {worker} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_model(args: argparse.Namespace, model: str) -> list[dict]:
    speed = _sub(args, "speed", model)
    rows = []
    for c in args.configs:
        rows.append({"model": model, "config": c, **speed[c], **_sub(args, "memory", model, c)})
        print(f"# {model} freeze {c}: {rows[-1]['median_img_s']:.1f} img/s", file=sys.stderr)
    return rows


def format_table(rows: list[dict], markdown: bool) -> str:
    """Side-by-side table; ratios are against freeze 0 of the same model and run."""
    base = {r["model"]: r for r in rows if r["config"] == "0"}
    head = ["model", "freeze", "trainable params", "img/s median", "× freeze 0", "img/s best",
            "× freeze 0 (best)", "peak RSS MB", "train RSS Δ MB"]
    lines = []
    for r in rows:
        b = base.get(r["model"])
        rm = f"{r['median_img_s'] / b['median_img_s']:.2f}" if b else "-"
        rb = f"{r['best_img_s'] / b['best_img_s']:.2f}" if b else "-"
        lines.append([r["model"], r["config"], f"{r['trainable']:,}",
                      f"{r['median_img_s']:.1f}", rm, f"{r['best_img_s']:.1f}", rb,
                      f"{r['peak_rss_mb']:.0f}", f"{r['train_rss_mb']:.0f}"])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(x) + " |" for x in lines])
    w = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    return "\n".join("  ".join(str(x).rjust(n) for x, n in zip(row, w)) for row in [head, *lines])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        fn = speed_worker if kind == "speed" else memory_worker
        print(json.dumps(fn(args, *rest)))
        return 0
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = [r for model in args.models for r in run_model(args, model)]
    print(f"# img {args.img}, batch {args.batch}, {args.threads} threads (OMP_WAIT_POLICY="
          f"{args.omp_wait}), warmup {args.warmup}, "
          f"{args.repeats} round-robin rounds × {args.iters} iterations per config; "
          f"load average {load0:.2f} → {os.getloadavg()[0]:.2f}; {time.perf_counter() - t0:.0f} s")
    print(format_table(rows, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
