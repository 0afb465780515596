"""Benchmark: per-trial overhead with data shipped through Ray vs read from local disk, ± actor reuse.

One classic evolution per setting, side by side in one run, each on its own fresh local Ray
(2 CPUs, one trial at a time, 1 CPU per trial) over the same synthetic dataset:

    local   × reuse      trials read the data folder in place; a finished trial's worker runs
                         the next trial (the default)
    local   × no reuse   a fresh Ray worker per trial (EvolveRequest.reuse_actors=False)
    shipped × reuse      data packed on the driver, passed through the object store
                         (tune.with_parameters), extracted into this node's cache by the first
                         trial (cache miss) and reused by later ones (cache hit)
    shipped × no reuse

Per trial, from the run's own timestamps (bench/evolve_overhead.py's definitions): before =
loop start - suggestion (spawn = trial function start - suggestion, setup = loop start - trial
function start: data extraction or cache lookup, label scan, model build), after = row in
evolve.csv - loop end. "First" is a run's first trial (cold worker; with shipping, the cache
miss), "later" its other trials (cache hits); medians over --rounds interleaved repeats. A direct timing without Ray adds what
shipping costs once: packing on the driver, extraction (miss) and lookup (hit) on a node, and
the label scan a node skips because the bundle carries the driver's label cache.

    python bench/shipping.py               # the run recorded in docs/benchmarks.md
    python bench/shipping.py --n-train 128 --generations 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evolve_overhead import summarize, trial_overheads  # bench/ is sys.path[0] when run

# Local and shipped back to back: on a shared box the load drifts, neighbours compare best.
SETTINGS = (("local", True), ("shipped", True), ("local", False), ("shipped", False))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="yolov5n")
    p.add_argument("--img", type=int, default=64, help="training image size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--generations", type=int, default=4, help="trials per setting")
    p.add_argument("--n-train", type=int, default=512, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=64, help="synthetic validation images")
    p.add_argument("--data-img", type=int, default=320, help="size of the generated images")
    p.add_argument("--cpus", type=int, default=2, help="CPUs given to each local Ray")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the direct timings")
    p.add_argument("--rounds", type=int, default=2,
                   help="times each setting runs (interleaved); medians over all rounds")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def direct_costs(data: str, root: Path, repeats: int) -> dict[str, float]:
    """Pack (driver), extract = miss and lookup = hit (node), label scan skipped vs done."""
    from yolo_ray.cluster.shipping import materialize, ship
    from yolo_ray.config.load import load_data_config
    from yolo_ray.data.files import default_cache_path, list_image_files
    from yolo_ray.data.scan import scan_labels

    shipped = ship(data)  # once first: the driver's own label cache now exists
    pack_s = _median_time(lambda: ship(data), repeats)
    count = iter(range(repeats))
    miss_s = _median_time(lambda: materialize(shipped.blob, shipped.digest,
                                              root / f"direct-{next(count)}"), repeats)
    copy, _ = materialize(shipped.blob, shipped.digest, root / "direct-0")
    hit_s = _median_time(lambda: materialize(shipped.blob, shipped.digest, root / "direct-0"),
                         repeats)
    cfg = load_data_config(copy)
    files = list_image_files(cfg.train) + list_image_files(cfg.val)

    def scan(cached: bool) -> None:
        for split in (cfg.train, cfg.val):
            f = list_image_files(split)
            got = scan_labels(f, cfg.nc, default_cache_path(f) if cached else None, log=str)
            assert got.from_cache == cached

    return {"blob_mb": len(shipped.blob) / 2**20, "images": len(files), "pack_s": pack_s,
            "extract_miss_s": miss_s, "lookup_hit_s": hit_s,
            "scan_cached_s": _median_time(lambda: scan(True), repeats),
            "scan_full_s": _median_time(lambda: scan(False), repeats)}


def run_setting(args: argparse.Namespace, data: str, root: Path, source: str,
                reuse: bool, round_: int) -> list[dict[str, float]]:
    """One classic evolution on a fresh local Ray; its per-trial overheads, in trial order."""
    import ray

    from yolo_ray.cluster.launch import run_evolution
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.cluster.shipping import CACHE_ENV
    from yolo_ray.config.load import load_hyp

    name = f"{source}-{'reuse' if reuse else 'fresh'}-{round_}"
    cache = root / f"cache-{name}"
    # address="local": a fresh Ray even when other `ray start` clusters run on this machine;
    # the env vars reach the trial workers (an empty node cache per setting), as in launch.py.
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), CACHE_ENV: str(cache)}
    ray.init(address="local", num_cpus=args.cpus, num_gpus=0, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    try:
        request = EvolveRequest(
            run_dir=root / name, data=data, hyp=load_hyp(), cfg=args.cfg, epochs=args.epochs,
            generations=args.generations, imgsz=args.img, batch_size=args.batch_size,
            workers=0, gpus_per_trial=0.0, cpus_per_trial=1, max_concurrent=1,
            ship_data=source == "shipped", reuse_actors=reuse, tensorboard=False, verbose=0)
        summary = run_evolution(request)
    finally:
        ray.shutdown()
    assert summary.rows == args.generations, summary
    copies = [p for p in cache.iterdir() if p.is_dir()] if cache.is_dir() else []
    assert len(copies) == (1 if source == "shipped" else 0), copies  # one extraction per node
    return trial_overheads(summary.timings)


def combine(source: str, reuse: bool, runs: list[list[dict[str, float]]]) -> dict:
    """Medians over rounds: each run's first trial is 'first', all others 'later'."""
    firsts, laters = [r[0] for r in runs], [t for r in runs for t in r[1:]]
    return {"source": source, "reuse": reuse, **summarize(firsts + laters, len(firsts)),
            "per_trial": runs}


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}×" if base > 0 else "-"


def markdown(results: list[dict], direct: dict[str, float]) -> str:
    local = {r["reuse"]: r for r in results if r["source"] == "local"}
    lines = [("| data | actor reuse | first trial: before loop (start + setup) | later trials: "
              "before loop (start + setup) | later: after loop | before loop ÷ local, same reuse: "
              "first / later | outside share, later trials (projected 60 s trial) |"),
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['source']} | {'yes' if r['reuse'] else 'no'} | {r['cold_before_s']:.2f} "
            f"({r['cold_spawn_s']:.2f} + {r['cold_setup_s']:.2f}) s | "
            f"{r['warm_before_s']:.2f} ({r['warm_spawn_s']:.2f} + {r['warm_setup_s']:.2f}) s | "
            f"{r['warm_after_s']:.2f} s | "
            f"{_ratio(r['cold_before_s'], local[r['reuse']]['cold_before_s'])} / "
            f"{_ratio(r['warm_before_s'], local[r['reuse']]['warm_before_s'])} | "
            f"{100 * r['warm_share']:.1f} % ({100 * r['projected_share_60s']:.2f} %) |")
    d = direct
    lines += ["", ("| shipped bundle | pack on the driver | extract on a node (miss) | cache "
                   "hit | label scan on a node: skipped (shipped cache) / full rescan |"),
              "|---|---|---|---|---|",
              (f"| {d['blob_mb']:.1f} MiB, {d['images']} images | {d['pack_s']:.2f} s | "
               f"{d['extract_miss_s']:.2f} s | {1000 * d['lookup_hit_s']:.2f} ms | "
               f"{d['scan_cached_s']:.3f} s / {d['scan_full_s']:.3f} s "
               f"({_ratio(d['scan_full_s'], d['scan_cached_s'])}) |")]
    return "\n".join(lines)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from yolo_ray.data.synthetic import write_synthetic_dataset

    load_before = _uptime()
    with tempfile.TemporaryDirectory(prefix="shipping_bench_") as tmp:
        root = Path(tmp)
        data = str(write_synthetic_dataset(root / "data", n_train=args.n_train, n_val=args.n_val,
                                           imgsz=args.data_img, seed=0))
        direct = direct_costs(data, root, args.repeats)  # also writes the driver's label cache
        runs: dict[tuple[str, bool], list] = {s: [] for s in SETTINGS}
        for round_ in range(args.rounds):
            for source, reuse in SETTINGS:
                runs[(source, reuse)].append(run_setting(args, data, root, source, reuse, round_))
        results = [combine(source, reuse, runs[(source, reuse)]) for source, reuse in SETTINGS]
    load_after = _uptime()
    print("python bench/shipping.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"uptime before: {load_before}\nuptime after:  {load_after}")
    print(markdown(results, direct))
    if args.json:
        Path(args.json).write_text(json.dumps({"direct": direct, "results": results,
                                               "uptime": [load_before, load_after],
                                               "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
