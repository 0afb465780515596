"""`yolo-ray evolve` (YOLOv5's --evolve on Ray Tune) and `yolo-ray plot-evolve PATH`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import args_for, command
from .flags import _freeze_values, default_data, parse_bool

LOGGER = logging.getLogger("yolo_ray")

EVOLVE_HELP = "evolve hyperparameters with YOLOv5's genetic algorithm, trials run by Ray Tune"
EVOLVE_EPILOG = """\
Each trial trains --epochs from the same start (--weights or --cfg) with hyperparameters
mutated from the best rows of evolve.csv (YOLOv5's classic --evolve), one trial per GPU (or per
CPU slot). --generations G trials give G rows in runs/evolve/<name>/evolve.csv (YOLOv5's
format), evolve_trials.jsonl (trial id, parents, seed, node, status, times), hyp_evolve.yaml,
evolve.png and TensorBoard logs. Our trainer has no AutoAnchor, so evolution behaves like
YOLOv5's --noautoanchor: the 'anchors' gene is dropped from the hyps and the meta file.
Continue an interrupted run with: yolo-ray evolve --resume <name>.
"""


def _pair(kind: type):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
    return parse


@args_for("evolve")
def _evolve_args(p: argparse.ArgumentParser) -> None:
    p.epilog, p.formatter_class = EVOLVE_EPILOG, argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("what to train")
    g.add_argument("--data", default=None, help="data yaml (default: the generated synthetic set)")
    g.add_argument("--cfg", default=None, help="model yaml or yolov5n/s/m/l/x (default yolov5n)")
    g.add_argument("--weights", default=None, help="start weights (official .pt or ours)")
    g.add_argument("--hyp", default=None, help="base hyp yaml (default hyp.scratch-low.yaml)")
    g.add_argument("--img", "--imgsz", dest="imgsz", type=int, default=640)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--workers", type=int, default=None,
                   help="loader workers per trial (default: CPUs per trial - 1, at most 8)")
    g.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    g.add_argument("--optimizer", default="SGD", choices=("SGD", "Adam", "AdamW"))
    g.add_argument("--cos-lr", action="store_true")
    g.add_argument("--single-cls", action="store_true")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument("--freeze", nargs="+", default=["0"], help="as in train (every trial)")
    g.add_argument("--freeze-bn-stats", type=parse_bool, default=True)
    g.add_argument("--prune", dest="prune_amount", type=float, default=0.0)
    g.add_argument("--prune-method", default="l1", choices=("l1", "global-l1", "channel"))
    g.add_argument("--prune-at", default="end", choices=("end", "start"))
    e = p.add_argument_group("evolution")
    e.add_argument("--strategy", default=None, choices=("pbt", "classic"),
                   help="pbt (default): the GA scheduler, a population trained concurrently, "
                        "weaker members clone a YOLOv5-selected parent and mutate; classic: "
                        "YOLOv5's GA, one full training per row")
    e.add_argument("--generations", type=int, default=300, help="trials = evolve.csv rows")
    e.add_argument("--meta", default=None, help="search space yaml (default configs/evolve/meta.yaml)")
    e.add_argument("--parent", default="single", choices=("single", "weighted"))
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--evolve-freeze", nargs=2, type=_pair(int), metavar=("LO", "HI"),
                   help="also evolve the freeze depth within [LO, HI] (sidecar gene)")
    e.add_argument("--evolve-prune", nargs=2, type=_pair(float), metavar=("LO", "HI"),
                   help="also evolve the pruning sparsity within [LO, HI] (sidecar gene)")
    e.add_argument("--seed-csv", default=None, help="seed the population from a YOLOv5 evolve.csv")
    e.add_argument("--early-stop", default="none", choices=("none", "asha"),
                   help="asha: stop hopeless trials early (validates every epoch)")
    e.add_argument("--population", type=int, default=0,
                   help="pbt: population (0 = the concurrent slots, at least 4)")
    e.add_argument("--interval", type=int, default=0,
                   help="pbt: epochs between perturbations (default: --epochs)")
    e.add_argument("--pbt-async", action="store_true",
                   help="pbt: no round barrier: a member ending a round is ranked against "
                        "the members that ended the same round so far and trains on at once "
                        "(at most one round ahead of the slowest); "
                        "less idle GPU time with uneven epochs, decisions depend on timing "
                        "(not repeatable)")
    r = p.add_argument_group("Ray")
    r.add_argument("--gpus-per-trial", type=float, default=None,
                   help="fractions allowed (default: 1 with GPUs, else CPU slots)")
    r.add_argument("--cpus-per-trial", type=int, default=None,
                   help="CPUs and torch threads per trial (default: 1 without GPUs)")
    r.add_argument("--max-concurrent", type=int, default=0,
                   help="concurrent trials (default: GPUs // gpus-per-trial, or CPU slots)")
    r.add_argument("--max-failures", type=int, default=1, help="retries of a failing trial")
    r.add_argument("--checkpoint-budget", type=float, default=0.05, metavar="FRACTION",
                   help="classic: checkpoint after an epoch only while checkpoints take at "
                        "most this share of the trial's time (1: every epoch)")
    r.add_argument("--address", default=None, help="join a Ray cluster: auto or HOST:PORT")
    r.add_argument("--storage", default=None, help="shared Tune storage (s3://…, NFS path)")
    r.add_argument("--data-on-nodes", action="store_true",
                   help="with --address: data and weights already exist at the same absolute "
                        "path on every node (default: ship them from the driver)")
    r.add_argument("--device", dest="device_policy", default="auto", choices=("auto", "cpu"),
                   help="auto: a trial given a GPU uses it; cpu: never touch a GPU")
    r.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                   help="2 also shows Ray's and the trials' own output")
    o = p.add_argument_group("output")
    o.add_argument("--project", default=None, help="default runs/evolve")
    o.add_argument("--name", default="exp")
    o.add_argument("--exist-ok", action="store_true", help="reuse runs/evolve/<name>")
    o.add_argument("--resume", default=None, metavar="NAME",
                   help="continue the run NAME (or folder) with its saved settings")
    o.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _storage(storage: str | None) -> str | None:
    """URIs (s3://, gs://) stay; a local or shared-mount path becomes absolute."""
    return storage if storage is None or "://" in storage else _abs(storage)


def _model(cfg: str | None, weights: str | None) -> str | None:
    """A cfg file becomes absolute; a short name (yolov5n) stays; default yolov5n."""
    if cfg and Path(cfg).is_file():
        return _abs(cfg)
    return cfg or (None if weights else "yolov5n")


def request_from_args(a: argparse.Namespace):
    """The EvolveRequest for these flags (the run folder is created by `evolve_cmd`)."""
    from ..cluster.request import EvolveRequest
    from ..cluster.rundir import DEFAULT_PROJECT
    from ..config.load import load_hyp

    return EvolveRequest(
        run_dir=Path(a.project or DEFAULT_PROJECT) / a.name,
        data=_abs(a.data) or _abs(default_data()) or "", hyp=load_hyp(a.hyp),
        meta=_abs(a.meta), cfg=_model(a.cfg, a.weights), weights=_abs(a.weights),
        strategy=a.strategy or "pbt", epochs=a.epochs, generations=a.generations,
        population=a.population, interval=a.interval or a.epochs, parent=a.parent, seed=a.seed,
        pbt_async=a.pbt_async,
        imgsz=a.imgsz, batch_size=a.batch_size, workers=a.workers, optimizer=a.optimizer,
        cos_lr=a.cos_lr, single_cls=a.single_cls, label_smoothing=a.label_smoothing,
        freeze=_freeze_values(a.freeze), freeze_bn_stats=a.freeze_bn_stats,
        prune_amount=a.prune_amount, prune_method=a.prune_method, prune_at=a.prune_at,
        evolve_freeze=tuple(a.evolve_freeze) if a.evolve_freeze else None,
        evolve_prune=tuple(a.evolve_prune) if a.evolve_prune else None,
        gpus_per_trial=a.gpus_per_trial, cpus_per_trial=a.cpus_per_trial,
        max_concurrent=a.max_concurrent, address=a.address, storage=_storage(a.storage),
        ship_data=_ship(a, False),
        max_failures=a.max_failures, checkpoint_budget=a.checkpoint_budget,
        early_stop=a.early_stop, seed_csv=_abs(a.seed_csv),
        device_policy=a.device_policy, tensorboard=a.tensorboard, verbose=a.verbose,
    )


def resume_request(a: argparse.Namespace):
    """The saved request of run `--resume NAME`, marked resume (address/verbosity may change)."""
    from ..cluster.rundir import DEFAULT_PROJECT, find_run, load_run_file

    from ..errors import ConfigError

    run_dir = find_run(a.resume, a.project or DEFAULT_PROJECT)
    request, _ = load_run_file(run_dir)
    if a.strategy and a.strategy != request.strategy:
        raise ConfigError(f"--resume {a.resume}: {run_dir} is a {request.strategy!r} run; "
                          f"it cannot be resumed with --strategy {a.strategy}")
    return request.replace(resume=True, address=a.address or request.address,
                           verbose=a.verbose, ship_data=_ship(a, request.ship_data))


def _ship(a: argparse.Namespace, saved: bool) -> bool:
    """Ship data to the nodes when joining a cluster (--address) unless --data-on-nodes."""
    return not a.data_on_nodes and (saved or bool(a.address))


@command("evolve", EVOLVE_HELP)
def evolve_cmd(a: argparse.Namespace) -> int:
    from ..cluster.launch import build_ga, check_inputs, run_evolution
    from ..cluster.rundir import make_run_dir

    if a.resume:
        request = resume_request(a)
        LOGGER.info(f"evolve: resuming {request.run_dir}")
    else:
        request = request_from_args(a)
        check_inputs(request)  # everything checkable is checked before a folder appears
        build_ga(request, warn=False)  # meta / hyp problems, before any folder exists
        run_dir = make_run_dir(request.run_dir.parent, request.run_dir.name, a.exist_ok)
        request = request.replace(run_dir=run_dir)
        LOGGER.info(f"evolve: results go to {run_dir}")
    summary = run_evolution(request)
    _print_summary(summary)
    return 0 if summary.complete else 1


def _print_summary(s) -> None:
    best = "-" if s.best_fitness is None else f"{s.best_fitness:.5g} (row {s.best_row})"
    LOGGER.info(f"evolve: {s.rows} rows ({s.trials} trials, {s.failed} failed, "
                f"{s.early_stopped} early-stopped) in {s.wall_s:.0f} s; best fitness {best}")
    for path in (s.evolve_csv, s.hyp_yaml, s.plot):
        if path is not None and path.exists():
            LOGGER.info(f"  {path}")
    for extra in ("best_weights", "hyp_schedule"):  # PBT: best member and its schedule
        path = getattr(s, extra, None)
        if path is not None and path.exists():
            LOGGER.info(f"  {path}")
    if s.tb_dir is not None:
        LOGGER.info(f"evolve: view with: tensorboard --logdir {s.run_dir}")


# ------------------------------------------------------------------ plot-evolve
@args_for("plot-evolve")
def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="an evolve.csv (ours or YOLOv5-made) or the folder holding it")


@command("plot-evolve", "write evolve.png beside an evolve.csv (YOLOv5's plot_evolve)")
def plot_evolve_cmd(a: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evolve.plot import plot_evolve

    path = Path(a.path)
    csv = path / "evolve.csv" if path.is_dir() else path
    if not csv.is_file():
        raise ConfigError(f"plot-evolve: {csv} not found")
    out = plot_evolve(csv, log=LOGGER.info)
    LOGGER.info(f"Saved {out}")
    return 0
