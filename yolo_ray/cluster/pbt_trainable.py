"""The PBT member: a class Trainable that trains one epoch per step and swaps hyps in place."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from ..config.schema import ALL_HYP_KEYS, Hyp, TrainSettings
from ..errors import WeightsError
from ..evolve.ga import trial_seed
from .pbt_state import CKPT_META
from .request import isolate_devices, trial_device
from .scheduler import MEMBER_KEY
from .trainable import epoch_report, node_label

LOGGER = logging.getLogger("yolo_ray")
SETTINGS_KEY = "settings"        # config: TrainSettings (or its plain dict), shared by members
INTERVAL_KEY = "interval"        # config: epochs per round (validation happens at its ends)
DEVICE_POLICY_KEY = "device_policy"
STATE_FILE = "state.pt"          # exact resumption: trainer.state_dict() (fp32)
WEIGHTS_FILE = "weights.pt"      # final checkpoint only: our best.pt payload (fp16 EMA)
CHECKPOINT_PREFIX = "checkpoint_"  # Tune's checkpoint folder names: checkpoint_000003


def settings_of(config: Mapping[str, Any]) -> TrainSettings:
    """The member's TrainSettings: the shared ones with its own seed (run seed, member)."""
    from ..train.trainer import settings_from_plain

    raw = config[SETTINGS_KEY]
    settings = raw if isinstance(raw, TrainSettings) else settings_from_plain(dict(raw))
    member = int(config.get(MEMBER_KEY, 0))
    # The LR schedule and early stopping would fight PBT's rounds: no early stopping.
    return settings.replace(seed=trial_seed(settings.seed, member), patience=0)


def hyp_of(config: Mapping[str, Any]) -> Hyp:
    """The hyps a config carries (top-level keys, as GAPopulationBasedTraining writes them)."""
    return Hyp.from_mapping({k: float(v) for k, v in config.items() if k in ALL_HYP_KEYS},
                            "<pbt member config>")


def skip_used_checkpoint_dirs(storage: Any) -> int:
    """Advance a Tune StorageContext's checkpoint index past every `checkpoint_NNNNNN` folder
    already in its trial folder; returns the index the next save uses (-1: no storage).

    Tune hands an actor the controller's count of a trial's checkpoints (at setup and reset).
    The worker's own count can be ahead of it (a save the controller dropped: one made while
    the trial paused, or just before a failure), and the next save would then overwrite a
    checkpoint that a PBT clone restores from, silently, on the next retry or resume."""
    import pyarrow.fs as pafs

    if storage is None:
        return -1
    try:
        infos = storage.storage_filesystem.get_file_info(
            pafs.FileSelector(storage.trial_fs_path, allow_not_found=True))
    except (OSError, ValueError):  # storage unreachable now: the save itself will say so
        return storage.current_checkpoint_index
    numbers = [i.base_name.removeprefix(CHECKPOINT_PREFIX) for i in infos
               if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]
    used = [int(n) for n in numbers if n.isdigit()]
    if used and max(used) >= storage.current_checkpoint_index:
        LOGGER.debug(f"{storage.trial_fs_path}: checkpoint index {storage.current_checkpoint_index}"
                     f" already used; the next save goes to {max(used) + 1}")
        storage.current_checkpoint_index = max(used) + 1
    return storage.current_checkpoint_index


def weights_crc(model: Any) -> int:
    """CRC32 of a model's parameters and buffers: equal weights, equal value (lineage checks)."""
    crc = 0
    for name, tensor in model.state_dict().items():
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(tensor.detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc


class PBTTrainable(tune.Trainable):
    """One population member: `step` = one epoch; checkpoints allow exact resumption.

    Config: `settings` (TrainSettings or its dict, `epochs` = rounds × interval), `interval`,
    `trial_index` (the member), every hyp key at top level, optional `device_policy`.
    With `reuse_actors=True` an actor serves several members in turn: `reset_config` keeps
    the built model and data when the member is the same and rebuilds them otherwise; the
    checkpoint that Tune restores next (own or a PBT parent's) then sets weights, EMA,
    optimizer and epoch, and the member's current hyps are applied on top.
    """

    def setup(self, config: dict[str, Any], data_blob: Any = None) -> None:
        import ray

        in_ray = ray.is_initialized()  # False when built by hand (tests, debugging)
        gpu_ids = list(ray.get_gpu_ids()) if in_ray else []
        self._policy = str(config.get(DEVICE_POLICY_KEY, "auto"))
        if in_ray:
            isolate_devices(gpu_ids, self._policy)  # before anything initialises CUDA
        self._gpu_ids = gpu_ids
        self._node = node_label() if in_ray else "local"
        self._pending: dict[str, Any] | None = None
        self._shipped = data_blob  # shipping.ShippedData: extracted once per node
        skip_used_checkpoint_dirs(getattr(self, "_storage", None))
        self._build(config)

    def _build(self, config: Mapping[str, Any]) -> None:
        import torch

        from ..train.trainer import Trainer

        from .shipping import localize

        settings = localize(settings_of(config), self._shipped)
        device = trial_device(self._gpu_ids, self._policy, torch.cuda.is_available())
        self.member = int(config.get(MEMBER_KEY, 0))
        self.interval = max(1, int(config.get(INTERVAL_KEY, 1)))
        self.hyp = hyp_of(config)
        self.trainer = Trainer(settings.replace(device=device), self.hyp, write_files=False)
        self.trainer.setup()
        self._start_crc = weights_crc(self.trainer.model)
        self._round_start: float | None = None

    # ------------------------------------------------------------------ training
    def step(self) -> dict[str, Any]:
        if self._pending is not None:  # reused actor, nothing restored: a fresh member
            config, self._pending = self._pending, None
            self._build(config)
        trainer = self.trainer
        if self._round_start is None:
            self._round_start = time.time()
        record = trainer.train_epoch()
        boundary = trainer.epoch % self.interval == 0 or trainer.done
        if boundary and not record.validated:
            record = self._validate(record)
        out = epoch_report(record)
        out.update(member=self.member, round=(trainer.epoch - 1) // self.interval,
                   node=self._node, device=str(trainer.device), start_crc=self._start_crc,
                   final=trainer.done, done=trainer.done)
        if boundary:
            out.update(weights_crc=weights_crc(trainer.model), round_start=self._round_start,
                       round_end=time.time())
            self._round_start = None
            # A member held at the barrier goes on without a restore and starts its next
            # round from these weights; a restore sets its own.
            self._start_crc = out["weights_crc"]
        return out

    def _validate(self, record: Any) -> Any:
        """Validate at a round's end (settings.noval skips the others, as YOLOv5 evolve)."""
        from ..train.fitness import fitness

        metrics = self.trainer.validate().metrics
        fit = fitness(metrics)
        self.trainer.last_metrics, self.trainer.last_fitness = metrics, fit
        if fit > self.trainer.best_fitness:
            self.trainer.best_fitness, self.trainer.best_epoch = fit, record.epoch
        return dataclasses.replace(record, metrics=metrics, validated=True, fitness=fit,
                                   best_fitness=self.trainer.best_fitness)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint_dir: str) -> None:
        import torch

        from ..train.checkpoint import save_checkpoint

        folder = Path(checkpoint_dir)
        trainer = self.trainer
        torch.save({"train_state": trainer.state_dict(), "member": self.member,
                    "hyp": self.hyp.as_dict()}, folder / STATE_FILE)
        if trainer.done:  # the population's result: the deployable weights, our format
            save_checkpoint(folder / WEIGHTS_FILE, trainer.checkpoint_payload(False))
        meta = {"member": self.member, "epoch": trainer.epoch,
                "training_iteration": self.iteration, "fitness": trainer.last_fitness,
                "weights_crc": weights_crc(trainer.model), "node": self._node}
        (folder / CKPT_META).write_text(json.dumps(meta))

    def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
        import torch

        path = Path(checkpoint_dir) / STATE_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or corrupt (e.g. a disk that filled up): restart
            state, error = None, e
        if self._pending is not None:
            config, self._pending = self._pending, None
            if settings_of(config).seed != self.trainer.settings.seed:
                self._build(config)  # another member: its own data order and seed
            else:  # the same member, possibly with explored hyps: keep model and data
                self.member, self.hyp = int(config.get(MEMBER_KEY, 0)), hyp_of(config)
        if state is None:
            return self._restart_from_scratch(path, error)
        self.trainer.load_train_state(state["train_state"])
        # The optimizer state carries the saver's lr/momentum/decay: apply ours on top.
        self.trainer.set_hyp(self.hyp)
        self._start_crc = weights_crc(self.trainer.model)
        self._round_start = None

    def _restart_from_scratch(self, path: Path, error: Exception) -> None:
        """An unreadable state.pt: retrain this member from fresh weights up to the checkpoint's
        epoch (from its meta.json) with its current hyps, so the population stays in step."""
        try:
            epoch = int(json.loads((path.parent / CKPT_META).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            raise WeightsError(f"{path}: cannot load the PBT checkpoint ({type(error).__name__})"
                               f" and {CKPT_META} beside it is unreadable too") from None
        LOGGER.warning(f"{path}: corrupt checkpoint ({type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}); member "
                       f"{self.member} restarts from scratch and retrains {epoch} epoch(s)")
        self._build(self.config)
        for _ in range(epoch):
            self.trainer.train_epoch()

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Reuse this actor for `new_config` (PBT explore or another member); always True.

        Applied when Tune restores the member's checkpoint (own or a parent's) next: the
        new hyps go on top of the loaded optimizer state via `trainer.set_hyp`, since the
        optimizer state carries the saver's lr/momentum/decay. No restore means a member
        starting from scratch, so `step` builds it fresh.
        """
        self._pending = dict(new_config)
        # reset() has just replaced the storage context with the controller's count
        skip_used_checkpoint_dirs(getattr(self, "_storage", None))
        return True

    def cleanup(self) -> None:
        tb = getattr(getattr(self, "trainer", None), "tb", None)
        if tb is not None:
            tb.close()


def checkpoint_size(folder: str | os.PathLike[str]) -> int:
    """Bytes in a checkpoint folder (for the size report in docs/pbt.md)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
