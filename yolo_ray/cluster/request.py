"""What an evolution run is asked to do (EvolveRequest) and what it returns (EvolveSummary)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..config.schema import Hyp, TrainSettings
from ..errors import ConfigError

STRATEGIES = ("classic", "pbt")
EARLY_STOP = ("none", "asha")
DEVICE_POLICIES = ("auto", "cpu")
KEEP_FINISHED = 128  # classic: ended trials Tune holds; ~3 MB of its snapshot (benchmarks.md)


@dataclass(frozen=True)
class EvolveRequest:
    """One evolution run, fully resolved on the driver: every path is absolute.

    Built by the CLI (or by hand from Python); consumed by `launch.run_classic` and
    `pbt_launch.run_pbt`. Frozen: derive variants with `replace(...)`.
    """

    run_dir: Path                        # runs/evolve/<name>: evolve.csv, sidecar, TB, ray/
    data: str                            # absolute data yaml
    hyp: Hyp                             # base hyp (generation 1 trains it unmutated)
    meta: str | None = None              # absolute meta yaml; None = configs/evolve/meta.yaml
    cfg: str | None = None               # model yaml (absolute) or a short name (yolov5n…x)
    weights: str | None = None           # absolute start weights; None = train from --cfg
    strategy: str = "classic"
    epochs: int = 10                     # epochs per trial (classic) / total epochs (pbt)
    generations: int = 300               # classic: rows = trials; pbt: rows to record
    population: int = 0                  # pbt population; 0 = number of concurrent slots
    interval: int = 1                    # pbt perturbation interval in epochs
    pbt_async: bool = False              # pbt: no round barrier (cluster/pbt_async.py)
    parent: str = "single"               # YOLOv5 parent selection: single | weighted
    seed: int = 0                        # run seed: GA draws use (seed, trial index)
    imgsz: int = 640
    batch_size: int = 16
    workers: int | None = None           # data loader workers; None = cpus_per_trial - 1 (≤ 8)
    optimizer: str = "SGD"
    cos_lr: bool = False
    single_cls: bool = False
    label_smoothing: float = 0.0
    freeze: tuple[int | str, ...] = (0,)
    freeze_bn_stats: bool = True
    prune_amount: float = 0.0
    prune_method: str = "l1"
    prune_at: str = "end"
    evolve_freeze: tuple[int, int] | None = None      # optional sidecar gene bounds
    evolve_prune: tuple[float, float] | None = None   # optional sidecar gene bounds
    gpus_per_trial: float | None = None  # fractions allowed; 0 = CPU slots; None = auto
    cpus_per_trial: int | None = None    # also the trial's torch threads; None = auto
    max_concurrent: int = 0              # 0 = derived from the cluster's GPUs / CPUs
    address: str | None = None           # None = embedded local Ray; "auto" / HOST:PORT
    storage: str | None = None           # Tune storage path/URI; None = the run folder
    ship_data: bool = False              # pack data + weights on the driver, extract per node
    max_failures: int = 1                # retries per trial before it is recorded failed
    checkpoint_budget: float = 0.05      # classic: most of a trial's time its checkpoints take
    reuse_actors: bool = True            # classic: a finished trial's worker runs the next one
    tune_keep_finished: int = KEEP_FINISHED  # classic: ended trials Tune holds (trial_retirement)
    early_stop: str = "none"             # none | asha
    resume: bool = False
    seed_csv: str | None = None          # YOLOv5-made evolve.csv to seed the store with
    device_policy: str = "auto"          # auto: GPU if Tune gave one, else CPU; cpu: always CPU
    tensorboard: bool = True
    verbose: int = 1                     # 0 quiet, 1 progress lines, 2 + Ray's own output

    def __post_init__(self) -> None:
        for problem in request_problems(self):
            raise ConfigError(problem)

    @property
    def experiment_name(self) -> str:
        """Tune experiment folder under `storage_path`: 'ray' locally, the run name remotely."""
        return "ray" if self.storage is None else self.run_dir.name

    @property
    def storage_path(self) -> str:
        """Tune's storage_path: the run folder itself unless --storage names a shared one."""
        return self.storage or str(self.run_dir)

    @property
    def experiment_path(self) -> str:
        """Where Tune's experiment state (tuner.pkl, searcher state) lives."""
        return f"{self.storage_path.rstrip('/')}/{self.experiment_name}"

    @property
    def tb_dir(self) -> Path:
        """TensorBoard root (`tensorboard --logdir <this>`)."""
        return self.run_dir / "tensorboard"

    @property
    def threads(self) -> int:
        """torch CPU threads per trial: its CPUs (1 until resources are resolved)."""
        return max(1, int(self.cpus_per_trial or 1))

    def replace(self, **changes: object) -> EvolveRequest:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def base_settings(self) -> TrainSettings:
        """TrainSettings shared by all trials (before genes and device are applied).

        Like YOLOv5's --evolve: validate only the final epoch (noval) and write no files;
        ASHA needs a fitness every epoch, so early stopping validates each epoch.
        """
        return TrainSettings(
            data=self.data, cfg=self.cfg, weights=self.weights, epochs=self.epochs,
            batch_size=self.batch_size, imgsz=self.imgsz, optimizer=self.optimizer,
            cos_lr=self.cos_lr, patience=0, device="cpu",
            workers=self.workers if self.workers is not None else min(8, self.threads - 1),
            threads=self.threads, seed=self.seed, freeze=self.freeze,
            freeze_bn_stats=self.freeze_bn_stats, prune_amount=self.prune_amount,
            prune_method=self.prune_method, prune_at=self.prune_at,
            project=str(self.run_dir / "trials"), name="trial", exist_ok=True,
            label_smoothing=self.label_smoothing, noval=self.early_stop == "none", nosave=True,
            single_cls=self.single_cls, tensorboard=False, progress=False,
        )

    def trial_settings(self, genes: Mapping[str, float] | None = None,
                       gpu_ids: Sequence[object] = (), seed: int | None = None,
                       cuda_available: bool = False) -> TrainSettings:
        """Settings for one trial: sidecar genes (freeze, prune), seed and device applied.

        `gpu_ids` are the ids Ray assigned to the trial (`ray.get_gpu_ids()`); none means CPU.
        Call `isolate_devices(gpu_ids)` in the trial process first, so CUDA stays untouched.
        """
        s = self.base_settings()
        genes = dict(genes or {})
        if "freeze" in genes:
            s = s.replace(freeze=(round(genes["freeze"]),))
        if "prune" in genes:
            s = s.replace(prune_amount=float(genes["prune"]))
        if seed is not None:
            s = s.replace(seed=int(seed))
        return s.replace(device=trial_device(gpu_ids, self.device_policy, cuda_available))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe values (saved in the run folder for --resume)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Hyp):
                v = v.as_dict()
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "<request>") -> EvolveRequest:
        """Inverse of `to_dict`; unknown keys are ignored (files from newer versions)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in values.items() if k in names}
        kw["run_dir"] = Path(kw["run_dir"])
        kw["hyp"] = Hyp.from_mapping(kw["hyp"], source)
        for key in ("freeze", "evolve_freeze", "evolve_prune"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def request_problems(r: EvolveRequest) -> list[str]:
    """User-facing messages for every invalid value of a request (empty when valid)."""
    checks = [
        (r.strategy in STRATEGIES, f"--strategy {r.strategy!r} is not one of {', '.join(STRATEGIES)}"),
        (r.early_stop in EARLY_STOP,
         f"--early-stop {r.early_stop!r} is not one of {', '.join(EARLY_STOP)}"),
        (r.device_policy in DEVICE_POLICIES,
         f"--device {r.device_policy!r} is not one of {', '.join(DEVICE_POLICIES)}"),
        (r.parent in ("single", "weighted"), f"--parent {r.parent!r} is not single or weighted"),
        (not r.pbt_async or r.strategy == "pbt",
         "--pbt-async applies to --strategy pbt only (classic trials have no rounds)"),
        (r.generations >= 1, f"--generations must be >= 1, got {r.generations}"),
        (r.epochs >= 1, f"--epochs must be >= 1, got {r.epochs}"),
        (r.population >= 0, f"--population must be >= 0, got {r.population}"),
        (r.interval >= 1, f"--interval must be >= 1, got {r.interval}"),
        (r.seed >= 0, f"--seed must be >= 0, got {r.seed}"),
        (r.gpus_per_trial is None or r.gpus_per_trial >= 0,
         f"--gpus-per-trial must be >= 0, got {r.gpus_per_trial}"),
        (r.cpus_per_trial is None or r.cpus_per_trial >= 1,
         f"--cpus-per-trial must be >= 1, got {r.cpus_per_trial}"),
        (r.max_concurrent >= 0, f"--max-concurrent must be >= 0, got {r.max_concurrent}"),
        (r.max_failures >= -1, f"--max-failures must be >= -1, got {r.max_failures}"),
        (0 < r.checkpoint_budget <= 1,
         f"--checkpoint-budget must be in (0, 1], got {r.checkpoint_budget}"),
        (r.workers is None or r.workers >= 0, f"--workers must be >= 0, got {r.workers}"),
    ]
    out = [msg for ok, msg in checks if not ok]
    if r.evolve_freeze is not None:
        lo, hi = r.evolve_freeze
        if not 0 <= lo <= hi:
            out.append(f"--evolve-freeze LO HI needs 0 <= LO <= HI, got {lo} {hi}")
    if r.evolve_prune is not None:
        p_lo, p_hi = r.evolve_prune
        if not 0 <= p_lo <= p_hi < 1:
            out.append(f"--evolve-prune LO HI needs 0 <= LO <= HI < 1, got {p_lo} {p_hi}")
    return out


def trial_device(gpu_ids: Sequence[object], policy: str = "auto",
                 cuda_available: bool = True) -> str:
    """'0' (the first visible CUDA device) when Ray gave the trial a usable GPU, else 'cpu'.

    Fake logical GPUs (`ray.init(num_gpus=2)` on a CPU box) come with no CUDA: CPU then.
    """
    return "0" if gpu_ids and policy == "auto" and cuda_available else "cpu"


def isolate_devices(gpu_ids: Sequence[object], policy: str = "auto",
                    env: dict[str, str] | None = None) -> None:
    """Hide every GPU from a trial that was given none (Ray 2.60 no longer blanks the env).

    Must run in the trial process before torch initialises CUDA.
    """
    target = os.environ if env is None else env
    if not gpu_ids or policy == "cpu":
        target["CUDA_VISIBLE_DEVICES"] = ""


@dataclass(frozen=True)
class EvolveSummary:
    """What a finished (or interrupted) evolution run produced."""

    run_dir: Path
    rows: int                            # rows in evolve.csv (seeded rows included)
    trials: int                          # trials recorded by this run (any status)
    failed: int = 0
    early_stopped: int = 0
    best_fitness: float | None = None
    best_row: int | None = None          # 0-based row index in evolve.csv
    best_hyp: dict[str, float] = field(default_factory=dict)
    evolve_csv: Path | None = None
    hyp_yaml: Path | None = None
    plot: Path | None = None
    tb_dir: Path | None = None
    wall_s: float = 0.0
    complete: bool = True                # False when interrupted before G rows
    # Per trial (when known): wall-clock seconds of suggested, trial_start, loop_start,
    # loop_end and recorded (row written), for overhead measurements.
    timings: tuple[dict[str, float], ...] = ()
