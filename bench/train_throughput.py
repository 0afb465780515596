"""Training images/s of yolo-ray's real step vs the raw forward+backward ceiling, one run.

Usage: python bench/train_throughput.py [--cfg yolov5n] [--img 160] [--batch 16] [--threads 2]
       python bench/train_throughput.py --matrix [--cfgs yolov5n yolov5s] [--freeze 0 10 24]

"raw" = model(x) on random tensors, sum of outputs, backward (no data, no loss, no optimizer);
"ours" = Trainer's train_one_epoch with the RAM-cached, augmented loader, ComputeLoss, SGD with
accumulation, grad clipping and EMA — same model, image size, batch and threads. Variants are
measured side by side and reported as ratios to the raw ceiling.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from yolo_ray.config.load import load_hyp
from yolo_ray.config.schema import TrainSettings
from yolo_ray.data.synthetic import write_synthetic_dataset
from yolo_ray.train.loop import train_one_epoch
from yolo_ray.train.trainer import Trainer


def raw_ceiling(model: torch.nn.Module, batch: int, img: int, steps: int,
                channels_last: bool = False) -> float:
    """Images/s of forward + backward on random input (the compute ceiling)."""
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, img, img, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        sum(o.sum() for o in model(x)).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        sum(o.sum() for o in model(x)).backward()
    return steps * batch / (time.perf_counter() - t0)


def ours(trainer: Trainer, batches: int) -> float:
    """Images/s of the real training step over `batches` batches (after a warm-up epoch)."""
    ctx = trainer._epoch_context()
    loader = trainer.train_loader
    trainer.train_loader.dataset.set_epoch(0)
    train_one_epoch(ctx)  # warm-up: allocator, caches
    t0 = time.perf_counter()
    n = 0
    while n < batches:
        ctx = trainer._epoch_context()
        stats = train_one_epoch(ctx)
        n += stats.batches
        trainer.last_opt_step = stats.last_opt_step
    return n * loader.batch_size / (time.perf_counter() - t0)


def build(cfg: str, data: Path, img: int, batch: int, threads: int, workers: int,
          channels_last: bool, freeze: int = 0) -> Trainer:
    settings = TrainSettings(data=str(data), cfg=cfg, epochs=10, batch_size=batch, imgsz=img,
                             workers=workers, device="cpu", threads=threads, cache="ram",
                             progress=False, tensorboard=False, channels_last=channels_last,
                             freeze=(freeze,))
    return Trainer(settings, load_hyp(), write_files=False).setup()


def matrix(a: argparse.Namespace, data: Path) -> list[str]:
    """Default step (channels-last, workers 0) vs the raw ceiling of the same frozen model.

    The raw ceiling runs the model exactly as the trainer holds it (frozen prefix without
    autograd, folded BN), so the ratio isolates what the step adds: data, loss, optimizer, EMA.
    """
    lines = ["| model | freeze | raw fwd+bwd img/s | ours img/s | ours / raw | ours × freeze 0 |",
             "|---|---|---|---|---|---|"]
    steps = max(a.images // a.batch, 1)
    for cfg in a.cfgs:
        base = None
        for f in a.freeze:
            trainer = build(cfg, data, a.img, a.batch, a.threads, 0, True, f)
            raw, real = [], []
            for _ in range(a.repeats):  # interleaved, so load drift hits both alike
                raw.append(raw_ceiling(trainer.model, a.batch, a.img, steps, True))
                real.append(ours(trainer, steps))
            r, o = statistics.median(raw), statistics.median(real)
            base = base or o
            lines.append(f"| {cfg} | {f} | {r:.1f} | {o:.1f} | {o / r:.3f} | {o / base:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="yolov5n")
    p.add_argument("--img", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=128, help="synthetic training images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matrix", action="store_true",
                   help="the default step vs its raw ceiling for --cfgs x --freeze")
    p.add_argument("--cfgs", nargs="+", default=["yolov5n", "yolov5s"])
    p.add_argument("--freeze", nargs="+", type=int, default=[0, 10, 24])
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "syn", n_train=a.images, n_val=8,
                                       imgsz=a.img, seed=0)
        if a.matrix:
            print(f"# img {a.img}, batch {a.batch}, threads {a.threads}, {a.images} images, "
                  f"median of {a.repeats}, channels-last, workers 0")
            print("\n".join(matrix(a, data)))
            return 0
        rows = []
        plain_raw = None
        for label, cl, workers in (("NCHW (workers 0)", False, 0), ("NCHW (workers 1)", False, 1),
                                   ("channels-last, the default (workers 0)", True, 0)):
            trainer = build(a.cfg, data, a.img, a.batch, a.threads, workers, cl)
            steps = max(a.images // a.batch, 1)
            raw = [raw_ceiling(trainer.model, a.batch, a.img, steps, cl) for _ in range(a.repeats)]
            real = [ours(trainer, steps) for _ in range(a.repeats)]
            rows.append((label, statistics.median(raw), statistics.median(real)))
            plain_raw = plain_raw or rows[0][1]
        print(f"# {a.cfg}, img {a.img}, batch {a.batch}, threads {a.threads}, "
              f"{a.images} images, median of {a.repeats}")
        print("| our step | raw fwd+bwd img/s (same format) | ours img/s | ours / raw (same "
              "format) | ours / raw NCHW model |")
        print("|---|---|---|---|---|")
        for label, raw, real in rows:
            print(f"| {label} | {raw:.1f} | {real:.1f} | {real / raw:.3f} | "
                  f"{real / plain_raw:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
