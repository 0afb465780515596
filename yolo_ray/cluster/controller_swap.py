"""Mend Ray Tune 2.60's TuneController in place: one method overridden by a class swap.

The mends (tune_failures, worker_starts) each swap the controller's class for a subclass
overriding one method, so they compose, and leave its instance dict alone, as Tune
snapshots it.
"""

from __future__ import annotations

from typing import Any, Callable


def unwrap_controller(tune_controller: Any) -> Any:
    """The TuneController itself: schedulers get a TrialRunnerWrapper with it behind."""
    return getattr(tune_controller, "_tune_controller", tune_controller)


def swap_controller_method(tune_controller: Any, made: dict[type, type], name: str,
                           prefix: str, override: Callable[[type], Callable[..., Any]]) -> None:
    """Give the controller the subclass `prefix + its class name` whose method `name` is
    `override(its class)`; `made` maps each class to its subclass (one per class).

    Does nothing when the controller already has this mend (a class in `made` is among its
    bases) or its class lacks the method (another Tune: the old behaviour)."""
    controller = unwrap_controller(tune_controller)
    cls = type(controller)
    if any(c in made.values() for c in cls.__mro__) or not callable(getattr(cls, name, None)):
        return
    if cls not in made:
        made[cls] = type(f"{prefix}{cls.__name__}", (cls,), {name: override(cls)})
    controller.__class__ = made[cls]
