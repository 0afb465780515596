"""ActorParking: PBT members keep their worker process across round barriers (real Ray)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.utils.object_cache import _ObjectCache

from yolo_ray.cluster.actor_parking import ActorParking
from yolo_ray.cluster.scheduler import MEMBER_KEY, GAPopulationBasedTraining
from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.space import load_search_space

MEMBERS, EPOCHS = 3, 4


class FakeController:
    """The two TuneController parts ActorParking uses: the real cache and search class."""

    def __init__(self) -> None:
        self._actor_cache = _ObjectCache(may_keep_one=True)
        self._search_alg = BasicVariantGenerator()


class FakeTrial:
    placement_group_factory = "1cpu"


def test_park_reserves_and_release_returns_cache_places():
    ctl, a, b = FakeController(), FakeTrial(), FakeTrial()
    parking = ActorParking()
    parking.park(ctl, a)
    parking.park(ctl, a)  # a second report of the same barrier: one place
    parking.park(ctl, b)
    assert ctl._actor_cache.total_max_objects == 2 and parking.parked == 2
    assert ctl._actor_cache.cache_object("1cpu", "actor-a")
    assert ctl._actor_cache.cache_object("1cpu", "actor-b")
    assert not ctl._actor_cache.cache_object("1cpu", "actor-c")  # no place reserved for it
    parking.release(a)
    parking.release(a)
    assert ctl._actor_cache.total_max_objects == 1 and parking.parked == 1
    assert list(ctl._actor_cache.flush_cached_objects()) == ["actor-a"]  # one too many now
    parking.release(b)
    assert ctl._actor_cache.total_max_objects == 0


def test_search_is_unfinished_only_while_members_are_parked(tmp_path):
    ctl, trial = FakeController(), FakeTrial()
    search = ctl._search_alg
    search.set_finished()
    parking = ActorParking()
    parking.park(ctl, trial)
    assert isinstance(search, BasicVariantGenerator) and not search.is_finished()
    parking.release(trial)
    assert search.is_finished()
    # Tune snapshots the search algorithm's __dict__: the swap must leave nothing in it.
    assert set(search.get_state()) == set(BasicVariantGenerator().get_state())
    search.save_to_dir(str(tmp_path), "s")
    assert list(tmp_path.iterdir())
    # A pickled scheduler does not carry the live controller along.
    assert pickle.loads(pickle.dumps(parking))._controller is None


def test_a_controller_without_an_actor_cache_is_left_alone(caplog):
    parking = ActorParking()
    parking.park(object(), FakeTrial())
    parking.park(object(), FakeTrial())
    assert parking.parked == 0
    assert sum("no actor cache" in r.message for r in caplog.records) == 1


def test_switched_off_parking_reserves_nothing(caplog):
    ctl, trial = FakeController(), FakeTrial()
    parking = ActorParking(enabled=False)
    parking.park(ctl, trial)
    assert (parking.parked, ctl._actor_cache.total_max_objects, parking.enabled) == (0, 0, False)
    assert not pickle.loads(pickle.dumps(parking)).enabled
    assert not caplog.records


@pytest.mark.parametrize("address,keeps", [(None, True), ("127.0.0.1:6379", False)])
def test_workers_are_kept_on_the_embedded_ray_only(tmp_path, address, keeps):
    from yolo_ray.cluster.pbt_launch import build_scheduler
    from yolo_ray.cluster.request import EvolveRequest

    request = EvolveRequest(run_dir=tmp_path, data="d.yaml", hyp=load_hyp(None),
                            strategy="pbt", address=address)
    plan = SimpleNamespace(interval=1)
    sched = build_scheduler(request, plan, load_search_space().without("anchors"),
                            load_hyp(None), store=None)
    assert sched.keeps_workers is keeps


# ----------------------------------------------------------------------------- real Ray
def member_trainable(steps: Path) -> Any:
    from ray import tune

    class Member(tune.Trainable):
        def setup(self, config: dict) -> None:
            # All first workers up before anyone trains: on a loaded box a slow start would
            # otherwise let Tune hand the first paused worker to the next member and drop the
            # one still starting, from round 0 on. What is tested is what barriers do.
            (steps / f"worker-{os.getpid()}").touch()
            deadline = time.time() + 120
            while len(list(steps.glob("worker-*"))) < MEMBERS and time.time() < deadline:
                time.sleep(0.05)
            self.reset_config(config)

        def step(self) -> dict:
            start = time.time()
            time.sleep(0.5 + 0.3 * self.member)  # the others wait, paused, for the slowest
            self.epoch += 1
            (steps / f"{self.member}-{self.epoch}").write_text(
                f"{start} {time.time()} {os.getpid()}")
            self.quality += self.lr
            return {"epoch": self.epoch, "fitness": self.quality, "done": self.epoch >= EPOCHS}

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            Path(checkpoint_dir, "s").write_text(f"{self.epoch} {self.quality}")

        def load_checkpoint(self, checkpoint_dir: str) -> None:  # type: ignore[override]
            epoch, quality = Path(checkpoint_dir, "s").read_text().split()
            self.epoch, self.quality = int(epoch), float(quality)

        def reset_config(self, new_config: dict) -> bool:
            # Another member's state must not leak in: the restore that follows sets it.
            self.epoch, self.quality = 0, 0.0
            self.lr, self.member = float(new_config["lr0"]), int(new_config[MEMBER_KEY])
            return True

    return Member


def run_population(tmp_path: Path, keep_workers: bool = True
                   ) -> dict[tuple[int, int], tuple[float, float, int]]:
    """MEMBERS members, one epoch per round, one slot each: (member, epoch) -> its step's
    (start, end, worker pid)."""
    import ray
    from ray import tune

    steps = tmp_path / "steps"
    steps.mkdir()
    scheduler = GAPopulationBasedTraining(load_search_space().without("anchors"),
                                          load_hyp(None), 1, seed=0, log_config=False,
                                          keep_workers=keep_workers)
    ray.init(address="local", num_cpus=MEMBERS, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(
            tune.with_resources(member_trainable(steps), {"cpu": 1}),
            param_space={MEMBER_KEY: tune.grid_search(list(range(MEMBERS)))},
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert [grid[i].metrics["epoch"] for i in range(len(grid))] == [EPOCHS] * MEMBERS
    assert all(grid[i].error is None for i in range(len(grid)))
    out = {}
    for path in steps.glob("*-*"):
        if path.name.startswith("worker-"):
            continue
        member, epoch = map(int, path.name.split("-"))
        start, end, pid = path.read_text().split()
        out[member, epoch] = (float(start), float(end), int(pid))
    return out


def rounds_run_together(steps: dict[tuple[int, int], tuple[float, float, int]]) -> list[bool]:
    """Per round after the first barrier: did all members train it at the same time?"""
    together = []
    for epoch in range(2, EPOCHS + 1):
        spans = [steps[m, epoch][:2] for m in range(MEMBERS)]
        together.append(max(s for s, _ in spans) < min(e for _, e in spans))
    return together


@pytest.mark.ray
def test_members_keep_their_workers_across_rounds(tmp_path):
    steps = run_population(tmp_path)
    assert rounds_run_together(steps) == [True] * (EPOCHS - 1), steps
    assert len({pid for _, _, pid in steps.values()}) == MEMBERS  # no new worker after round 0


@pytest.mark.ray
def test_without_parking_ray_restarts_members_at_barriers(tmp_path):
    # What the parking avoids (and the check that the test above can fail): Tune keeps one
    # paused member's worker, the others are killed, and the members after a barrier queue
    # for that one worker while new ones start.
    steps = run_population(tmp_path, keep_workers=False)
    assert not all(rounds_run_together(steps))
