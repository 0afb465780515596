"""The Trainer: wires model, data, loss, optimiser, EMA, validation, checkpoints and logs."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import __version__
from ..config.load import load_data_config
from ..config.schema import Hyp, TrainSettings
from ..data.loader import build_dataloader, create_train_loader, create_val_loader
from ..errors import ConfigError
from ..models import freeze as freeze_ops
from ..models import prune as prune_ops
from .assemble import (build_run_model, make_save_dir, names_for, select_device,
                       set_threads)
from .checkpoint import half_state_dict, save_checkpoint
from .distill import Distiller
from .ema import ModelEMA
from .fitness import fitness
from .loop import EpochContext, train_one_epoch
from .loss import ComputeLoss
from .optim import (accumulate_steps, build_optimizer, lr_lambda, scaled_weight_decay,
                    set_hyp_on_optimizer, split_param_groups, warmup_iterations)
from .results import Metrics
from .run_log import (EpochRecord, TensorBoardLog, append_results_csv, epoch_scalars)
from .validate import ValResult, evaluate

LOGGER = logging.getLogger("yolo_ray")
Hook = Callable[[EpochRecord], None]


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished run."""

    metrics: Metrics
    fitness: float
    best_fitness: float
    best_epoch: int
    epochs_run: int
    save_dir: Path | None
    last: Path | None
    best: Path | None


class Trainer:
    """YOLOv5's train.py as an object: `setup()`, then `train_epoch()` until `done`, or `fit()`."""

    def __init__(self, settings: TrainSettings, hyp: Hyp, hooks: Sequence[Hook] = (),
                 save_dir: Path | None = None, write_files: bool = True) -> None:
        self.settings, self.hyp, self.hooks = settings, hyp, list(hooks)
        self.save_dir = save_dir
        self.write_files = write_files
        self.epoch = 0
        self.best_fitness, self.best_epoch = -1.0, -1
        self.last_metrics = Metrics.zeros()
        self.last_fitness = 0.0
        self.last_opt_step = -1
        self.stop = False
        self._ready = False

    # ---------------------------------------------------------------- set-up
    def setup(self, resume_state: dict[str, Any] | None = None) -> "Trainer":
        """Build everything; `resume_state` is a last.pt dict for exact resumption."""
        s = self.settings
        set_threads(s.threads)
        self.device = select_device(s.device)
        self.data = load_data_config(s.data)
        self.names = names_for(self.data, s.single_cls)
        self.nc = len(self.names)
        bundle = build_run_model(s, self.hyp, self.nc, self.names, resume=resume_state is not None)
        self.model_yaml, self.prune_plan = bundle.yaml, bundle.prune_plan
        self.model = bundle.model.to(self.device)
        # NHWC convolutions are faster on CPU (bench/train_throughput.py); same math.
        self.channels_last = s.channels_last and self.device.type == "cpu"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if resume_state is not None:  # before freezing, so a fused frozen prefix sees these
            self.model.load_state_dict(resume_state.get("train_state", resume_state)["model"])
        self.grid = max(int(self.model.stride.max()), 32)
        self._check_imgsz()
        self.mask_keeper = None
        if s.prune_amount > 0 and s.prune_at == "start":
            self._prune_start()
        self.freeze = self._apply_freeze()
        self._build_data()
        self._build_optim()
        self.compute_loss = ComputeLoss(self.model, self.hyp, s.imgsz, s.label_smoothing)
        self.distiller = self._build_distiller()
        if resume_state is not None:
            self._load_train_state(resume_state)
        self._open_logs()
        self._ready = True
        return self

    def _check_imgsz(self) -> None:
        s = self.settings
        if s.imgsz % self.grid:
            fixed = math.ceil(s.imgsz / self.grid) * self.grid
            LOGGER.warning(f"--img {s.imgsz} must be a multiple of max stride {self.grid}, "
                           f"updating to {fixed}")
            self.settings = s = s.replace(imgsz=max(fixed, 2 * self.grid))

    def _prune_start(self) -> None:
        s = self.settings
        report = prune_ops.prune_model(self.model, s.prune_amount, s.prune_method, keep_masks=True)
        self.model = report.model.to(self.device)
        self.mask_keeper = report.mask_keeper
        self.prune_plan = report.plan or self.prune_plan
        LOGGER.info(f"Pruned at start ({s.prune_method}, {s.prune_amount}): {report.summary()}")

    def _build_distiller(self) -> Distiller | None:
        s = self.settings
        if not s.distill:
            return None
        from .val_run import load_model_for_inference

        teacher = load_model_for_inference(s.distill).float().to(self.device)
        if self.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        head, t_head = self.model.model[-1], teacher.model[-1]
        shape = (head.nc, head.na, head.nl, [int(v) for v in self.model.stride])
        t_shape = (t_head.nc, t_head.na, t_head.nl, [int(v) for v in teacher.stride])
        if t_shape != shape:  # the outputs must line up anchor by anchor
            raise ConfigError(f"--distill {s.distill}: the teacher's head (classes, anchors, "
                              f"levels, strides) is {t_shape}, the model's {shape}")
        LOGGER.info(f"Distilling from {s.distill} (gain {s.distill_gain})")
        return Distiller(teacher, s.distill_gain)

    def _apply_freeze(self) -> Any:
        s = self.settings
        indices = freeze_ops.parse_freeze_spec(list(s.freeze), self.model_yaml,
                                               len(self.model.model))
        report = freeze_ops.apply_freeze(self.model, indices, bn_stats_fixed=s.freeze_bn_stats)
        if indices:
            LOGGER.info(f"Frozen layers {list(indices)}: {report.frozen_params:,} frozen, "
                        f"{report.trainable_params:,} trainable parameters")
        return report

    def _build_data(self) -> None:
        s = self.settings
        nw = s.workers
        self.train_loader = create_train_loader(
            self.data, s.imgsz, s.batch_size, self.hyp, stride=self.grid, cache=s.cache,
            workers=nw, seed=s.seed, rect=s.rect, single_cls=s.single_cls, log=LOGGER.info)
        self.val_loader = create_val_loader(
            self.data, s.imgsz, s.batch_size * 2, stride=self.grid, cache=s.cache, workers=nw,
            single_cls=s.single_cls, log=LOGGER.info)

    def _build_optim(self) -> None:
        s, hyp = self.settings, self.hyp
        self.accumulate = accumulate_steps(s.batch_size)
        decay = scaled_weight_decay(hyp.weight_decay, s.batch_size)
        groups = split_param_groups(self.model)
        self.optimizer = build_optimizer(groups, s.optimizer, hyp.lr0, hyp.momentum, decay)
        for g in self.optimizer.param_groups:
            g["initial_lr"] = hyp.lr0
        self.lr_factor = lr_lambda(s.epochs, hyp.lrf, s.cos_lr)
        self._set_epoch_lr(0)
        self.nw = warmup_iterations(hyp, len(self.train_loader))
        amp = s.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp)
        self.amp = amp
        self.ema = ModelEMA(self.model)
        self.rng = np.random.default_rng([s.seed, 7])  # multi-scale sizes

    def _set_epoch_lr(self, epoch: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * self.lr_factor(epoch)

    def _open_logs(self) -> None:
        s = self.settings
        if self.write_files and self.save_dir is None:
            self.save_dir = make_save_dir(s)
        tb_dir = self.save_dir if (self.write_files and s.tensorboard) else None
        self.tb = TensorBoardLog(tb_dir)
        self.tb.scalars({"params/trainable": float(self.freeze.trainable_params),
                         "params/frozen": float(self.freeze.frozen_params)}, 0)

    # ---------------------------------------------------------------- epochs
    @property
    def done(self) -> bool:
        """True when all epochs ran or early stopping fired."""
        return self.stop or self.epoch >= self.settings.epochs

    def set_hyp(self, hyp: Hyp) -> None:
        """Switch hyperparameters mid-run (PBT explore): lr, momentum, decay, loss, augmentation."""
        self.hyp = hyp
        self.lr_factor = lr_lambda(self.settings.epochs, hyp.lrf, self.settings.cos_lr)
        set_hyp_on_optimizer(self.optimizer, hyp, self.settings.batch_size)
        self._set_epoch_lr(self.epoch)
        self.compute_loss.set_hyp(hyp)
        # Persistent loader workers hold their own copy of the dataset: give the new
        # augmentation hyps to a fresh loader over the same (already scanned) dataset.
        dataset = self.train_loader.dataset
        dataset.hyp = hyp.as_dict()
        self.train_loader = build_dataloader(dataset, self.settings.batch_size,
                                             shuffle=not self.settings.rect,
                                             workers=self.settings.workers, seed=self.settings.seed)

    def train_epoch(self) -> EpochRecord:
        """Train one epoch, validate when due, log, checkpoint; returns the record."""
        if not self._ready:
            self.setup()
        s, t0 = self.settings, time.perf_counter()
        freeze_ops.set_train_mode(self.model, self.freeze)
        self.train_loader.dataset.set_epoch(self.epoch)
        # Shuffle order is a function of (seed, epoch) so a resumed run replays it exactly.
        self.train_loader.generator.manual_seed(s.seed * 100_003 + self.epoch)
        stats = train_one_epoch(self._epoch_context())
        self.last_opt_step = stats.last_opt_step
        self.epoch += 1
        self._set_epoch_lr(self.epoch)
        final = self.epoch >= s.epochs
        possible_stop = s.patience and (self.epoch - 1 - self.best_epoch) >= s.patience - 1
        validated = not s.noval or final or bool(possible_stop)
        if validated:
            self.last_metrics = self.validate().metrics
            self.last_fitness = fitness(self.last_metrics)
        improved = validated and self.last_fitness > self.best_fitness
        if improved:
            self.best_fitness, self.best_epoch = self.last_fitness, self.epoch - 1
        if s.patience and (self.epoch - 1 - self.best_epoch) >= s.patience and not final:
            LOGGER.info(f"Stopping training early: no improvement in the last {s.patience} "
                        f"epochs; best epoch {self.best_epoch}")
            self.stop = True
        record = EpochRecord(self.epoch - 1, stats.losses, self.last_metrics, validated,
                             self.last_fitness, self.best_fitness, stats.lrs,
                             time.perf_counter() - t0, stats.images, self.stop,
                             stats.distill_loss)
        self._record(record, improved)
        return record

    def _epoch_context(self) -> EpochContext:
        s = self.settings
        return EpochContext(
            model=self.model, loader=self.train_loader, optimizer=self.optimizer,
            scaler=self.scaler, compute_loss=self.compute_loss, ema=self.ema, hyp=self.hyp,
            epoch=self.epoch, epochs=s.epochs, lr_factor=self.lr_factor,
            batch_size=s.batch_size, device=self.device, nw=self.nw,
            accumulate=self.accumulate, last_opt_step=self.last_opt_step, imgsz=s.imgsz,
            grid=self.grid, amp=self.amp, multi_scale=s.multi_scale, rng=self.rng,
            after_step=self.mask_keeper.apply if self.mask_keeper else None,
            progress=s.progress, channels_last=self.channels_last, distiller=self.distiller)

    def validate(self, model: torch.nn.Module | None = None) -> ValResult:
        """Validate the EMA model (or `model`) on the val set with YOLOv5's thresholds."""
        s = self.settings
        return evaluate(model or self.ema.ema, self.val_loader, self.device, self.compute_loss,
                        s.conf_thres, s.iou_thres, s.max_det, nc=self.nc,
                        half=self.amp, single_cls=s.single_cls)

    def _record(self, record: EpochRecord, improved: bool) -> None:
        s = self.settings
        if self.write_files and self.save_dir is not None:
            append_results_csv(self.save_dir / "results.csv", record)
            final = self.done
            if not s.nosave or final:
                self.save(self.save_dir / "weights" / "last.pt", train_state=True)
                if improved:
                    self.save(self.save_dir / "weights" / "best.pt", train_state=False)
                if s.save_period > 0 and record.epoch % s.save_period == 0:
                    self.save(self.save_dir / "weights" / f"epoch{record.epoch}.pt", False)
        self.tb.scalars(epoch_scalars(record), record.epoch)
        for hook in self.hooks:
            hook(record)

    # ---------------------------------------------------------------- state
    def checkpoint_payload(self, train_state: bool) -> dict[str, Any]:
        """Plain state_dicts + metadata, loadable with torch.load(weights_only=True)."""
        payload: dict[str, Any] = {
            "epoch": self.epoch - 1, "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch, "model": half_state_dict(self.ema.ema.state_dict()),
            "yaml": self.model_yaml, "nc": self.nc, "names": list(self.names),
            "prune_plan": self.prune_plan, "hyp": self.hyp.as_dict(),
            "settings": _plain_settings(self.settings), "version": __version__,
            "date": datetime.now(timezone.utc).isoformat(),
            "metrics": self.last_metrics.as_dict(),
        }
        if train_state:
            payload["train_state"] = self.state_dict()
        return payload

    def save(self, path: Path, train_state: bool = True) -> Path:
        """Write a checkpoint atomically."""
        return save_checkpoint(path, self.checkpoint_payload(train_state))

    def state_dict(self) -> dict[str, Any]:
        """Everything exact resumption needs (fp32 model, EMA, optimizer, counters, RNG)."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch,
            "last_opt_step": self.last_opt_step, "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch, "last_metrics": list(self.last_metrics.as_row()),
            "last_fitness": self.last_fitness, "rng": self.rng.bit_generator.state,
            "stop": self.stop,
        }

    def load_train_state(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict()` output (after setup), e.g. a PBT clone's weights."""
        state = state.get("train_state", state)
        self.model.load_state_dict(state["model"])
        freeze_ops.refresh(self.model, self.freeze)
        self._load_train_state(state)

    def _load_train_state(self, state: dict[str, Any]) -> None:
        state = state.get("train_state", state)
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.last_opt_step = int(state["epoch"]), int(state["last_opt_step"])
        self.best_fitness, self.best_epoch = float(state["best_fitness"]), int(state["best_epoch"])
        self.last_metrics = Metrics.from_row(state["last_metrics"])
        self.last_fitness, self.stop = float(state["last_fitness"]), bool(state["stop"])
        self.rng.bit_generator.state = state["rng"]
        self._set_epoch_lr(self.epoch)

    # ---------------------------------------------------------------- whole run
    def fit(self) -> TrainResult:
        """Run all epochs (or until early stop), then prune-at-end if asked."""
        if not self._ready:
            self.setup()
        while not self.done:
            self.train_epoch()
        if self.settings.prune_amount > 0 and self.settings.prune_at == "end":
            self._prune_end()
        self.tb.close()
        return self.result()

    def _prune_end(self) -> None:
        s = self.settings
        report = prune_ops.prune_model(self.ema.ema, s.prune_amount, s.prune_method,
                                       keep_masks=False)
        self.ema.ema = report.model.to(self.device)
        self.prune_plan = report.plan or self.prune_plan
        self.last_metrics = self.validate().metrics
        self.last_fitness = fitness(self.last_metrics)
        LOGGER.info(f"Pruned at end ({s.prune_method}, {s.prune_amount}): {report.summary()}; "
                    f"fitness after pruning {self.last_fitness:.5g}")
        if self.write_files and self.save_dir is not None:
            self.save(self.save_dir / "weights" / "pruned.pt", train_state=False)

    def result(self) -> TrainResult:
        """Summary of the run so far."""
        w = self.save_dir / "weights" if self.save_dir else None
        best = w / "best.pt" if w and (w / "best.pt").exists() else None
        last = w / "last.pt" if w and (w / "last.pt").exists() else None
        return TrainResult(self.last_metrics, self.last_fitness, self.best_fitness,
                           self.best_epoch, self.epoch, self.save_dir, last, best)


def _plain_settings(settings: TrainSettings) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(settings).items()}


def settings_from_plain(values: dict[str, Any]) -> TrainSettings:
    """Rebuild TrainSettings from a checkpoint's plain dict (tuples restored)."""
    fields = {f.name: f for f in dataclasses.fields(TrainSettings)}
    kw = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if k == "extra" else
              tuple(v) if isinstance(v, list) else v)
          for k, v in values.items() if k in fields}
    return TrainSettings(**kw)


def run(settings: TrainSettings, hyp: Hyp, hooks: Sequence[Hook] = ()) -> TrainResult:
    """Train with these settings and hyperparameters; returns the final result."""
    return Trainer(settings, hyp, hooks).fit()
