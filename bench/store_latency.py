"""Benchmark: evolve.csv append and GA suggestion latency as the store grows (no Ray, no torch).

At each size N (default 100, 1k, 5k, 10k rows) the store is first filled to N rows through
`seed_from_csv` (one batched append), then `--samples` driver decisions are timed, each
exactly what the classic strategy's driver does per trial:

    ask     = store.rows() + GeneticAlgorithm.ask  (the suggestion; rows() reads new bytes only)
    append  = GeneticAlgorithm.tell -> EvolutionStore.append  (sidecar + csv, fsync'd, and the
              atomic hyp_evolve.yaml rewrite)
    suggest / complete = EvolveSearcher.suggest / on_trial_complete (the Tune Searcher the
              driver runs; the class is used directly, no Ray is started)

Bytes read per decision come from /proc/self/io (rchar): a whole-file re-read per suggestion
would show up as ~N × 250 bytes. Writes a markdown block to stdout and a plot into docs/.

    python bench/store_latency.py                        # the run in docs/benchmarks.md
    python bench/store_latency.py --sizes 100 1000 --samples 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    p.add_argument("--samples", type=int, default=40, help="timed decisions per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=str(DOCS / "scale_store_latency.png"),
                   help="latency-vs-rows plot ('' for none)")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def synthetic_fitness(hyp: dict[str, float], base: dict[str, float]) -> float:
    """A smooth fitness with its optimum away from the base hyps, so the GA has signal."""
    logs = np.array([np.log((hyp[k] + 1e-3) / (1.3 * base[k] + 1e-3)) for k in base])
    return float(0.6 * np.exp(-0.5 * np.mean(logs ** 2)))


def result_values(fit: float) -> list[float]:
    """Seven evolve.csv values whose fitness (0.1·mAP50 + 0.9·mAP50-95) equals `fit`."""
    return [0.5, 0.5, fit, fit, 0.05, 0.03, 0.01]


def rchar() -> int:
    """Bytes this process has read through read syscalls so far (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def fill_to(store, ga, n_rows: int, rng: np.random.Generator, work: Path) -> None:
    """Bring the store to `n_rows` rows with one batched append (a seeded evolve.csv)."""
    from yolo_ray.evolve.records import format_header, format_row
    from yolo_ray.train.results import RESULT_KEYS

    missing = n_rows - len(store.rows())
    if missing <= 0:
        return
    keys = list(ga.hyp_keys)
    lines = [format_header(list(RESULT_KEYS) + keys)]
    base = np.array([ga.base[k] for k in keys])
    for _ in range(missing):
        hyp = base * np.exp(rng.normal(0.0, 0.2, size=base.size))
        fit = synthetic_fitness(dict(zip(keys, hyp)), {k: ga.base[k] for k in keys})
        lines.append(format_row(result_values(fit) + hyp.tolist()))
    src = work / f"seed_{n_rows}.csv"
    src.write_text("".join(lines))
    store.seed_from_csv(src)


def time_size(searcher, ga, samples: int, start_index: int) -> dict[str, float]:
    """Time `samples` ask/append cycles through the GA and through the Tune searcher."""
    from yolo_ray.train.results import RESULT_KEYS

    store, base = searcher.store, {k: ga.base[k] for k in ga.hyp_keys}
    ask, append, suggest, complete, read = [], [], [], [], []
    for i in range(samples):
        r0 = rchar()
        t0 = time.perf_counter()
        s = ga.ask(start_index + i, store.rows())
        t1 = time.perf_counter()
        read.append(rchar() - r0)
        fit = synthetic_fitness(s.hyp, base)
        ga.tell(store, s, f"bench-{start_index + i}", "finished", result_values(fit))
        t2 = time.perf_counter()
        ask.append(t1 - t0)
        append.append(t2 - t1)
        # The same decision through the Searcher (its own store handle, as in a real run).
        tid = f"tune-{start_index + i}"
        t3 = time.perf_counter()
        config = searcher.suggest(tid)
        t4 = time.perf_counter()
        fit = synthetic_fitness(config["hyp"], base)
        searcher.on_trial_complete(tid, dict(zip(RESULT_KEYS, result_values(fit)), final=True))
        t5 = time.perf_counter()
        suggest.append(t4 - t3)
        complete.append(t5 - t4)

    def ms(xs: list[float], q: float = 0.5) -> float:
        return 1e3 * float(np.quantile(xs, q))

    return {"ask_ms": ms(ask), "ask_p90_ms": ms(ask, 0.9), "append_ms": ms(append),
            "append_p90_ms": ms(append, 0.9), "suggest_ms": ms(suggest),
            "suggest_p90_ms": ms(suggest, 0.9), "complete_ms": ms(complete),
            "complete_p90_ms": ms(complete, 0.9),
            "read_bytes_per_ask": statistics.median(read)}


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    from yolo_ray.cluster.searcher import EvolveSearcher  # imports Ray's Searcher class only
    from yolo_ray.config.load import load_hyp
    from yolo_ray.evolve.ga import GeneticAlgorithm
    from yolo_ray.evolve.space import load_search_space

    space = load_search_space().without("anchors")
    hyp = {k: v for k, v in load_hyp().as_dict().items() if k != "anchors"}
    ga = GeneticAlgorithm(space, hyp, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    out = []
    with tempfile.TemporaryDirectory(prefix="store_latency_") as tmp:
        work = Path(tmp)
        searcher = EvolveSearcher(ga, work / "run", target_rows=10 ** 9)
        done = 0
        for n in sorted(args.sizes):
            fill_to(searcher.store, ga, n, rng, work)
            rows_before = len(searcher.store.rows())
            stats = time_size(searcher, ga, args.samples, 10 ** 6 + done)
            done += args.samples
            stats.update(rows=rows_before, csv_bytes=searcher.store.csv_path.stat().st_size)
            out.append(stats)
            print(f"# {rows_before} rows: {json.dumps(stats)}", file=sys.stderr)
        searcher.store.close()
    return out


def markdown(results: list[dict[str, float]]) -> str:
    lines = ["| rows in evolve.csv | csv size | ask (suggestion) median / p90 | append median / "
             "p90 | Searcher.suggest median | Searcher.on_trial_complete median | bytes read "
             "per ask |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {int(r['rows'])} | {r['csv_bytes'] / 1e6:.2f} MB | "
                     f"{r['ask_ms']:.2f} / {r['ask_p90_ms']:.2f} ms | "
                     f"{r['append_ms']:.2f} / {r['append_p90_ms']:.2f} ms | "
                     f"{r['suggest_ms']:.2f} ms | {r['complete_ms']:.2f} ms | "
                     f"{int(r['read_bytes_per_ask'])} |")
    return "\n".join(lines)


def plot(results: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r["rows"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("ask_ms", "ask (GA suggestion)"), ("append_ms", "append (fsync'd)"),
                       ("suggest_ms", "Searcher.suggest"),
                       ("complete_ms", "Searcher.on_trial_complete")):
        ax.plot(rows, [r[key] for r in results], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("rows in evolve.csv")
    ax.set_ylabel("median latency (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Store and suggestion latency vs rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print("python bench/store_latency.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print()
    print(markdown(results))
    if args.plot:
        plot(results, args.plot)
        print(f"\n![store latency vs rows]({Path(args.plot).name})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
