"""Keep a PBT member's worker alive while it waits at a synchronous round barrier.

Ray's synchronous PBT pauses every member that reaches a round boundary until the last one
does. Tune (2.60) then keeps a paused trial's actor only if another trial is already waiting
for one; at a barrier none is, so each member's worker process is killed and a new one is
started (process start, imports, data loading) when the next round begins. With many
members that churn dominated the round (docs/benchmarks.md, Scale: 97 % idle slot time).

`ActorParking` reserves a place in Tune's actor cache for each member paused at a barrier,
so its actor is cached instead of killed, and releases it when the member runs again (the
cached actor is then reused: reset_config + restore, no new process) or ends. It reaches
into private parts of the TuneController (`_actor_cache`, `_search_alg`), so it checks
they look as expected and otherwise does nothing (the old behaviour); a test asserts the
worker processes are kept, which fails if a Ray upgrade changes this.

Tune does not notice that an idle cached actor died with its node: it would hand it to a
member, whose reset then fails. Two guards run before the controller picks actors for
members: `evict_lost` removes cached actors whose node Ray reports dead (checked at most every
NODE_CHECK_S, one GCS call; the actors' nodes are looked up only once a node has died), and,
on clusters, `evict_silent` pings every cached actor after each round and after a member's
error, and removes those that do not answer within PROBE_S: Ray's health check can take
longer than a round barrier to declare a lost node dead.

A worker can still die during a reset (its node lost just then). Ray reports that death
twice, and Tune (2.60) ended the member for good on the second report, whatever
--max-failures says; the scheduler has the controller handle it once
(`tune_failures.count_each_failure_once`), so the member is retried like any other.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable

from .controller_swap import unwrap_controller

LOGGER = logging.getLogger("yolo_ray")
# search algorithm -> the parking that holds members for it (see _park_aware)
_PARKINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PARK_AWARE: dict[type, type] = {}
PROBE_S = 2.0  # how long a kept worker may take to answer a ping before it is replaced
NODE_CHECK_S = 2.0  # node liveness checks while actors are cached (a GCS round trip each)
# TuneController parts used: the actor cache (reserve, evict), search algorithm (finished?),
# the actor manager (actor handles, removal)
_CACHE_PARTS = ("increase_max", "decrease_max", "_cached_objects", "_num_cached_objects")
_MANAGER_PARTS = ("remove_actor", "_live_actors_to_ray_actors_resources")


def unanswered_pings(handles: dict[Any, Any], timeout_s: float) -> list[Any]:
    """Keys of `handles` (Ray actor handles) whose actor did not answer a no-op task within
    `timeout_s` (all pinged at once), or answered with an error (dead)."""
    import ray

    if not handles:  # ray.wait refuses an empty list
        return []
    refs = {handle.__ray_ready__.remote(): key for key, handle in handles.items()}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    silent = [refs[r] for r in late]
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:  # RayActorError and kin: the actor is gone
            silent.append(refs[ref])
    return silent


def _available_resources() -> dict[str, float]:
    """Resources no actor holds now, cluster-wide (one GCS call)."""
    import ray

    return ray.available_resources()


def _cluster_resources() -> dict[str, float]:
    """The cluster's resources, held or not (one GCS call)."""
    import ray

    return ray.cluster_resources()


def dead_ray_nodes() -> set[str]:
    """Node ids (hex) that the connected Ray's GCS reports dead."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive", True)}


def ray_actor_node(handle: Any) -> str | None:
    """Node id (hex) the actor behind `handle` was placed on, from the GCS actor table."""
    from ray._private import state

    info = state.actors(actor_id=handle._actor_id.hex())
    return (info.get("Address") or {}).get("NodeID") if info else None


class ActorParking:
    """Reservations in Tune's actor cache for members paused at a sync barrier."""

    def __init__(self, enabled: bool = True,
                 dead_nodes: Callable[[], set[str]] = dead_ray_nodes,
                 free: Callable[[], dict[str, float]] | None = None,
                 actor_node: Callable[[Any], str | None] = ray_actor_node,
                 clock: Callable[[], float] = time.monotonic,
                 ping: Callable[[dict[Any, Any], float], list[Any]] | None = None,
                 probe_s: float = PROBE_S,
                 totals: Callable[[], dict[str, float]] | None = None) -> None:
        self._parked: dict[Any, Any] = {}   # trial -> its resource request (cache key)
        self._controller: Any = None
        self._disabled = not enabled
        self._dead_nodes, self._actor_node, self._clock = dead_nodes, actor_node, clock
        self._ping, self._probe_s = ping or unanswered_pings, probe_s
        self._free = free or _available_resources
        self._totals = totals or _cluster_resources
        self._total: dict[str, float] = {}
        self._next_total = float("-inf")
        self._next_check = float("-inf")
        self._node_of: dict[Any, str | None] = {}  # cached tracked actor -> its node
        self.evicted = 0  # cached actors removed because their node died

    @property
    def enabled(self) -> bool:
        """False when switched off or when this Tune lacks the parts it needs."""
        return not self._disabled

    @property
    def probe_s(self) -> float:
        """Seconds a kept worker may take to answer the ping after a round (0: no ping)."""
        return self._probe_s

    @property
    def parked(self) -> int:
        """How many members hold a reservation now."""
        return len(self._parked)

    @property
    def waiting(self) -> bool:
        """Whether a parked member may still run: not one ended meanwhile without the
        scheduler hearing of it (a Tune stopper or time budget stops paused trials)."""
        # A member being paused shows TERMINATED for a moment while Tune decides whether to
        # cache its actor; it still has that actor then, an ended member does not.
        with_actor = getattr(self._controller, "_trial_to_actor", {})
        return any(getattr(t, "status", None) not in ("TERMINATED", "ERROR") or t in with_actor
                   for t in self._parked)

    def park(self, tune_controller: Any, trial: Any) -> None:
        """Reserve a cache place so `trial`'s actor survives its coming pause."""
        if trial in self._parked or not self._attach(tune_controller):
            return
        key = trial.placement_group_factory
        self._controller._actor_cache.increase_max(key)
        self._parked[trial] = key

    def is_parked(self, trial: Any) -> bool:
        """Whether `trial` holds a reservation (its worker waits in, or for, the cache)."""
        return trial in self._parked

    def release(self, trial: Any) -> None:
        """`trial` runs again (its cached actor is popped) or ends: drop its reservation."""
        key = self._parked.pop(trial, None)
        if key is not None:
            self._controller._actor_cache.decrease_max(key)

    def cached_workers(self) -> int:
        """Idle workers in Tune's actor cache now (0 before the first park)."""
        ctl = self._controller
        return int(ctl._actor_cache._num_cached_objects) if ctl is not None else 0

    def can_start(self, trial: Any) -> bool:
        """Whether Tune should stage `trial` now: it has a worker already, a kept one is free,
        or a slot is idle. Otherwise Tune asks Ray for a new worker, which it cancels when a
        kept one frees up (usually within a second), but not before Ray may have started
        and set up a process for it (with more members than slots, 28 % of member-rounds)."""
        ctl = self._controller
        if ctl is None:
            return True
        key = trial.placement_group_factory
        if trial in ctl._trial_to_actor or ctl._actor_cache.has_cached_object(key):
            return True
        return self._slot_idle(getattr(key, "required_resources", {}))

    def evict_lost(self) -> int:
        """Remove cached actors whose node died; how many went (call before actors are
        handed out: Tune would give one to a member, whose first task then fails)."""
        ctl = self._controller
        if ctl is None or not ctl._actor_cache._num_cached_objects:
            return 0
        now = self._clock()
        if now < self._next_check:
            return 0
        self._next_check = now + NODE_CHECK_S
        dead = self._dead_nodes()
        if not dead:
            return 0
        handles = ctl._actor_manager._live_actors_to_ray_actors_resources
        cached = set(self._cached_actors())
        self._node_of = {t: n for t, n in self._node_of.items() if t in cached}
        for tracked in cached - set(self._node_of):
            handle = handles.get(tracked, (None,))[0]
            self._node_of[tracked] = None if handle is None else self._actor_node(handle)
        gone = self._evict({t for t in cached if self._node_of[t] in dead})
        if gone:
            LOGGER.warning(f"PBT: {gone} kept worker(s) lost with their node; the members "
                           "waiting for them get new ones")
        return gone

    def _slot_idle(self, need: dict[str, float]) -> bool:
        if self._workers_fill_cluster(need):
            return False
        free = self._free()
        return all(free.get(k, 0.0) >= v for k, v in need.items() if v > 0)

    def _workers_fill_cluster(self, need: dict[str, float]) -> bool:
        """Whether Tune's workers (started, starting or kept; each holds `need`) leave no room
        for one more, so no GCS call is needed to know a slot is not idle. With more members
        than slots that is every Tune step a member waits: available_resources took 1.5 ms
        per call, 1.3 s of a 70 s run's driver time. The cluster's size is re-read every
        NODE_CHECK_S (a node that joins is used that much later, one that leaves at once)."""
        workers = getattr(getattr(self._controller, "_actor_manager", None),
                          "num_total_actors", None)
        if not isinstance(workers, int):
            return False
        now = self._clock()
        if now >= self._next_total:
            self._total, self._next_total = self._totals(), now + NODE_CHECK_S
        return any((workers + 1) * v > self._total.get(k, 0.0) + 1e-9
                   for k, v in need.items() if v > 0)

    def evict_silent(self) -> int:
        """Ping every cached actor at once and remove those that do not answer within
        `probe_s`; how many went. Ray declares a lost node dead only after its health
        check (seconds to tens of seconds), later than a round barrier can come: an actor
        that cannot answer a no-op now is not handed to a member (at worst a slow but live
        worker is replaced, which is what Ray would have done without keeping)."""
        ctl = self._controller
        if ctl is None or not ctl._actor_cache._num_cached_objects or self._probe_s <= 0:
            return 0
        handles = ctl._actor_manager._live_actors_to_ray_actors_resources
        cached = self._cached_actors()
        refs = {t: handles[t][0] for t in cached if t in handles}
        silent = set(cached) - set(refs) | set(self._ping(refs, self._probe_s))
        gone = self._evict(silent)
        if gone:
            LOGGER.warning(f"PBT: {gone} kept worker(s) did not answer within "
                           f"{self._probe_s:g} s; the members waiting for them get new ones")
        return gone

    def _cached_actors(self) -> list[Any]:
        """Tune's tracked actors idle in its cache now."""
        return [t for objs in self._controller._actor_cache._cached_objects.values()
                for t in objs]

    def _evict(self, doomed: set[Any]) -> int:
        ctl, gone = self._controller, 0
        for objs in ctl._actor_cache._cached_objects.values():
            for tracked in [t for t in objs if t in doomed]:
                objs.remove(tracked)
                ctl._actor_cache._num_cached_objects -= 1
                tracked.set_on_stop(None)
                tracked.set_on_error(None)
                # kill: no stop task is sent to an actor that is gone with its node
                ctl._actor_manager.remove_actor(tracked, kill=True)
                self._node_of.pop(tracked, None)
                gone += 1
        self.evicted += gone
        return gone

    def _attach(self, tune_controller: Any) -> bool:
        if self._controller is not None:
            return True
        if self._disabled:
            return False
        controller = unwrap_controller(tune_controller)
        cache = getattr(controller, "_actor_cache", None)
        search = getattr(controller, "_search_alg", None)
        manager = getattr(controller, "_actor_manager", None)
        if not all(hasattr(cache, m) for m in _CACHE_PARTS) or \
                not all(hasattr(manager, m) for m in _MANAGER_PARTS) or \
                not callable(getattr(search, "is_finished", None)):
            self._disabled = True
            LOGGER.warning("PBT: this Ray Tune has no actor cache as expected; members' "
                           "workers are restarted at every round barrier")
            return False
        self._controller = controller
        _PARKINGS[search] = self
        search.__class__ = _park_aware(type(search))
        return True

    def __getstate__(self) -> dict[str, Any]:
        # A pickled scheduler (Tuner state) must not drag the live controller along.
        return {**self.__dict__, "_parked": {}, "_controller": None, "_node_of": {},
                "_next_check": float("-inf")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(not state.get("_disabled", False))  # fields an older pickle lacks
        self.__dict__.update(state)


def _park_aware(cls: type) -> type:
    """`cls` whose is_finished() is False while parked members may still run.

    Tune does not cache an actor once its search algorithm has produced every trial, which a
    fixed population has from round 1 on. The search algorithm's class is swapped, not its
    instance dict, because Tune snapshots that dict (BasicVariantGenerator.get_state)."""
    if cls in _PARK_AWARE.values():
        return cls
    if cls not in _PARK_AWARE:
        def is_finished(self: Any) -> bool:
            parking = _PARKINGS.get(self)
            return cls.is_finished(self) and not (parking is not None and parking.waiting)
        _PARK_AWARE[cls] = type(f"ParkAware{cls.__name__}", (cls,), {"is_finished": is_finished})
    return _PARK_AWARE[cls]
