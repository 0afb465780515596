"""Benchmark: the GA PBT scheduler's driver work per evolve.csv row as population and rows grow.

The real GAPopulationBasedTraining (with Ray's PBT under it), a real EvolutionStore and the
real pbt_state.json run against the stand-in Tune controller and trials of the unit tests
(tests/cluster/tune_fakes.py): no Ray workers, so what is timed is the driver's own work
per member result, which at 256 members on a real Ray runs ~5,000 times per 20 rounds.

    add      = on_trial_add for every member, then Tune's next step (the state file written)
    per row  = on_trial_result at a round boundary: the row appended (fsync'd csv, sidecar,
               atomic hyp_evolve.yaml), the sync barrier, and at the round's last member
               the ranking, exploits, mutations and the state file
    flat     = ms per row in the last quarter of rows / in the first quarter (1.0 is flat)

    python bench/pbt_driver.py                           # the run in docs/benchmarks.md
    python bench/pbt_driver.py --members 64 256 --rounds 10
    python bench/pbt_driver.py --pause                   # members pause at every round's end
    python bench/pbt_driver.py --async-pbt               # also asynchronous rounds, beside

With --async-pbt the same populations also run with asynchronous rounds (--pbt-async): the
members end each round in a new random order (every member's end is a
cohort ranking, and the bottom ones clone at once); `round end` is then the last member's.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pause", action="store_true", help="members pause at every round's "
                   "end instead of waiting on their workers")
    p.add_argument("--async-pbt", action="store_true", help="also run "
                   "asynchronous rounds (--pbt-async), members ending rounds in a random order")
    return p.parse_args(argv)


def timed(calls: list[float], fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, recording the seconds of each call in `calls`."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - t0)
    return wrapper


def run(members: int, rounds: int, seed: int, hold: bool = True,
        asynchronous: bool = False) -> dict[str, float]:
    """One population through `rounds` rounds; timings in ms (add: s)."""
    from tests.cluster.tune_fakes import K, add_population, make_scheduler, run_round
    from yolo_ray.cluster.pbt_state import STATE_NAME
    from yolo_ray.config.load import load_hyp
    from yolo_ray.evolve.space import load_search_space
    from yolo_ray.evolve.store import EvolutionStore

    hyp, space = load_hyp(None), load_search_space().without("anchors")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        root = Path(tmp)
        store = EvolutionStore(root / "run", tuple(hyp.keys()))
        sched = make_scheduler(space, hyp, root, store=store, state_path=root / STATE_NAME,
                               seed=seed, hold_at_barrier=hold, asynchronous=asynchronous)
        t0 = time.perf_counter()
        controller, trials = add_population(sched, members, root)
        add_s = time.perf_counter() - t0
        calls: list[float] = []
        sched.on_trial_result = timed(calls, sched.on_trial_result)  # type: ignore[method-assign]
        cpu0 = time.process_time()
        order = list(range(members))
        for r in range(rounds):
            if asynchronous:  # no barrier: each round's members end in their own order
                order = list(rng.permutation(members))
            fits = rng.uniform(0, 1, members)
            run_round(sched, controller, [trials[i] for i in order], K * (r + 1),
                      [float(fits[i]) for i in order])
        cpu = time.process_time() - cpu0
        rows = len(store.rows())
        assert rows == members * rounds, (rows, members * rounds)
        # run_round reports K results per member per round; the last is the boundary (row).
        per_row = np.array(calls).reshape(rounds, members, K)[:, :, -1].ravel() * 1000
        ends = per_row.reshape(rounds, members)[:, -1]  # the call that ends each round
        body = per_row.reshape(rounds, members)[:, :-1].ravel()
        q = len(body) // 4
        state_kb = (root / STATE_NAME).stat().st_size / 1024
        store.close()
    return {"members": members, "rows": rows, "add_s": add_s,
            "first": statistics.mean(body[:q]), "last": statistics.mean(body[-q:]),
            "end": float(np.median(ends)), "cpu_ms_row": 1000 * cpu / rows,
            "state_kb": state_kb}


def markdown(results: list[dict[str, float]], rounds: int, hold: bool = True,
             asynchronous: bool = False) -> str:
    how = "asynchronous rounds" if asynchronous else \
        f"members {'held' if hold else 'paused'} at round ends"
    out = [f"PBT driver work per row, {rounds} rounds (the real scheduler, store and state "
           f"file; Tune's controller stood in, no workers; {how})", "",
           "| members | rows | add all members (s) | ms/row, first quarter | "
           "ms/row, last quarter | last / first | round end (ms, median) | "
           "driver CPU per row (ms) | pbt_state.json (KiB) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        out.append(f"| {r['members']} | {r['rows']} | {r['add_s']:.2f} | {r['first']:.2f} | "
                   f"{r['last']:.2f} | {r['last'] / r['first']:.2f} | {r['end']:.0f} | "
                   f"{r['cpu_ms_row']:.2f} | {r['state_kb']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # tests.cluster.tune_fakes
    for name in ("yolo_ray", "ray.tune.schedulers.pbt"):  # no per-round / per-exploit lines
        logging.getLogger(name).setLevel(logging.WARNING)
    (ROOT / "runs").mkdir(exist_ok=True)
    for asynchronous in (False, True) if args.async_pbt else (False,):
        results = [run(n, args.rounds, args.seed, not args.pause, asynchronous)
                   for n in args.members]
        print(markdown(results, args.rounds, not args.pause, asynchronous) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
