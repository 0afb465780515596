"""Stand-in PBT members for the real-Ray tests: a Tune trainable that counts epochs, the
scheduler they run under, and one run of a population on a fresh local Ray.

Each test gives the trainable what differs (what one epoch does, and optionally a start
barrier); the checkpoint (the epoch), `reset_config` and the member id are the same everywhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from yolo_ray.cluster.scheduler import MEMBER_KEY, GAPopulationBasedTraining
from yolo_ray.cluster.tune_logs import trial_loggers
from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.space import load_search_space


def epoch_member(train_epoch: Callable[[Any], dict], *,
                 wait_for: tuple[Path, int] | None = None) -> Any:
    """A Trainable class whose `step` is `train_epoch(self)`; `self.epoch` and `self.member`
    hold the epochs done and the member index. With `wait_for=(folder, n)` every worker
    touches a file in `folder` and waits (up to 120 s) until `n` workers have, before any
    trains: on a loaded box a slow start would otherwise let Tune hand a paused member's
    worker to another member from round 0 on."""
    from ray import tune

    class Member(tune.Trainable):
        def setup(self, config: dict) -> None:
            if wait_for is not None:
                folder, n = wait_for
                (folder / f"worker-{os.getpid()}").touch()
                deadline = time.time() + 120
                while len(list(folder.glob("worker-*"))) < n and time.time() < deadline:
                    time.sleep(0.05)
            self.reset_config(config)

        def step(self) -> dict:
            return train_epoch(self)

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            Path(checkpoint_dir, "s").write_text(str(self.epoch))

        def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
            self.epoch = int(Path(checkpoint_dir, "s").read_text())

        def reset_config(self, new_config: dict) -> bool:
            # Another member's state must not leak in: the restore that follows sets it.
            self.epoch, self.member = 0, int(new_config[MEMBER_KEY])
            return True

    return Member


def quality_member(train_epoch: Callable[[Any], dict], *,
                   wait_for: tuple[Path, int] | None = None) -> Any:
    """`epoch_member` whose state is the epoch and a `self.quality` that `train_epoch`
    accumulates at the member's `self.lr` (its lr0); checkpoints hold both, and
    `self.restores` counts the checkpoints this worker process loaded."""
    class Member(epoch_member(train_epoch, wait_for=wait_for)):
        def save_checkpoint(self, checkpoint_dir: str) -> None:
            Path(checkpoint_dir, "s").write_text(f"{self.epoch} {self.quality}")

        def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
            epoch, quality = Path(checkpoint_dir, "s").read_text().split()
            self.epoch, self.quality = int(epoch), float(quality)
            self.restores += 1

        def reset_config(self, new_config: dict) -> bool:
            super().reset_config(new_config)
            self.quality, self.lr = 0.0, float(new_config["lr0"])
            self.restores = getattr(self, "restores", 0)  # per process, across members
            return True

    return Member


def one_epoch_rounds(**kw: Any) -> GAPopulationBasedTraining:
    """The GA PBT scheduler with the default hyps and space, one epoch per round, seed 0."""
    return GAPopulationBasedTraining(load_search_space().without("anchors"), load_hyp(None), 1,
                                     seed=0, log_config=False, **kw)


def fit_population(trainable: Any, members: int, scheduler: Any, storage: Path, *,
                   max_failures: int = 0, time_budget_s: float | None = None,
                   slots: int | None = None, on_end: Callable[[], None] | None = None) -> Any:
    """`members` members (one CPU each, actors reused) on a fresh local Ray with `slots` CPUs
    (default: one per member); Tune's results. `on_end` runs before Ray shuts down."""
    import ray
    from ray import tune

    ray.init(address="local", num_cpus=slots or members, include_dashboard=False,
             log_to_driver=False)
    try:
        return tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={MEMBER_KEY: tune.grid_search(list(range(members)))},
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True,
                                        time_budget_s=time_budget_s),
            run_config=tune.RunConfig(storage_path=str(storage), verbose=0,
                                      callbacks=trial_loggers(),  # as our runs log
                                      failure_config=tune.FailureConfig(
                                          max_failures=max_failures)),
        ).fit()
    finally:
        if on_end is not None:
            on_end()
        ray.shutdown()
