"""Benchmark: our classic searcher and GA PBT scheduler at scale, on a local Ray of fake GPUs.

The real driver objects run unchanged: `tuner.build_classic_tuner` (EvolveSearcher +
ConcurrencyLimiter + store, failure and progress callbacks, TensorBoard off) and
`pbt_launch.build_pbt_tuner` (GAPopulationBasedTraining with its store and pbt_state.json).
Only the trainable is a stand-in: it sleeps a duration drawn from a generator seeded by
(trial seed, step) and reports a synthetic fitness computed from its hyps (PBT members also
carry a checkpointed "quality", so exploiting a parent pays off). Ray gets `--slots` fake
GPUs and as many logical CPUs; every trial asks for 1 GPU + 1 CPU.

Measured from the trials' own timestamps and the driver process:
    idle     1 - busy slot-time / (slots × window), window = from the `slots`-th start to the
             start of the last trial (step): ramp-up and drain excluded
    driver   CPU seconds of the driver process (Tune's loop, our searcher/scheduler/store)
             per recorded row, per quarter of the run (flat = no O(rows) work), and peak RSS
    actors   trial worker processes set up (the trainable's setup ran), and worker actors
             Ray placed (created on a slot; some are killed before their setup runs): Tune
             reuses one per slot, or starts new ones (PBT: `--pbt-baseline` also runs Ray's
             own restart of every member per round; `--start-baseline` also runs without
             our guard against handing a kept worker to a trial whose own one is starting;
             `--hold-baseline` also runs with members paused at every round's end instead of
             held on their workers; `--async-pbt` also runs asynchronous rounds)
    tune     classic: trials in Tune's last experiment snapshot and its size, Trial objects
             and GC-tracked objects the driver holds after the run (`--retire-baseline` also
             runs with Tune holding every ended trial; `--keep-finished N` sets how many it
             keeps, trial_retirement; `--no-trim` leaves freed C heap resident, driver_heap)
    waits    PBT: a member's mean time between its rounds, before / after the round's last end

    python bench/scale.py                                   # both, default sizes
    python bench/scale.py --only classic --trials 1000 --slots 64 --sleep 4
    python bench/scale.py --only classic --slots 64 --trials 2000 --sleep 10 --retire-baseline
    python bench/scale.py --only pbt --members 256 --slots 128 --rounds 20 --sleep 2
    python bench/scale.py --only pbt --members 16 --slots 16 --rounds 10 --pbt-baseline
    python bench/scale.py --only pbt --members 96 --slots 16 --rounds 3 --sleep 2 \
        --start-baseline
    python bench/scale.py --only pbt --slots 32 --members 32 --rounds 6 --sleep 20 \
        --spread 0.02 --hold-baseline
    python bench/scale.py --only pbt --slots 32 --members 32 --rounds 10 --sleep 10 \
        --spread 0.02 --async-pbt
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import re
import resource
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"
TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("classic", "pbt", "pbt-async"), default=None,
                   help="one strategy; pbt-async: only the asynchronous PBT run")
    p.add_argument("--slots", type=int, default=64, help="fake GPUs = concurrent trials")
    p.add_argument("--trials", type=int, default=1000, help="classic: trials (= rows)")
    p.add_argument("--members", type=int, default=64, help="pbt: population")
    p.add_argument("--rounds", type=int, default=20, help="pbt: generations of 1 epoch each")
    p.add_argument("--sleep", type=float, default=4.0, help="mean trial (classic) or epoch "
                   "(pbt) duration in seconds")
    p.add_argument("--pbt-sleep", type=float, default=None, help="pbt epoch mean (default "
                   "--sleep)")
    p.add_argument("--spread", type=float, default=0.25, help="durations uniform in mean × "
                   "(1 ± spread)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--member-spread", type=float, default=0.0, help="pbt: each member's "
                   "epochs are slower or faster by a factor of its own, uniform in 1 ± this "
                   "(stable member speeds, as hyps that change augmentation cost give)")
    p.add_argument("--order-baseline", action="store_true", help="pbt: also run with members "
                   "started in Ray's order (not slowest last epoch first)")
    p.add_argument("--pbt-baseline", action="store_true", help="pbt: also run with Ray's "
                   "own behaviour (a new worker per member per round) for comparison")
    p.add_argument("--hold-baseline", action="store_true", help="pbt: also run with members "
                   "pausing at every round's end (not held on their workers) for comparison")
    p.add_argument("--async-pbt", action="store_true", help="pbt: also run with asynchronous "
                   "rounds (--pbt-async: no round barrier) for comparison")
    p.add_argument("--start-baseline", action="store_true", help="also run each strategy "
                   "without the worker_starts guard (Tune hands a kept worker to a trial "
                   "whose own worker is starting, killing that process)")
    p.add_argument("--keep-finished", type=int, default=None, help="classic: ended trials "
                   "Tune holds (default the run's, tune_keep_finished)")
    p.add_argument("--retire-baseline", action="store_true", help="classic: also run with "
                   "Tune holding every ended trial (no trial retirement), for comparison")
    p.add_argument("--no-trim", dest="trim", action="store_false",
                   help="classic: leave glibc's freed heap resident (no malloc_trim at Tune's "
                   "snapshots, driver_heap); compare in separate processes, as a run reuses "
                   "the heap an earlier one freed")
    p.add_argument("--plot", default=str(DOCS / "scale_driver.png"), help="'' for none")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--profile", default=None, metavar="PREFIX", help="cProfile the driver "
                   "during each fit to PREFIX.<run>.prof and print Tune's snapshot cost")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- stand-ins
def synthetic_fitness(hyp: dict[str, float], base: dict[str, float]) -> float:
    """Smooth in log-hyp space with its optimum at 1.3 × base: the GA has something to find."""
    logs = [np.log((float(hyp[k]) + 1e-3) / (1.3 * v + 1e-3)) for k, v in base.items()]
    return float(0.6 * np.exp(-0.5 * np.mean(np.square(logs))))


def results_for(fit: float) -> dict[str, float]:
    """The seven evolve.csv results, with fitness (0.1·mAP50 + 0.9·mAP50-95) equal to `fit`."""
    from yolo_ray.train.results import RESULT_KEYS

    return dict(zip(RESULT_KEYS, (0.5, 0.5, fit, fit, 0.05, 0.03, 0.01)))


def draw_sleep(seed: int, step: int, mean: float, spread: float) -> float:
    return float(np.random.default_rng([seed, step]).uniform(mean * (1 - spread),
                                                             mean * (1 + spread)))


def sim_trial(config: dict[str, Any], mean: float, spread: float,
              base: dict[str, float]) -> None:
    """Classic stand-in for evolve_trial: one sleep, one final report."""
    from ray import tune

    t0 = time.time()
    time.sleep(draw_sleep(int(config["seed"]), 0, mean, spread))
    fit = synthetic_fitness(config["hyp"], base)
    tune.report(results_for(fit) | {"fitness": fit, "epoch": 1, "final": True,
                                    "t_start": t0, "t_end": time.time(), "node": "sim",
                                    "device": "sim", "actor_rss_mb": rss_mb(), "pid": os.getpid(),
                                    "torch_loaded": "torch" in sys.modules})


def member_class() -> type:
    """PBT stand-in for PBTTrainable (built lazily: Trainable needs Ray imported)."""
    from ray import tune

    class SimMember(tune.Trainable):
        def setup(self, config: dict, mean: float = 1.0, spread: float = 0.0,
                  base: dict | None = None, actors_dir: str = "",
                  member_spread: float = 0.0) -> None:
            self.mean, self.spread, self.base = mean, spread, dict(base or {})
            self.member_spread = member_spread
            # One file per worker process started (reuse calls reset_config), with the times
            # of what it did between epochs (worker_gaps).
            self.events = Path(actors_dir, f"{os.getpid()}") if actors_dir else None
            self.quality, self.epoch = 0.0, 0
            self._apply(config)
            self._event("setup")

        def _event(self, kind: str) -> None:
            if self.events is not None:
                with self.events.open("a") as f:
                    f.write(f"{kind} {time.time():.6f} {self.member}\n")

        def _apply(self, config: dict) -> None:
            self.member = int(config["trial_index"])
            self.speed = 1 + self.member_spread * (  # the member's own, every epoch
                2 * np.random.default_rng([self.member, 1_000_003]).uniform() - 1)
            self.total = int(config["settings"]["epochs"])
            self.hyp = {k: float(config[k]) for k in self.base}

        def step(self) -> dict:
            self._event("train")
            t0 = time.time()
            time.sleep(self.speed * draw_sleep(self.member, self.epoch, self.mean, self.spread))
            self._event("result")
            self.epoch += 1
            self.quality += 0.1 * synthetic_fitness(self.hyp, self.base)
            done = self.epoch >= self.total
            return results_for(self.quality) | {
                "fitness": self.quality, "epoch": self.epoch, "final": done, "done": done,
                "member": self.member, "round_start": t0, "round_end": time.time(),
                "node": "sim", "device": "sim"}

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            state = {"epoch": self.epoch, "quality": self.quality}
            Path(checkpoint_dir, "state.json").write_text(json.dumps(state))
            self._event("save")

        def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
            state = json.loads(Path(checkpoint_dir, "state.json").read_text())
            self.epoch, self.quality = int(state["epoch"]), float(state["quality"])
            self._event("restore")

        def reset_config(self, new_config: dict) -> bool:
            self._event("reset")
            self._apply(new_config)  # the restore that follows sets epoch and quality
            self.quality, self.epoch = 0.0, 0
            return True

    return SimMember


# ----------------------------------------------------------------------------- sampling
def driver_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Every second: wall time, rows in evolve.csv (fixed-width lines), driver CPU and RSS."""

    def __init__(self, csv_path: Path) -> None:
        super().__init__(daemon=True)
        self.csv_path, self.samples = csv_path, []
        self.stop_event = threading.Event()

    def rows(self) -> int:
        try:
            with open(self.csv_path, "rb") as f:
                header = len(f.readline())
                line = len(f.readline())
            return 0 if not line else (self.csv_path.stat().st_size - header) // line
        except OSError:
            return 0

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.samples.append((time.time(), self.rows(), driver_cpu(), rss_mb()))


# ----------------------------------------------------------------------------- analysis
def idle_fraction(intervals: list[tuple[float, float]], slots: int) -> dict[str, Any]:
    """Idle share of slot-time between the `slots`-th start (ramp-up done) and the last start.

    After the last start slots drain with nothing left to run; before the `slots`-th start
    the slots were still being filled for the first time. Both are excluded. `idle_wave2`
    starts the window at the (2·slots)-th start instead: it also leaves out the first wave,
    whose members wait at a synchronous PBT's first barrier for the workers that started
    last (worker start-up on a loaded machine is spread over seconds: a one-off cost).
    """
    starts = sorted(s for s, _ in intervals)
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = max((c for _, c in _running(events)), default=0)
    if len(starts) <= slots:
        return {"idle": float("nan"), "window_s": 0.0, "max_running": peak}
    out = {"idle": _idle(intervals, slots, starts[slots - 1], starts[-1]),
           "window_s": starts[-1] - starts[slots - 1], "max_running": peak}
    if len(starts) > 2 * slots:
        out["idle_wave2"] = _idle(intervals, slots, starts[2 * slots - 1], starts[-1])
    return out


def _idle(intervals: list[tuple[float, float]], slots: int, t_a: float, t_b: float) -> float:
    busy = sum(max(0.0, min(e, t_b) - max(s, t_a)) for s, e in intervals)
    return 1 - busy / (slots * (t_b - t_a))


def _running(events: list[tuple[float, int]]) -> list[tuple[float, int]]:
    out, c = [], 0
    for t, d in events:
        c += d
        out.append((t, c))
    return out


def per_quarter(samples: list[tuple], total_rows: int) -> list[float]:
    """Driver CPU ms per row in each quarter of the rows (sampled once a second)."""
    out = []
    for q in range(4):
        lo, hi = total_rows * q // 4, total_rows * (q + 1) // 4
        pts = [s for s in samples if lo <= s[1] <= hi]
        if len(pts) < 2 or pts[-1][1] == pts[0][1]:
            out.append(float("nan"))
            continue
        out.append(1e3 * (pts[-1][2] - pts[0][2]) / (pts[-1][1] - pts[0][1]))
    return out


# ----------------------------------------------------------------------------- runs
def make_request(root: Path, args: argparse.Namespace, strategy: str, **kw: Any) -> Any:
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.config.load import load_hyp

    root.mkdir(parents=True, exist_ok=True)
    data = root / "data.yaml"  # never read: the stand-ins do not train
    data.write_text("path: .\ntrain: images\nval: images\nnames: {0: a}\n")
    return EvolveRequest(run_dir=root / strategy, data=str(data), hyp=load_hyp(),
                         cfg="yolov5n", strategy=strategy, seed=args.seed, verbose=0,
                         tensorboard=False, gpus_per_trial=1.0, cpus_per_trial=1, **kw)


def measure(run_fn: Any, csv_path: Path, rows: int,
            profile: str | None = None) -> dict[str, Any]:
    """Run `run_fn()` (Tuner.fit) with driver / Ray CPU and memory sampling around it
    (and cProfile of the driver's thread into `profile` when given)."""
    sampler = Sampler(csv_path)
    prof = cProfile.Profile() if profile else None
    placed = actors_placed()
    c0, t0 = driver_cpu(), time.time()
    sampler.start()
    try:
        out = prof.runcall(run_fn) if prof else run_fn()
    finally:
        if prof:
            prof.dump_stats(profile)
        sampler.stop_event.set()
        sampler.join()
    wall, cpu = time.time() - t0, driver_cpu() - c0
    return {"result": out, "wall_s": wall, "driver_cpu_s": cpu,
            "placed": actors_placed() - placed,
            "quarters_ms": per_quarter(sampler.samples, rows),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "samples": sampler.samples}


def actors_placed() -> int:
    """Actors Ray has created so far (alive or dead), from the GCS actor table."""
    from ray._private import state

    return len(state.actors())


@contextlib.contextmanager
def start_guard(on: bool) -> Iterator[None]:
    """With `on` False, the worker_starts guard answers "not starting" for every trial."""
    from unittest import mock

    from yolo_ray.cluster import scheduler, worker_starts

    if on:
        yield
        return
    never = lambda *a: False  # noqa: E731
    with mock.patch.object(worker_starts, "own_worker_starting", never), \
            mock.patch.object(scheduler, "own_worker_starting", never):
        yield


def profile_path(args: argparse.Namespace, run: str) -> str | None:
    return f"{args.profile}.{run}.prof" if args.profile else None


def snapshot_cost(profile: str) -> str:
    """Tune's experiment-state snapshots (TuneController.save_to_dir) in a driver profile."""
    for (path, _, name), (_, calls, _, cum, _) in pstats.Stats(profile).stats.items():
        if name == "save_to_dir" and path.endswith("tune_controller.py") and calls:
            return (f"Tune experiment snapshots (TuneController.save_to_dir): {calls} calls, "
                    f"{1e3 * cum / calls:.1f} ms each on average, {cum:.1f} s in all.")
    return "Tune experiment snapshots: none in the profile."


def held_objects() -> dict[str, int]:
    """Objects the driver's heap still holds after a fit (its ResultGrid alive): Tune Trials,
    and all objects Python's cyclic GC tracks (each full collection walks them)."""
    import gc

    from ray.tune.experiment import Trial

    gc.collect()
    objects = gc.get_objects()
    return {"trials_alive": sum(isinstance(o, Trial) for o in objects),
            "heap_objects": len(objects)}


def trial_results(experiment_dir: Path) -> list[dict[str, Any]]:
    """Each trial's last result, from the result.json Tune writes in its trial folder (Tune's
    own ResultGrid keeps only the trials it still holds at the end)."""
    out = []
    for path in sorted(experiment_dir.glob("*/result.json")):
        lines = path.read_text().splitlines()
        if lines:
            out.append(json.loads(lines[-1]))
    return out


def tune_snapshot(experiment_dir: Path) -> dict[str, float]:
    """Trials in Tune's newest experiment snapshot (newest name, as Tune picks) and its
    size (MB)."""
    snaps = sorted(experiment_dir.glob("experiment_state*.json"))
    if not snaps:
        return {"snapshot_trials": 0, "snapshot_mb": 0.0}
    state = json.loads(snaps[-1].read_text())
    return {"snapshot_trials": len(state["trial_data"]),
            "snapshot_mb": snaps[-1].stat().st_size / 2**20}


def run_classic(args: argparse.Namespace, root: Path, retire: bool = True) -> dict[str, Any]:
    import ray
    from ray import tune

    from yolo_ray.cluster.launch import (
        TUNE_ENV, PreparedRun, build_ga, quiet_tune_env, resolve_resources, scoped_env,
    )
    from yolo_ray.cluster.tuner import build_classic_tuner
    from yolo_ray.evolve.store import EvolutionStore

    keep = args.keep_finished if retire else 10**9  # None: the request's default
    kw = {} if keep is None else {"tune_keep_finished": keep}
    request = make_request(root, args, "classic", generations=args.trials, epochs=1, **kw)
    request = resolve_resources(request, ray.cluster_resources())
    ga = build_ga(request)
    store = EvolutionStore(request.run_dir, ga.hyp_keys)
    prepared = PreparedRun(request, ga, store, args.trials)
    base = {k: float(v) for k, v in ga.base.items() if k in ga.hyp_keys}
    trainable = tune.with_resources(
        tune.with_parameters(sim_trial, mean=args.sleep, spread=args.spread, base=base),
        {"cpu": 1, "gpu": 1})

    def fit() -> Any:
        from yolo_ray.cluster import driver_heap

        untrimmed = mock.patch.object(driver_heap, "release_free_heap", lambda: False)
        with scoped_env(**TUNE_ENV, **quiet_tune_env(0)), \
                (contextlib.nullcontext() if args.trim else untrimmed):
            return build_classic_tuner(prepared, request, trainable=trainable).fit()

    m = measure(fit, store.csv_path, args.trials, profile_path(args, "classic"))
    grid = m.pop("result")
    m.update(held_objects())
    results = trial_results(Path(request.experiment_path))
    spans = [(r["t_start"], r["t_end"]) for r in results if "t_start" in r]
    m.update(idle_fraction(spans, request.max_concurrent))
    metrics = [r for r in results if "actor_rss_mb" in r]
    m.update(actor_rss_mb=float(np.median([x["actor_rss_mb"] for x in metrics])),
             torch_in_actor=any(x["torch_loaded"] for x in metrics),
             actors=len({(x["node"], x["pid"]) for x in metrics}))
    m.update(rows=len(store.rows()), expected_rows=args.trials, trials=len(spans),
             slots=request.max_concurrent,
             best=store.best_row().fitness, first=store.rows()[0].fitness,
             grid_trials=len(grid), **tune_snapshot(Path(request.experiment_path)))
    store.close()
    return m


def run_pbt(args: argparse.Namespace, root: Path, keep_workers: bool = True,
            hold: bool = True, slowest_first: bool = True,
            asynchronous: bool = False) -> dict[str, Any]:
    """PBT with our scheduler; keep_workers=False measures Ray's own restart per round,
    hold=False members pausing at every round's end, slowest_first=False Ray's start order,
    asynchronous=True rounds with no barrier (--pbt-async)."""
    from unittest import mock

    from yolo_ray.cluster.actor_parking import ActorParking
    from yolo_ray.cluster.pbt_hold import HeldMembers
    from yolo_ray.cluster.scheduler import GAPopulationBasedTraining as GA

    order = GA._start_order if slowest_first else \
        (lambda self, t: (self._trial_state[t].last_train_time, 0.0))

    park = ActorParking.park if keep_workers else (lambda *a, **k: None)
    init = HeldMembers.__init__

    def held_init(self: Any, enabled: bool = True) -> None:
        init(self, enabled and hold and keep_workers)

    with mock.patch.object(ActorParking, "park", park), \
            mock.patch.object(HeldMembers, "__init__", held_init), \
            mock.patch.object(GA, "_start_order", order):
        return _run_pbt(args, root, asynchronous)


def _run_pbt(args: argparse.Namespace, root: Path, asynchronous: bool) -> dict[str, Any]:
    import ray
    from ray import tune

    from yolo_ray.cluster.launch import TUNE_ENV, base_hyp, resolve_resources, scoped_env
    from yolo_ray.cluster.pbt_launch import build_pbt_tuner, open_run, plan_pbt

    request = make_request(root, args, "pbt", generations=args.rounds, epochs=args.rounds,
                           population=args.members, interval=1, pbt_async=asynchronous)
    request = resolve_resources(request, ray.cluster_resources())
    plan = plan_pbt(request, request.max_concurrent)
    store = open_run(request, plan)
    base = dict(base_hyp(request).as_dict())
    mean = args.pbt_sleep if args.pbt_sleep is not None else args.sleep
    actors = root / "actors"
    actors.mkdir(parents=True)
    trainable = tune.with_resources(
        tune.with_parameters(member_class(), mean=mean, spread=args.spread, base=base,
                             actors_dir=str(actors), member_spread=args.member_spread),
        {"cpu": 1, "gpu": 1})

    def fit() -> Any:
        with scoped_env(**TUNE_ENV):
            return build_pbt_tuner(request, plan, store, trainable=trainable).fit()

    m = measure(fit, store.csv_path, plan.rows, profile_path(args, "pbt"))
    grid = m.pop("result")
    entries = [e for e in store.entries() if e.get("row") is not None]
    spans = [(float(e["start"]), float(e["end"])) for e in entries]
    m.update(idle_fraction(spans, request.max_concurrent))
    m.update(round_gaps(entries, request.max_concurrent))
    rows = store.rows()
    m.update(rows=len(rows), expected_rows=plan.rows, members=plan.population,
             rounds=plan.rounds,
             actors=sum(1 for _ in actors.iterdir()), gaps=worker_gaps(actors),
             slots=request.max_concurrent, errors=sum(r.error is not None for r in grid),
             first_round_best=max(r.fitness for r in rows if r.meta.get("generation") == 0),
             best=store.best_row().fitness)
    store.close()
    return m


def round_gaps(entries: list[dict], slots: int) -> dict[str, float]:
    """Median time from a round's last step end to the next round's first step start."""
    by_round: dict[int, list[tuple[float, float]]] = {}
    for e in entries:
        by_round.setdefault(int(e["generation"]), []).append((float(e["start"]),
                                                              float(e["end"])))
    rounds = sorted(by_round)
    gaps = [min(s for s, _ in by_round[b]) - max(e for _, e in by_round[a])
            for a, b in zip(rounds, rounds[1:])]
    spans = [max(e for _, e in by_round[r]) - min(s for s, _ in by_round[r]) for r in rounds]
    return {"round_gap_s": float(np.median(gaps)) if gaps else float("nan"),
            "round_span_s": float(np.median(spans)), **member_waits(entries, by_round)}


def member_waits(entries: list[dict], by_round: dict[int, list[tuple[float, float]]]
                 ) -> dict[str, float]:
    """Mean time a member spends between the end of its round r and the start of its
    round r+1, split at the round's last end (the barrier): before it, the member waits for
    the slowest; after it, the hand-over (pause, reset, restore) and driver work."""
    span = {}
    for e in entries:
        member, rnd = re.search(r"-m(\d+)-r(\d+)$", e["trial_id"]).groups()
        span[int(member), int(rnd)] = (float(e["start"]), float(e["end"]))
    barrier = {r: max(e for _, e in v) for r, v in by_round.items()}
    before, after = [], []
    for (member, rnd), (_, end) in span.items():
        nxt = span.get((member, rnd + 1))
        if nxt is None:
            continue
        gap = max(0.0, nxt[0] - end)
        b = min(gap, max(0.0, barrier[rnd] - end))
        before.append(b)
        after.append(gap - b)
    nan = float("nan")
    return {"wait_before_barrier_s": float(np.mean(before)) if before else nan,
            "wait_after_barrier_s": float(np.mean(after)) if after else nan}


def worker_gaps(actors_dir: Path) -> dict[str, Any]:
    """What each worker did between the end of one epoch and the start of the next, from the
    members' own event times: a member that trains on (save, train) or a restart on the
    worker (hand-over or clone: save, reset, restore, train). Each arrow is a driver round
    trip: Tune handles the event, then sends the next call. Means in ms per phase."""
    kinds: dict[str, list[list[tuple[str, float]]]] = {"on": [], "restart": []}
    for path in actors_dir.iterdir():
        events = sorted(((k, float(t)) for k, t, _ in
                         (line.split() for line in path.read_text().splitlines())),
                        key=lambda e: e[1])
        between: list[tuple[str, float]] | None = None
        for kind, t in events:
            if kind == "result":
                between = [(kind, t)]
            elif between is not None:
                between.append((kind, t))
                if kind == "train":
                    names = {k for k, _ in between}
                    kinds["restart" if "reset" in names else "on"].append(between)
                    between = None
    out: dict[str, Any] = {}
    for name, gaps in kinds.items():
        phases: dict[str, list[float]] = {}
        for gap in gaps:
            for (a, ta), (b, tb) in zip(gap, gap[1:]):
                phases.setdefault(f"{a}→{b}", []).append(tb - ta)
        out[name] = {"n": len(gaps), "mean_ms": 1e3 * float(np.mean(
            [g[-1][1] - g[0][1] for g in gaps])) if gaps else float("nan"),
            "phases_ms": {k: 1e3 * float(np.mean(v)) for k, v in phases.items()
                          if len(v) >= len(gaps) / 2}}
    return out


def gap_note(g: dict[str, Any]) -> str:
    """One sentence on worker_gaps' numbers."""
    def one(d: dict[str, Any]) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in d["phases_ms"].items())
        return f"{d['mean_ms']:.1f} ms (n = {d['n']}: {parts})"
    return (f"Between epochs on a worker: a member that trains on {one(g['on'])}; a restart "
            f"(hand-over or clone) {one(g['restart'])}.")


# ----------------------------------------------------------------------------- output
def markdown(args: argparse.Namespace, res: dict[str, dict], init_s: float) -> str:
    lines = ["| run | slots (fake GPUs) | rows | wall | most trials running at once | idle "
             "slot-time (steady) | driver CPU per row | per row by quarter of the run | "
             "worker processes set up / placed | driver peak RSS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in res.items():
        shape = (f"{m['trials']} trials, sleep {args.sleep:g} s ± {100 * args.spread:.0f} %"
                 if name.startswith("classic") else
                 f"{m['members']} members × {m['rounds']} rounds, epoch "
                 f"{args.pbt_sleep or args.sleep:g} s ± {100 * args.spread:.0f} %"
                 + (f", member speeds ± {100 * args.member_spread:.0f} %"
                    if args.member_spread else ""))
        q = " / ".join(f"{v:.1f}" for v in m["quarters_ms"])
        lines.append(f"| {name}: {shape} | {m['slots']} | {m['rows']} | {m['wall_s']:.0f} s | "
                     f"{m['max_running']} | {100 * m['idle']:.2f} % (window "
                     f"{m['window_s']:.0f} s) | {1e3 * m['driver_cpu_s'] / m['rows']:.1f} ms | "
                     f"{q} ms | {m.get('actors', '-')} / {m['placed']} | {m['peak_rss_mb']:.0f} MB |")
    notes = [f"\nray.init: {init_s:.1f} s."]
    if "classic" in res:
        c = res["classic"]
        notes.append(f"Classic: first row fitness {c['first']:.4f}, best {c['best']:.4f}.")
    for name, c in res.items():
        if name.startswith("classic"):
            rss = [x[3] for x in c["samples"]] or [float("nan")]
            notes.append(f"{name[0].upper()}{name[1:]}: Tune's last experiment snapshot holds "
                         f"{c['snapshot_trials']} trials ({c['snapshot_mb']:.1f} MB); "
                         f"its ResultGrid {c['grid_trials']}; after the run the driver "
                         f"holds {c['trials_alive']} Trial objects and "
                         f"{c['heap_objects'] / 1e6:.2f} M GC-tracked objects; driver RSS "
                         f"{rss[0]:.0f} -> {rss[-1]:.0f} MB over the run.")
    for name, p in res.items():
        if name.startswith("pbt"):
            notes.append(f"{name.upper()[:3]}{name[3:]}: best of round 0 "
                         f"{p['first_round_best']:.4f}, best overall {p['best']:.4f}; median "
                         f"round span {p['round_span_s']:.1f} s, median gap between rounds "
                         f"{p['round_gap_s']:.2f} s; a member's mean wait between its rounds "
                         f"{p['wait_before_barrier_s']:.2f} s before the round's last end + "
                         f"{p['wait_after_barrier_s']:.2f} s after; idle slot-time "
                         f"after the first wave {100 * p.get('idle_wave2', float('nan')):.2f} "
                         f"%; errored trials {p['errors']}. {gap_note(p['gaps'])}")
    return "\n".join(lines) + "\n" + " ".join(notes)


def plot(res: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, m in res.items():
        s = np.array([x for x in m["samples"] if x[1] > 0])
        if len(s) < 3:
            continue
        d_rows, d_cpu = np.diff(s[:, 1]), np.diff(s[:, 2])
        keep = d_rows > 0
        a1.plot(s[1:, 1][keep], 1e3 * d_cpu[keep] / d_rows[keep], ".", ms=3, label=name)
        a2.plot(s[:, 1], s[:, 3], label=name)
    a1.set(xlabel="rows in evolve.csv", ylabel="driver CPU ms per row (1 s bins)",
           title="Driver cost per decision")
    a2.set(xlabel="rows in evolve.csv", ylabel="driver RSS (MB)", title="Driver memory")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        a.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def selected(only: str | None, run: str) -> bool:
    """Whether `--only` selects the run named `run`."""
    if only == "pbt-async":
        return run == "pbt, asynchronous rounds"
    return only in (None, run.split(",")[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.async_pbt = args.async_pbt or args.only == "pbt-async"
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import ray

    t0 = time.time()
    # address="local": a new instance even when another `ray start` runs on this machine.
    ray.init(address="local", num_cpus=args.slots, num_gpus=args.slots,
             include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    init_s = time.time() - t0
    res: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="scale_bench_") as tmp:
            runs = [("classic", run_classic, True), ("pbt", run_pbt, True)]
            if args.retire_baseline:
                runs.insert(1, ("classic, Tune holds every trial",
                                partial(run_classic, retire=False), True))
            if args.start_baseline:
                runs.insert(1, ("classic, no start guard", run_classic, False))
                runs.append(("pbt, no start guard", run_pbt, False))
            if args.order_baseline:
                runs.append(("pbt, Ray's start order", partial(run_pbt, slowest_first=False),
                             True))
            if args.async_pbt:
                runs.append(("pbt, asynchronous rounds", partial(run_pbt, asynchronous=True),
                             True))
            if args.hold_baseline:
                runs.append(("pbt, members paused at round ends", partial(run_pbt, hold=False),
                             True))
            if args.pbt_baseline:
                runs.append(("pbt, Ray's restarts", partial(run_pbt, keep_workers=False), True))
            for name, fn, guard in runs:
                if selected(args.only, name):
                    with start_guard(guard):
                        res[name] = fn(args, Path(tmp) / f"run{len(res)}")
                    print(f"# {name}: " + json.dumps({k: v for k, v in res[name].items()
                                                      if k != "samples"}), file=sys.stderr)
    finally:
        ray.shutdown()
    print("python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print()
    print(markdown(args, res, init_s))
    if args.plot:
        plot(res, args.plot)
        print(f"\n![driver cost and memory vs rows]({Path(args.plot).name})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    for name in res if args.profile else ():
        print(f"\n{name}: {snapshot_cost(profile_path(args, name))}")
    short = [f"{name}: {r['rows']} of {r['expected_rows']} rows" for name, r in res.items()
             if r["rows"] != r["expected_rows"]]
    if short:  # a run that loses rows is a bug, whatever its timings
        print("scale: rows missing: " + "; ".join(short), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
