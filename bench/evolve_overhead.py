"""Benchmark: per-trial time outside the training loop, and trials/hour with 1 vs 2 CPU slots.

Runs classic evolutions on one local Ray (2 CPUs) over the synthetic dataset, one per slot
setting SLOTSxCPUS: 1x1 (one trial at a time, 1 torch thread), 2x1 (two at a time, 1 thread
each) and 1x2 (one at a time, 2 threads). Per trial, from the timestamps the run
records (suggestion in the searcher, loop start/end in the trial, row written by the driver):

    before = loop start - suggestion     (queueing, actor start, imports, data scan, model build)
    after  = row written - loop end      (final report, Tune bookkeeping, store append)
    share  = (before + after) / (row written - suggestion)

"Loop" is Trainer.fit(): every epoch plus the final validation; of it, the seconds spent on
checkpoints (save, and the report that carries it) and inside tune.report (which returns only
once the driver has taken the result: the trial's core waits meanwhile). Beside each setting,
the same trials run in SLOTS bare processes (multiprocessing, no Ray, no Tune): the machine's
own concurrency ceiling, so "2 slots vs 1" can be read against what two processes get here at
all. The first trial of each slot starts a cold Ray worker (process spawn, torch import), later
ones reuse it (reuse_actors), so both are reported. Trials/hour = trials / (last row written - first suggestion); the warm figure
leaves out the cold first trial of each slot. The steady figure counts trials (fractionally, by
time) inside the window where every slot runs warm trials, from the last cold trial's end to the
first time a slot runs out of work: a short run's start and tail, where one slot is still cold or
already idle, would otherwise weigh on the 2-slot figure only (in a 300-generation run they are
a few trials of hundreds).

    python bench/evolve_overhead.py                 # the run recorded in docs/benchmarks.md
    python bench/evolve_overhead.py --generations 4 --epochs 2 --img 64
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="yolov5n")
    p.add_argument("--img", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--generations", type=int, default=6, help="trials per slot setting")
    p.add_argument("--n-train", type=int, default=64, help="synthetic training images")
    p.add_argument("--configs", nargs="+", default=["1x1", "2x1", "1x2"],
                   help="SLOTSxCPUS settings to compare (concurrent trials x CPUs each)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every setting this many times, interleaved; medians reported")
    p.add_argument("--no-bare", dest="bare", action="store_false",
                   help="skip the bare-process ceiling runs")
    return p.parse_args(argv)


def trial_overheads(timings: tuple[dict[str, float], ...]) -> list[dict[str, float]]:
    """Per trial: before/after/loop/total seconds and the share outside the loop."""
    out = []
    for t in sorted(timings, key=lambda t: t["suggested"]):
        before, after = t["loop_start"] - t["suggested"], t["recorded"] - t["loop_end"]
        total = t["recorded"] - t["suggested"]
        out.append({"before": before, "after": after, "loop": t["loop_end"] - t["loop_start"],
                    "spawn": t["trial_start"] - t["suggested"],
                    "setup": t["loop_start"] - t["trial_start"],
                    "checkpoint": t.get("checkpoint", 0.0), "report": t.get("report", 0.0),
                    "total": total, "share": (before + after) / total,
                    "suggested": t["suggested"], "recorded": t["recorded"]})
    return out


def steady_rate(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Trials/hour inside [start, end]: each (begin, finish) span counts its share of time there."""
    if end <= start:
        return math.nan
    done = sum(max(0.0, min(f, end) - max(b, start)) / (f - b) for b, f in spans if f > b)
    return 3600 * done / (end - start)


def steady_window(first_spans: list[tuple[float, float]], spans: list[tuple[float, float]]
                  ) -> tuple[float, float]:
    """From the end of the last slot's first (cold) trial to the first finish after the last
    trial began: in between every slot is busy with warm trials."""
    last_begin = max(b for b, _ in spans)
    return max(f for _, f in first_spans), min(f for _, f in spans if f > last_begin)


def summarize(trials: list[dict[str, float]], slots: int) -> dict[str, float]:
    """Cold (first trial per slot) vs warm medians and throughput."""
    cold, warm = trials[:slots], trials[slots:] or trials[:slots]
    spans = [(t["suggested"], t["recorded"]) for t in trials]
    span = max(t["recorded"] for t in trials) - min(t["suggested"] for t in trials)

    def med(rows: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    warm_outside = med(warm, "before") + med(warm, "after")
    warm_span = max(t["recorded"] for t in warm) - min(t["suggested"] for t in warm)
    return {
        "slots": slots, "trials": len(trials), "span_s": span,
        "trials_per_hour": 3600 * len(trials) / span,
        "warm_trials_per_hour": 3600 * len(warm) / warm_span,
        "steady_trials_per_hour": steady_rate(spans, *steady_window(spans[:slots], spans)),
        "cold_before_s": med(cold, "before"), "cold_after_s": med(cold, "after"),
        "warm_before_s": med(warm, "before"), "warm_after_s": med(warm, "after"),
        "warm_loop_s": med(warm, "loop"), "warm_share": med(warm, "share"),
        "warm_checkpoint_s": med(warm, "checkpoint"), "warm_report_s": med(warm, "report"),
        "cold_spawn_s": med(cold, "spawn"), "cold_setup_s": med(cold, "setup"),
        "warm_spawn_s": med(warm, "spawn"), "warm_setup_s": med(warm, "setup"),
        "cold_share": med(cold, "share"),
        "share_all": sum(t["before"] + t["after"] for t in trials) / sum(t["total"] for t in trials),
        "projected_share_60s": warm_outside / (60.0 + warm_outside),
    }


def make_request(args: argparse.Namespace, data: str, root: Path, config: str,
                 tag: str = "") -> Any:
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.config.load import load_hyp

    slots, cpus = (int(x) for x in config.split("x"))
    return EvolveRequest(
        run_dir=root / f"{config}{tag}", data=data, hyp=load_hyp(), cfg=args.cfg,
        epochs=args.epochs, generations=args.generations, imgsz=args.img,
        batch_size=args.batch_size, workers=0, gpus_per_trial=0.0,
        cpus_per_trial=cpus, max_concurrent=slots, verbose=0)


def bare_trials(request: Any, seeds: list[int]) -> list[tuple[float, float]]:
    """In a bare process: one full trial (setup + fit) per seed; (start, end) wall times."""
    from yolo_ray.train.trainer import Trainer

    spans = []
    for seed in seeds:
        t0 = time.time()
        trainer = Trainer(request.trial_settings(None, (), seed=seed), request.hyp,
                          write_files=False)
        trainer.setup()
        trainer.fit()
        spans.append((t0, time.time()))
    return spans


def run_bare(args: argparse.Namespace, data: str, root: Path, config: str, tag: str = ""
             ) -> tuple[float, float]:
    """Warm and steady trials/hour of the same trials in SLOTS plain processes (first trial of
    each left out: process start and imports, as a cold Ray worker)."""
    import multiprocessing as mp

    request = make_request(args, data, root, config, tag)
    slots = request.max_concurrent
    seeds = [[i for i in range(args.generations) if i % slots == k] for k in range(slots)]
    with mp.get_context("spawn").Pool(slots) as pool:
        spans = pool.starmap(bare_trials, [(request, s) for s in seeds])
    warm = [span for per_proc in spans for span in per_proc[1:]]
    # Not steady_window: each process has its own fixed list (no shared queue as under the
    # ConcurrencyLimiter), so every process is busy until the first one finishes its list.
    start, end = max(p[0][1] for p in spans), min(p[-1][1] for p in spans)
    return (3600 * len(warm) / (max(e for _, e in warm) - min(s for s, _ in warm)),
            steady_rate([span for p in spans for span in p], start, end))


def run_once(args: argparse.Namespace, data: str, root: Path, config: str, tag: str = ""
             ) -> dict[str, float]:
    from yolo_ray.cluster.launch import run_evolution

    slots, cpus = (int(x) for x in config.split("x"))
    summary = run_evolution(make_request(args, data, root, config, tag))
    assert summary.rows == args.generations, summary
    trials = trial_overheads(summary.timings)
    stats = summarize(trials, slots)
    stats["wall_s"], stats["cpus"] = summary.wall_s, cpus
    stats["per_trial"] = trials  # type: ignore[assignment]
    return stats


def markdown(results: list[dict[str, float]], ray_init_s: float) -> str:
    header = ("| slots × CPUs | trials | trials/hour (warm only; steady) | loop (warm; of which "
              "checkpoints; in tune.report) "
              "| before loop cold / warm "
              "(start + setup) | after loop cold / warm | outside share warm (all) | "
              "projected, 60 s trial |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {int(r['slots'])} × {int(r['cpus'])} | {int(r['trials'])} | "
            f"{r['trials_per_hour']:.0f} ({r['warm_trials_per_hour']:.0f}; "
            f"{r['steady_trials_per_hour']:.0f}) | "
            f"{r['warm_loop_s']:.1f} s ({r['warm_checkpoint_s']:.2f}; "
            f"{r['warm_report_s']:.2f} s) | "
            f"{r['cold_before_s']:.1f} ({r['cold_spawn_s']:.1f} + "
            f"{r['cold_setup_s']:.1f}) / {r['warm_before_s']:.2f} ({r['warm_spawn_s']:.2f} + "
            f"{r['warm_setup_s']:.2f}) s | "
            f"{r['cold_after_s']:.2f} / {r['warm_after_s']:.2f} s | "
            f"{100 * r['warm_share']:.1f} % ({100 * r['share_all']:.1f} %) | "
            f"{100 * r['projected_share_60s']:.2f} % |")
    lines.append(f"\nray.init (once per run, not per trial): {ray_init_s:.1f} s")
    return "\n".join(lines)


def concurrency_table(results: list[dict[str, float]]) -> str:
    """Ours vs bare processes per setting and round, steady (and whole-span) trials/hour, and
    speed-ups against the first setting of the same round."""
    lines = ["| round | slots × CPUs | ours, trials/hour steady (span) | bare processes, "
             "trials/hour steady (span) | ours / bare, steady | speed-up vs first setting: "
             "ours, steady (span) | bare, steady (span) |", "|---|---|---|---|---|---|---|"]
    first = results[0]["config"]
    speedups: dict[str, list[tuple[float, ...]]] = {}
    keys = ("steady_trials_per_hour", "warm_trials_per_hour",
            "bare_steady_trials_per_hour", "bare_warm_trials_per_hour")
    for r in results:
        base = next(b for b in results if b["round"] == r["round"] and b["config"] == first)
        up = tuple(r[k] / base[k] for k in keys)
        speedups.setdefault(r["config"], []).append(up)
        o, ow, b, bw = (r[k] for k in keys)
        lines.append(f"| {int(r['round'])} | {int(r['slots'])} × {int(r['cpus'])} | {o:.0f} "
                     f"({ow:.0f}) | {b:.0f} ({bw:.0f}) | {o / b:.2f} | {up[0]:.2f}× "
                     f"({up[1]:.2f}×) | {up[2]:.2f}× ({up[3]:.2f}×) |")
    for config, ups in speedups.items():
        if config != first:
            med = [statistics.median(u[i] for u in ups) for i in range(4)]
            lines.append(f"\nMedian speed-up of {config} over {first} ({len(ups)} round(s)): "
                         f"ours {med[0]:.2f}× steady ({med[1]:.2f}× over the whole span), bare "
                         f"processes {med[2]:.2f}× ({med[3]:.2f}×).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import ray

    from yolo_ray.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="evolve_bench_") as tmp:
        root = Path(tmp)
        data = str(write_synthetic_dataset(root / "data", n_train=args.n_train, n_val=16,
                                           imgsz=args.img, seed=0))
        t0 = time.time()
        ray.init(address="local", num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        ray_init_s = time.time() - t0
        try:
            results = []
            for k in range(args.rounds):  # interleaved, so a drifting machine hits all alike
                for c in args.configs:
                    tag = f"-r{k}" if args.rounds > 1 else ""
                    results.append(run_once(args, data, root, c, tag) | {"round": k, "config": c})
                    if args.bare:
                        warm, steady = run_bare(args, data, root, c, tag)
                        results[-1] |= {"bare_warm_trials_per_hour": warm,
                                        "bare_steady_trials_per_hour": steady}
        finally:
            ray.shutdown()
    print("python bench/evolve_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(markdown([r for r in results if r["round"] == 0], ray_init_s))  # round 0 in detail
    if args.bare:
        print("\n" + concurrency_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"ray_init_s": ray_init_s, "results": results,
                                               "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
