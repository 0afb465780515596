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

from yolo_ray.cluster.actor_parking import PROBE_S, ActorParking
from yolo_ray.cluster.scheduler import MEMBER_KEY
from yolo_ray.config.load import load_hyp
from yolo_ray.evolve.space import load_search_space

from .member_trainables import epoch_member, fit_population, one_epoch_rounds, quality_member

MEMBERS, EPOCHS = 3, 4


class FakeController:
    """The TuneController parts ActorParking uses: the real cache and search class, and an
    actor manager (FakeManager, below)."""

    def __init__(self) -> None:
        self._actor_cache = _ObjectCache(may_keep_one=True)
        self._search_alg = BasicVariantGenerator()
        self._actor_manager = FakeManager()
        self._trial_to_actor: dict[Any, Any] = {}


class FakeTrial:
    placement_group_factory = "1cpu"
    status = "PAUSED"


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
    # A parked member stopped without the scheduler hearing of it (a stopper, Ctrl-C): the
    # run must still end.
    parking.park(ctl, trial)
    assert not search.is_finished()
    trial.status = "TERMINATED"
    ctl._trial_to_actor = {trial: "its actor"}  # being paused: TERMINATED for a moment
    assert not search.is_finished()
    ctl._trial_to_actor = {}
    assert search.is_finished()
    parking.release(trial)
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


@pytest.mark.parametrize("address,probe", [(None, 0.0), ("127.0.0.1:6379", PROBE_S)])
def test_workers_are_kept_and_pinged_on_clusters(tmp_path, address, probe):
    from yolo_ray.cluster.pbt_launch import build_scheduler
    from yolo_ray.cluster.request import EvolveRequest

    request = EvolveRequest(run_dir=tmp_path, data="d.yaml", hyp=load_hyp(None),
                            strategy="pbt", address=address)
    plan = SimpleNamespace(interval=1)
    sched = build_scheduler(request, plan, load_search_space().without("anchors"),
                            load_hyp(None), store=None)
    assert sched.keeps_workers and sched.probes_workers_s == probe


class FakeTracked:
    """A TrackedActor's callback setters."""

    def __init__(self, name: str) -> None:
        self.name, self.callbacks = name, "set"

    def set_on_stop(self, fn: Any) -> None:
        self.callbacks = fn

    def set_on_error(self, fn: Any) -> None:
        self.callbacks = fn


class FakeManager:
    """The RayActorManager parts eviction uses: handles of live actors and removal."""

    def __init__(self) -> None:
        self._live_actors_to_ray_actors_resources: dict[Any, tuple[str, None]] = {}
        self.num_total_actors: int | None = None  # Tune's workers, when a test sets it
        self.removed: list[tuple[str, bool]] = []

    def remove_actor(self, tracked: FakeTracked, kill: bool = False) -> bool:
        self.removed.append((tracked.name, kill))
        return True


def cache_actors(parking: ActorParking, ctl: FakeController, trial: FakeTrial, names: str,
                 without_handle: str = "") -> dict[str, FakeTracked]:
    """`trial` parked and an actor cached per name; a Ray handle 'handle-NAME' for each name
    not in `without_handle` (Tune no longer knows that actor's Ray actor)."""
    actors = {n: FakeTracked(n) for n in names}
    for name, tracked in actors.items():
        parking.park(ctl, trial)
        ctl._actor_cache.increase_max("1cpu")
        if name not in without_handle:
            ctl._actor_manager._live_actors_to_ray_actors_resources[tracked] = (
                f"handle-{name}", None)
        assert ctl._actor_cache.cache_object("1cpu", tracked)
    return actors


class GpuRequest:
    """A placement group factory's part that can_start reads."""
    required_resources = {"CPU": 1.0, "GPU": 1.0}


def test_a_member_is_staged_only_with_a_free_kept_worker_or_an_idle_slot():
    # Otherwise Tune asks Ray for a new worker and cancels it when a kept one frees up, but
    # Ray may have started and set up a process meanwhile (bench/scale.py, members > slots).
    free = {"CPU": 3.0, "GPU": 0.0}
    parking = ActorParking(free=lambda: dict(free))
    ctl, trial, key = FakeController(), FakeTrial(), GpuRequest()
    trial.placement_group_factory = key
    assert parking.can_start(trial)            # not attached yet: Tune decides as before
    parking.park(ctl, FakeTrial())             # attaches (another member waits at the barrier)
    assert not parking.can_start(trial)        # every GPU busy, no kept worker free
    free["GPU"] = 1.0
    assert parking.can_start(trial)            # an idle slot
    free["GPU"] = 0.0
    ctl._actor_cache.increase_max(key)
    assert ctl._actor_cache.cache_object(key, FakeTracked("a"))
    assert parking.can_start(trial)            # a kept worker is free
    ctl._actor_cache.pop_cached_object(key)
    ctl._trial_to_actor[trial] = "its worker"
    assert parking.can_start(trial)            # staged already: Tune only tries the cache


def test_no_gcs_call_while_tunes_workers_fill_the_cluster():
    # With more members than slots a member waits at almost every Tune step; asking the GCS
    # each time cost 1.5 ms a step. Tune's own worker count settles it while every slot
    # holds one of its workers (the cluster's size is re-read every NODE_CHECK_S).
    free_calls, total_calls, now = [], [], [0.0]
    total = {"CPU": 8.0, "GPU": 2.0}

    def free() -> dict[str, float]:
        free_calls.append(now[0])
        return {"CPU": 6.0, "GPU": 1.0}

    def totals() -> dict[str, float]:
        total_calls.append(now[0])
        return dict(total)

    parking = ActorParking(free=free, totals=totals, clock=lambda: now[0])
    ctl, trial = FakeController(), FakeTrial()
    trial.placement_group_factory = GpuRequest()
    parking.park(ctl, FakeTrial())  # attaches
    ctl._actor_manager.num_total_actors = 2     # both GPUs held by Tune's workers
    assert not parking.can_start(trial) and not parking.can_start(trial)
    assert free_calls == [] and total_calls == [0.0]
    ctl._actor_manager.num_total_actors = 1     # one ended: ask the GCS (another job?)
    assert parking.can_start(trial) and free_calls == [0.0]
    total["GPU"] = 3.0                          # a node joined: seen after NODE_CHECK_S
    ctl._actor_manager.num_total_actors = 2
    assert not parking.can_start(trial) and len(free_calls) == 1
    now[0] = 2.5
    assert parking.can_start(trial) and total_calls == [0.0, 2.5] and len(free_calls) == 2


def test_cached_actors_of_a_dead_node_are_evicted_once_it_is_reported_dead():
    ctl, trial = FakeController(), FakeTrial()
    node = {"handle-a": "node-A", "handle-b": "node-B", "handle-c": "node-B"}
    dead: set[str] = set()
    lookups: list[str] = []
    now = [0.0]

    def actor_node(handle: str) -> str:
        lookups.append(handle)
        return node[handle]

    parking = ActorParking(dead_nodes=lambda: set(dead), actor_node=actor_node,
                           clock=lambda: now[0])
    actors = cache_actors(parking, ctl, trial, "abc")
    assert parking.evict_lost() == 0 and lookups == []  # no dead node: no actor lookups
    dead.add("node-B")
    now[0] = 1.0
    assert parking.evict_lost() == 0  # checked at most every NODE_CHECK_S
    now[0] = 2.5
    assert parking.evict_lost() == 2
    assert ctl._actor_manager.removed == [("b", True), ("c", True)]  # killed, no stop task
    assert actors["b"].callbacks is None and actors["a"].callbacks == "set"
    assert ctl._actor_cache.num_cached_objects == 1
    assert ctl._actor_cache.pop_cached_object("1cpu") is actors["a"]
    assert sorted(lookups) == ["handle-a", "handle-b", "handle-c"]
    ctl._actor_cache.cache_object("1cpu", actors["a"])
    now[0] = 5.0
    assert parking.evict_lost() == 0 and len(lookups) == 3  # node of 'a' remembered
    assert parking.evicted == 2


def test_kept_workers_that_do_not_answer_a_ping_are_evicted(caplog):
    ctl, trial = FakeController(), FakeTrial()
    pings: list[tuple[list[str], float]] = []

    def ping(handles: dict[Any, str], timeout_s: float) -> list[Any]:
        pings.append((sorted(handles.values()), timeout_s))
        return [t for t, h in handles.items() if h == "handle-b"]

    parking = ActorParking(ping=ping, probe_s=1.5, dead_nodes=set)
    cache_actors(parking, ctl, trial, "abc", without_handle="c")  # c: gone as well
    assert parking.evict_silent() == 2
    assert pings == [(["handle-a", "handle-b"], 1.5)]  # one ping each, all at once
    assert sorted(ctl._actor_manager.removed) == [("b", True), ("c", True)]
    assert ctl._actor_cache.num_cached_objects == 1 and parking.evicted == 2
    assert "2 kept worker(s) did not answer within 1.5 s" in caplog.text
    off = ActorParking(ping=lambda *a: pytest.fail("pinged with probe_s=0"), probe_s=0.0)
    ctl = FakeController()
    cache_actors(off, ctl, trial, "a")
    assert off.evict_silent() == 0 and ctl._actor_cache.num_cached_objects == 1


# ----------------------------------------------------------------------------- real Ray
@pytest.mark.ray
def test_pings_name_the_dead_and_the_silent_actors_only():
    import ray

    from yolo_ray.cluster.actor_parking import unanswered_pings

    @ray.remote(num_cpus=0)
    class Idle:
        def hold(self, seconds: float) -> None:
            time.sleep(seconds)

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        live, dead, busy = Idle.remote(), Idle.remote(), Idle.remote()
        ray.get([a.__ray_ready__.remote() for a in (live, dead, busy)])
        ray.kill(dead)  # asynchronous: wait until a call on it fails
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                ray.get(dead.hold.remote(0.0))
            except ray.exceptions.RayActorError:
                break
        busy.hold.remote(10.0)  # one task at a time: the ping waits behind it
        assert sorted(unanswered_pings({"live": live, "dead": dead, "busy": busy}, 2.0)) == \
            ["busy", "dead"]
        assert unanswered_pings({}, 2.0) == []
    finally:
        ray.shutdown()



def member_trainable(steps: Path) -> Any:
    """Members that accumulate a 'quality' at their lr, one 0.5 s + 0.3 s·member epoch each."""
    def train_epoch(self: Any) -> dict:
        start = time.time()
        time.sleep(0.5 + 0.3 * self.member)  # the others wait, paused, for the slowest
        self.epoch += 1
        (steps / f"{self.member}-{self.epoch}").write_text(
            f"{start} {time.time()} {os.getpid()}")
        self.quality += self.lr
        return {"epoch": self.epoch, "fitness": self.quality, "done": self.epoch >= EPOCHS}

    return quality_member(train_epoch, wait_for=(steps, MEMBERS))


def run_population(tmp_path: Path, keep_workers: bool = True
                   ) -> dict[tuple[int, int], tuple[float, float, int]]:
    """MEMBERS members, one epoch per round, one slot each: (member, epoch) -> its step's
    (start, end, worker pid)."""
    steps = tmp_path / "steps"
    steps.mkdir()
    grid = fit_population(member_trainable(steps), MEMBERS,
                          one_epoch_rounds(keep_workers=keep_workers, hold_at_barrier=keep_workers),
                          tmp_path / "ray")
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


# ----------------------------------------------------------------------------- node loss
def node_member_trainable(steps: Path) -> Any:
    """Two members; member 1's first epoch is long, so member 0 waits at the barrier with
    its worker kept (cached) while the test removes that worker's node. Both workers are up
    before anyone trains (else member 1 may take member 0's cached worker instead of its own
    slow-starting one, and die with it)."""
    def train_epoch(self: Any) -> dict:
        import ray

        time.sleep(12.0 if (self.member, self.epoch) == (1, 0) else 0.3)
        self.epoch += 1
        node = ray.get_runtime_context().get_node_id()
        (steps / f"{self.member}-{self.epoch}").write_text(f"{node} {os.getpid()}")
        return {"epoch": self.epoch, "fitness": self.epoch + 0.1 * self.member,
                "done": self.epoch >= 2}

    return epoch_member(train_epoch, wait_for=(steps, 2))


@pytest.mark.ray
@pytest.mark.parametrize("guard", ["evict", "ping", "none"])
def test_a_kept_worker_lost_with_its_node_is_not_handed_to_a_member(tmp_path, monkeypatch,
                                                                    caplog, guard):
    """evict: Ray declares the node dead fast (0.9 s) and eviction sees it; ping: Ray's
    default health check, slower than the round barrier here, so only the after-round ping
    can tell; none: the check that this test can fail (Tune hands out the dead worker)."""
    import threading

    import ray
    from ray import tune
    from ray.cluster_utils import Cluster

    if guard != "evict":
        monkeypatch.setattr(ActorParking, "evict_lost", lambda self: 0)
    steps = tmp_path / "steps"
    steps.mkdir()
    # Fast node-failure detection, so the loss is known well before member 1 reports.
    fast = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300,
            "health_check_timeout_ms": 300, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {} if guard == "ping" else fast})
    try:
        nodes = {cluster.add_node(num_cpus=1).node_id: None for _ in range(2)}
        nodes = {n.node_id: n for n in cluster.list_all_nodes() if n.node_id in nodes}
        cluster.wait_for_nodes()
        lost: list[str] = []

        def lose_member0_node() -> None:  # once member 0 has finished round 0 and waits
            deadline = time.time() + 120
            while not (steps / "0-1").exists() and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # its result reached the driver; the worker is cached
            node_id = (steps / "0-1").read_text().split()[0]
            cluster.remove_node(nodes[node_id], allow_graceful=False)
            lost.append(node_id)

        killer = threading.Thread(target=lose_member0_node, daemon=True)
        killer.start()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        scheduler = one_epoch_rounds(probe_workers_s=PROBE_S if guard == "ping" else 0.0)
        grid = tune.Tuner(
            tune.with_resources(node_member_trainable(steps), {"cpu": 1}),
            param_space={MEMBER_KEY: tune.grid_search([0, 1])},
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=2)),
        ).fit()
        killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    errors = list((tmp_path / "ray").rglob("error.txt"))
    if guard == "none":  # member 0 got its dead worker: reset and restore both fail
        assert [e.parent.name.split("_")[2] for e in errors] == ["00000"], errors
        assert "its node has died" in errors[0].read_text()
        return
    assert errors == [], [e.read_text()[-500:] for e in errors]
    assert all(grid[i].error is None and grid[i].metrics["epoch"] == 2 for i in range(2))
    survivor = next(n for n in nodes if n not in lost)
    assert (steps / "0-2").read_text().split()[0] == survivor  # round 1 on a new worker
    if guard == "ping":  # the ping found it, not Ray's health check
        assert "1 kept worker(s) did not answer within" in caplog.text
