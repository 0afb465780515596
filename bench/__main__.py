"""`python -m bench`: run the benchmark suite and rewrite its marked blocks in docs/benchmarks.md.

Each benchmark is its own script (run in a fresh process, as a user would run it); its stdout
(a markdown table or section) replaces the block between `<!-- bench:NAME -->` and
`<!-- /bench:NAME -->`, prefixed with the exact command, the time and the machine's load
(this box is shared). Hand-written commentary outside the markers survives. Plots are
written into docs/ by the scripts (or copied there from their scratch folder).

    python -m bench                      # --quick settings, every benchmark (~20 min, 2 cores)
    python -m bench --only scale store_latency
    python -m bench --slow               # the settings recorded in docs/benchmarks.md (hours)
    python -m bench --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import replace_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCRATCH = "runs/bench"  # relative to the repository root (the scripts' working folder)


@dataclass(frozen=True)
class Bench:
    """One script with its quick and full (--slow) arguments."""

    name: str
    quick: tuple[str, ...]
    slow: tuple[str, ...]
    needs: tuple[str, ...] = ()      # files that must exist (shared weights, datasets)
    pngs: tuple[str, ...] = ()       # plots the script leaves in SCRATCH, copied to docs/
    strip_heading: bool = False      # the script prints its own "## " heading

    @property
    def script(self) -> Path:
        return ROOT / "bench" / f"{self.name}.py"


SHARED = ROOT.parent / "shared"
BENCHES = (
    Bench("train_throughput", ("--repeats", "1", "--images", "128"),
          ("--repeats", "5", "--images", "256")),
    Bench("evolve_overhead", ("--generations", "3", "--epochs", "1", "--configs", "1x1", "2x1"),
          ("--epochs", "10", "--generations", "12", "--configs", "1x1", "2x1", "--rounds", "5")),
    Bench("freeze", ("--models", "yolov5n", "--img", "160", "--repeats", "2", "--markdown"),
          ("--markdown",)),
    Bench("prune", ("--amounts", "0.3", "--no-map", "--markdown"),
          ("--markdown", "--finetune-epochs", "100", "--finetune-amounts", "0.3", "--distill"),
          needs=(str(SHARED / "weights" / "yolov5n.pt"),)),
    Bench("pbt_vs_classic",
          ("--population", "2", "--rounds", "3", "--interval", "1", "--work",
           f"{SCRATCH}/pbt_vs_classic"),
          ("--work", f"{SCRATCH}/pbt_vs_classic"),
          pngs=(f"{SCRATCH}/pbt_vs_classic/pbt_vs_classic.png",), strip_heading=True),
    Bench("store_latency", ("--samples", "20"), ("--samples", "40")),
    Bench("pbt_driver", ("--members", "64", "256", "--rounds", "10", "--async-pbt"),
          ("--members", "64", "256", "1024", "--rounds", "20", "--async-pbt")),
    Bench("scale", ("--slots", "16", "--trials", "200", "--members", "16", "--rounds", "10",
                    "--sleep", "3"),
          ("--slots", "64", "--trials", "1000", "--members", "256", "--rounds", "20",
           "--sleep", "10", "--pbt-sleep", "2")),
    Bench("shipping", (), ()),  # written by another engineer; skipped while absent
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--skip", nargs="+", metavar="NAME", default=[], help="leave these out")
    p.add_argument("--slow", action="store_true", help="full settings instead of --quick")
    p.add_argument("--quick", action="store_true", help="quick settings (the default)")
    p.add_argument("--docs", default=str(DOCS / "benchmarks.md"), help="file to rewrite")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p.parse_args(argv)


def select(args: argparse.Namespace) -> list[Bench]:
    known = {b.name: b for b in BENCHES}
    unknown = [n for n in (args.only or []) + args.skip if n not in known]
    if unknown:
        raise SystemExit(f"python -m bench: unknown benchmark(s) {', '.join(unknown)}; "
                         f"known: {', '.join(known)}")
    chosen = [known[n] for n in args.only] if args.only else list(BENCHES)
    return [b for b in chosen if b.name not in args.skip]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Skipped(Exception):
    """A benchmark that cannot run here (its script or a needed file is absent)."""


def run_one(bench: Bench, slow: bool, timeout: float) -> str | None:
    """Run one script; its block text, or None when it failed (logged).

    Raises:
        Skipped: the script or a file it needs is missing.
    """
    missing = [n for n in (str(bench.script), *bench.needs) if not Path(n).exists()]
    if missing:
        raise Skipped(f"bench: skipping {bench.name}: missing {', '.join(missing)}")
    extra = bench.slow if slow else bench.quick
    command = ["python", f"bench/{bench.name}.py", *extra]
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                         os.environ.get("PYTHONPATH")])))
    load0, t0 = load_average(), time.time()
    print(f"bench: {' '.join(command)}", file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, timeout=timeout)
    if proc.returncode != 0:
        print(f"bench: {bench.name} failed (exit {proc.returncode}); block left as it was",
              file=sys.stderr)
        return None
    for png in bench.pngs:
        if (ROOT / png).is_file():
            shutil.copy2(ROOT / png, DOCS / Path(png).name)
    out = proc.stdout.strip("\n")
    first = out.split("\n", 1)[0]
    if (bench.strip_heading and first.startswith("## ")) or first.startswith("python bench/"):
        out = out.split("\n", 1)[1] if "\n" in out else ""  # the runner prints both
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0))
    header = (f"```bash\n{' '.join(command)}\n```\n\n_Run by `python -m bench"
              f"{' --slow' if slow else ''}` at {stamp}, {time.time() - t0:.0f} s; load "
              f"average {load0} before it ({os.cpu_count()} CPUs, shared machine)._\n")
    return header + "\n" + out.strip("\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = select(args)
    if args.list or args.dry_run:
        for b in chosen:
            flags = " ".join(b.slow if args.slow else b.quick)
            state = "" if b.script.exists() else "   (absent)"
            print(f"{b.name:18s} python bench/{b.name}.py {flags}{state}")
        return 0
    docs = Path(args.docs)
    failed = []
    for bench in chosen:
        try:
            block = run_one(bench, args.slow, args.timeout)
        except Skipped as e:
            print(e, file=sys.stderr)
            continue
        except subprocess.TimeoutExpired:
            print(f"bench: {bench.name} ran past {args.timeout:.0f} s", file=sys.stderr)
            block = None
        if block is None:
            failed.append(bench.name)
            continue
        # Re-read each time: the docs may be edited by hand while a long suite runs.
        docs.write_text(replace_block(docs.read_text(), bench.name, block))
        print(f"bench: {bench.name}: block rewritten in {docs}", file=sys.stderr)
    if failed:  # a failed benchmark fails the suite; its block keeps the last good numbers
        print(f"bench: failed, not updated: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
