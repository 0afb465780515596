"""Frozen dataclasses for hyperparameters, datasets and training settings (no file access)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator, Mapping

from ..errors import ConfigError

# YOLOv5's hyp keys in hyp.scratch-low.yaml order. evolve.csv columns follow the order of the
# user's hyp file (YOLOv5 is positional there), so Hyp keeps the file's own order.
HYP_KEYS: tuple[str, ...] = (
    "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
    "warmup_bias_lr", "box", "cls", "cls_pw", "obj", "obj_pw", "iou_t", "anchor_t",
    "fl_gamma", "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear",
    "perspective", "flipud", "fliplr", "mosaic", "mixup", "copy_paste",
)
OPTIONAL_HYP_KEYS: tuple[str, ...] = ("anchors",)  # commented out in the scratch files
ALL_HYP_KEYS: frozenset[str] = frozenset(HYP_KEYS + OPTIONAL_HYP_KEYS)


@dataclass(frozen=True)
class Hyp:
    """YOLOv5 hyperparameters, an ordered read-only mapping of name -> float.

    Build with `Hyp.from_mapping`; read with `hyp["lr0"]` or `hyp.lr0`; derive with `replace`.
    """

    items: tuple[tuple[str, float], ...]

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], source: str = "<hyp>") -> "Hyp":
        """Validate names and values; raises ConfigError naming `source` and the bad key."""
        unknown = [k for k in values if k not in ALL_HYP_KEYS]
        if unknown:
            raise ConfigError(
                f"{source}: unknown hyperparameter {unknown[0]!r}; valid keys are: "
                + ", ".join(HYP_KEYS + OPTIONAL_HYP_KEYS)
            )
        missing = [k for k in HYP_KEYS if k not in values]
        if missing:
            raise ConfigError(f"{source}: missing hyperparameter(s): {', '.join(missing)}")
        items = []
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{source}: hyperparameter {k!r} must be a number, got {v!r}")
            if not math.isfinite(float(v)):
                raise ConfigError(f"{source}: hyperparameter {k!r} must be finite, got {v!r}")
            if float(v) < 0:
                raise ConfigError(f"{source}: hyperparameter {k!r} must be >= 0, got {v!r}")
            items.append((str(k), float(v)))
        return cls(tuple(items))

    def __getitem__(self, key: str) -> float:
        for k, v in self.items:
            if k == key:
                return v
        raise KeyError(key)

    def __getattr__(self, key: str) -> float:
        if key in ALL_HYP_KEYS:
            try:
                return self[key]
            except KeyError:
                raise AttributeError(f"hyp has no {key!r} (it is optional)") from None
        raise AttributeError(key)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> tuple[str, ...]:
        """Hyp names in file order."""
        return tuple(k for k, _ in self.items)

    def get(self, key: str, default: float | None = None) -> float | None:
        """Value of `key`, or `default` when the hyp file does not define it."""
        return self[key] if key in self else default

    def as_dict(self) -> dict[str, float]:
        """A plain, ordered dict copy."""
        return dict(self.items)

    def replace(self, **changes: float) -> "Hyp":
        """A new Hyp with some values changed; order kept, new optional keys appended."""
        merged = self.as_dict()
        merged.update(changes)
        return Hyp.from_mapping(merged, source="<hyp.replace>")


@dataclass(frozen=True)
class DataConfig:
    """A parsed YOLOv5 data yaml; every path is absolute and was checked to exist."""

    source: Path                  # the yaml file itself
    root: Path                    # resolved `path:` (or the yaml's folder)
    train: tuple[Path, ...]       # directories, .txt lists or image files
    val: tuple[Path, ...]
    test: tuple[Path, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)


OPTIMIZERS = ("SGD", "Adam", "AdamW")
PRUNE_METHODS = ("l1", "global-l1", "channel")
PRUNE_AT = ("end", "start")


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run needs besides the hyperparameters (YOLOv5 train.py flags)."""

    data: str                                 # data yaml path
    cfg: str | None = None                    # model yaml path or short name (yolov5n…x)
    weights: str | None = None                # official .pt or our checkpoint
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    optimizer: str = "SGD"
    cos_lr: bool = False
    patience: int = 100                       # 0 disables early stopping
    workers: int = 2
    device: str = ""                          # "" = CUDA if present else CPU; "cpu"; "0"
    threads: int | None = None                # torch CPU threads (None = leave as is)
    seed: int = 0
    freeze: tuple[int | str, ...] = (0,)      # YOLOv5: one value N -> 0..N-1; more -> exact;
    #                                           names like "backbone" resolved by models.freeze
    freeze_bn_stats: bool = True              # frozen BN keeps running stats (YOLOv5: False)
    prune_amount: float = 0.0
    prune_method: str = "l1"
    prune_at: str = "end"
    distill: str | None = None                # teacher weights: its head's outputs as soft
    distill_gain: float = 1.0                 # targets (fine-tuning a pruned model)
    cache: str = ""                           # "" or "ram"
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    label_smoothing: float = 0.0
    noval: bool = False                       # validate only on the final epoch
    nosave: bool = False                      # only save the final checkpoint
    rect: bool = False
    multi_scale: bool = False
    single_cls: bool = False
    save_period: int = -1
    amp: bool = True                          # autocast on CUDA only
    channels_last: bool = True                # NHWC on CPU: +10 % training images/s measured
    tensorboard: bool = True
    conf_thres: float = 0.001                 # validation thresholds (YOLOv5 val defaults)
    iou_thres: float = 0.6
    max_det: int = 300
    progress: bool = True                     # tqdm bar on stderr
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # free-form tags

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.imgsz < 32:
            raise ConfigError(f"--img must be >= 32, got {self.imgsz}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if not 0.0 <= self.prune_amount < 1.0:
            raise ConfigError(f"--prune must be in [0, 1), got {self.prune_amount}")
        if self.prune_method not in PRUNE_METHODS:
            raise ConfigError(
                f"--prune-method {self.prune_method!r} is not one of {', '.join(PRUNE_METHODS)}")
        if self.prune_at not in PRUNE_AT:
            raise ConfigError(f"--prune-at {self.prune_at!r} is not one of {', '.join(PRUNE_AT)}")
        if not self.distill_gain >= 0.0:
            raise ConfigError(f"--distill-gain must be >= 0, got {self.distill_gain}")
        if any(isinstance(i, int) and i < 0 for i in self.freeze):
            raise ConfigError(f"--freeze values must be >= 0, got {list(self.freeze)}")
        if self.cache not in ("", "ram"):
            raise ConfigError(f"--cache {self.cache!r} must be 'ram' or empty")
        if self.patience < 0:
            raise ConfigError(f"--patience must be >= 0, got {self.patience}")

    def replace(self, **changes: object) -> "TrainSettings":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all settings, for strict `key=value` overrides."""
        return tuple(f.name for f in fields(cls))
