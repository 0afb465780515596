"""Keep a PBT member's worker alive while it waits at a synchronous round barrier.

Ray's synchronous PBT pauses every member that reaches a round boundary until the last one
does. Tune (2.60) then keeps a paused trial's actor only if another trial is already waiting
for one; at a barrier none is, so each member's worker process is killed and a new one is
started (process start, imports, data loading) when the next round begins. With many
members that churn dominated the round (docs/benchmarks.md, Scale: 97 % idle slot time).

`ActorParking` reserves a place in Tune's actor cache for each member paused at a barrier,
so its actor is cached instead of killed, and releases it when the member runs again (the
cached actor is then reused: reset_config + restore, no new process) or ends. It reaches
into two private parts of the TuneController (`_actor_cache`, `_search_alg`), so it checks
they look as expected and otherwise does nothing (the old behaviour); a test asserts the
worker processes are kept, which fails if a Ray upgrade changes this.

Only for a one-machine Ray (the embedded default): Tune does not notice that an idle cached
actor died with its node, so after a node loss a parked actor would be handed to a member and
fail it (one retry spent). On a cluster the scheduler leaves parking off until parked actors
on lost nodes are evicted.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

LOGGER = logging.getLogger("yolo_ray")
# search algorithm -> the parking that holds members for it (see _park_aware)
_PARKINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PARK_AWARE: dict[type, type] = {}


class ActorParking:
    """Reservations in Tune's actor cache for members paused at a sync barrier."""

    def __init__(self, enabled: bool = True) -> None:
        self._parked: dict[Any, Any] = {}   # trial -> its resource request (cache key)
        self._controller: Any = None
        self._disabled = not enabled

    @property
    def enabled(self) -> bool:
        """False when switched off or when this Tune lacks the parts it needs."""
        return not self._disabled

    @property
    def parked(self) -> int:
        """How many members hold a reservation now."""
        return len(self._parked)

    def park(self, tune_controller: Any, trial: Any) -> None:
        """Reserve a cache place so `trial`'s actor survives its coming pause."""
        if trial in self._parked or not self._attach(tune_controller):
            return
        key = trial.placement_group_factory
        self._controller._actor_cache.increase_max(key)
        self._parked[trial] = key

    def release(self, trial: Any) -> None:
        """`trial` runs again (its cached actor is popped) or ends: drop its reservation."""
        key = self._parked.pop(trial, None)
        if key is not None:
            self._controller._actor_cache.decrease_max(key)

    def _attach(self, tune_controller: Any) -> bool:
        if self._controller is not None:
            return True
        if self._disabled:
            return False
        # The scheduler gets a TrialRunnerWrapper; the controller is behind it.
        controller = getattr(tune_controller, "_tune_controller", tune_controller)
        cache = getattr(controller, "_actor_cache", None)
        search = getattr(controller, "_search_alg", None)
        if not all(hasattr(cache, m) for m in ("increase_max", "decrease_max")) or \
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
        return {"_parked": {}, "_controller": None, "_disabled": self._disabled}


def _park_aware(cls: type) -> type:
    """`cls` whose is_finished() is False while members are parked.

    Tune does not cache an actor once its search algorithm has produced every trial, which a
    fixed population has from round 1 on. The search algorithm's class is swapped, not its
    instance dict, because Tune snapshots that dict (BasicVariantGenerator.get_state)."""
    if cls in _PARK_AWARE.values():
        return cls
    if cls not in _PARK_AWARE:
        def is_finished(self: Any) -> bool:
            parking = _PARKINGS.get(self)
            return cls.is_finished(self) and not (parking is not None and parking.parked)
        _PARK_AWARE[cls] = type(f"ParkAware{cls.__name__}", (cls,), {"is_finished": is_finished})
    return _PARK_AWARE[cls]
