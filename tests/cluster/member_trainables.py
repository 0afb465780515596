"""A stand-in PBT member for the real-Ray tests: a Tune trainable that counts epochs.

Each test gives it what differs (what one epoch does, and optionally a start barrier); the
checkpoint (the epoch), `reset_config` and the member id are the same everywhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from yolo_ray.cluster.scheduler import MEMBER_KEY


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
