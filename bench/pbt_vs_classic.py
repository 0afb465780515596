"""Best fitness per compute budget (epochs): PBT vs classic YOLOv5 evolution, equal total epochs.

Default (synthetic set; about 6 min on an idle 2-core box, 10 on a busy one):

    python bench/pbt_vs_classic.py --docs

PBT trains P members for G rounds of K epochs (P·G·K epochs); classic trains P trials of
G·K epochs each (the same total, trial for trial as long as a member). After every unit of
budget the best fitness found so far is read back from each run's evolve.csv. `--coco128`
runs the same on ../shared/datasets/coco128.yaml from ../shared/weights/yolov5n.pt.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCS = ROOT / "docs"
SECTION = "## PBT vs classic"


@dataclass(frozen=True)
class Case:
    """One dataset/model setting."""

    name: str
    data: str
    cfg: str | None
    weights: str | None
    imgsz: int
    batch: int


@dataclass(frozen=True)
class Curve:
    """Best fitness found after `budget[i]` epochs of training in total."""

    budget: np.ndarray
    best: np.ndarray
    wall_s: float
    finals: tuple[float, ...] = ()   # each classic trial / each PBT member after its last round


def synthetic_case(work: Path) -> Case:
    from yolo_ray.data.synthetic import write_synthetic_dataset

    yaml_path = work / "synthetic" / "data.yaml"
    if not yaml_path.exists():
        yaml_path = write_synthetic_dataset(work / "synthetic", n_train=256, n_val=32,
                                            imgsz=128, seed=0)
    return Case("synthetic", str(yaml_path.resolve()), "yolov5n", None, 128, 16)


def coco128_case() -> Case:
    data, weights = SHARED / "datasets" / "coco128.yaml", SHARED / "weights" / "yolov5n.pt"
    if not data.is_file() or not weights.is_file():
        sys.exit(f"--coco128 needs {data} and {weights}")
    return Case("coco128", str(data), None, str(weights), 320, 16)


def request_for(case: Case, run_dir: Path, strategy: str, args: argparse.Namespace):
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.config.load import load_hyp

    member_epochs = args.rounds * args.interval
    return EvolveRequest(
        run_dir=run_dir.resolve(), data=case.data, hyp=load_hyp(None), cfg=case.cfg,
        weights=case.weights, strategy=strategy, epochs=member_epochs,
        generations=args.rounds if strategy == "pbt" else args.population,
        interval=args.interval, population=args.population, seed=args.seed,
        imgsz=case.imgsz, batch_size=case.batch, workers=0, cpus_per_trial=1,
        gpus_per_trial=0.0, tensorboard=False, verbose=0)


def curve_of(run_dir: Path, strategy: str, args: argparse.Namespace, wall: float) -> Curve:
    """Best-so-far fitness against epochs spent, from the run's evolve.csv and sidecar."""
    from yolo_ray.evolve.files import read_evolve_csv

    _, rows = read_evolve_csv(run_dir / "evolve.csv")
    f = np.array([r.fitness for r in rows])
    if strategy == "classic":  # rows in completion order, each = one full-length trial
        budget = np.arange(1, len(rows) + 1) * args.rounds * args.interval
        return Curve(budget, np.maximum.accumulate(f), wall, tuple(f.tolist()))
    gen = np.array([int(r.meta.get("generation") or 0) for r in rows])
    rounds = np.arange(gen.max() + 1)
    best = np.array([f[gen <= r].max() for r in rounds])
    finals = tuple(f[gen == gen.max()].tolist())
    return Curve((rounds + 1) * args.population * args.interval, best, wall, finals)


def run_strategy(case: Case, strategy: str, work: Path, args: argparse.Namespace) -> Curve:
    from yolo_ray.cluster.launch import run_evolution

    run_dir = work / f"{case.name}-{strategy}-s{args.seed}"
    if run_dir.exists():
        sys.exit(f"{run_dir} exists: pass another --work folder")
    t0 = time.time()
    run_evolution(request_for(case, run_dir, strategy, args))
    return curve_of(run_dir, strategy, args, time.time() - t0)


def best_at(curve: Curve, budget: int) -> float:
    """Best fitness once `budget` epochs were spent (NaN before the first result)."""
    done = curve.budget <= budget
    return float(curve.best[done].max()) if done.any() else float("nan")


def table(pbt: Curve, classic: Curve) -> str:
    """Markdown: best fitness at every budget either strategy reached."""
    budgets = sorted(set(pbt.budget.tolist()) | set(classic.budget.tolist()))
    lines = ["| epochs spent | PBT best fitness | classic best fitness |", "|---:|---:|---:|"]
    for b in budgets:
        p, c = best_at(pbt, b), best_at(classic, b)
        lines.append(f"| {b} | {'-' if np.isnan(p) else f'{p:.4f}'} | "
                     f"{'-' if np.isnan(c) else f'{c:.4f}'} |")
    lines.append(f"| wall time | {pbt.wall_s / 60:.1f} min | {classic.wall_s / 60:.1f} min |")
    return "\n".join(lines)


def plot(curves: dict[str, Curve], title: str, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), tight_layout=True)
    ax = fig.add_subplot()
    for label, c in curves.items():
        ax.step(np.r_[0, c.budget], np.r_[0.0, c.best], where="post", marker="o", label=label)
    ax.set_xlabel("epochs spent (all members / trials)")
    ax.set_ylabel("best fitness so far (0.1 mAP50 + 0.9 mAP50-95)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out, dpi=120)
    return out


def update_docs(text: str, heading: str) -> Path:
    """Replace (or append) the section `heading` of docs/benchmarks.md; others stay."""
    path = DOCS / "benchmarks.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(heading + "\n")
    if start < 0:
        new = old.rstrip() + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(heading))
        end = len(old) if nxt < 0 else nxt
        # A hand-written "Reading:" block at the section's end survives a re-run.
        reading = old.find("\nReading:", start, end)
        kept = old[reading:end].rstrip() + "\n" if reading >= 0 else ""
        new = old[:start] + text + ("\n" + kept.lstrip("\n") if kept else "") + old[end:]
    path.write_text(new.rstrip() + "\n")
    return path


def heading_for(args: argparse.Namespace) -> str:
    """One docs section per dataset."""
    return SECTION + (" (coco128)" if args.coco128 else "")


def section(case: Case, args: argparse.Namespace, pbt: Curve, classic: Curve, png: str) -> str:
    command = "python bench/pbt_vs_classic.py --docs" + (" --coco128" if args.coco128 else "")
    m = args.rounds * args.interval
    return (f"{heading_for(args)}\n\nCommand: `{command}` (2-core CPU box, Ray local, 1 CPU per trial).\n"
            f"Data: {case.name}, imgsz {case.imgsz}, batch {case.batch}, "
            f"{case.cfg or Path(case.weights or '').name}; seed {args.seed}.\n"
            f"PBT: {args.population} members × {args.rounds} rounds of {args.interval} "
            f"epoch(s) = {args.population * m} epochs. Classic: {args.population} trials × "
            f"{m} epochs = {args.population * m} epochs (same total, same per-run length).\n\n"
            f"{table(pbt, classic)}\n\n"
            f"Final fitness of each PBT member: {spread(pbt.finals)}; of each classic trial: "
            f"{spread(classic.finals)}.\n\n![PBT vs classic]({png})\n")


def spread(values: tuple[float, ...]) -> str:
    """'0.57, 0.56 (mean 0.565)' for the docs."""
    if not values:
        return "-"
    return ", ".join(f"{v:.3f}" for v in values) + f" (mean {np.mean(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=4, help="PBT members = classic trials")
    p.add_argument("--rounds", type=int, default=8, help="PBT rounds (generations)")
    p.add_argument("--interval", type=int, default=3, help="epochs per PBT round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coco128", action="store_true", help="use ../shared coco128 + yolov5n.pt")
    p.add_argument("--work", default="runs/bench/pbt_vs_classic", help="scratch folder")
    p.add_argument("--docs", action="store_true", help="write docs/benchmarks.md + the PNG")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import ray

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    case = coco128_case() if args.coco128 else synthetic_case(work)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pbt = run_strategy(case, "pbt", work, args)
        classic = run_strategy(case, "classic", work, args)
    finally:
        ray.shutdown()
    png_name = f"pbt_vs_classic{'_coco128' if args.coco128 else ''}.png"
    out = (DOCS if args.docs else work) / png_name
    plot({"PBT (GA scheduler)": pbt, "classic GA": classic},
         f"{case.name}: best fitness per epochs spent", out)
    text = section(case, args, pbt, classic, png_name)
    print(text)
    if args.docs:
        print(f"wrote {update_docs(text, heading_for(args))} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
