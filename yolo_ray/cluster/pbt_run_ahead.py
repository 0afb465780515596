"""Members that go past a synchronous PBT round's end without pausing, when they safely can.

Ray's synchronous PBT pauses each member that reaches a round's end until the last one
does: the early ones' slots idle for the spread of the members' epoch times (the floor of
the idle slot-time measured in docs/benchmarks.md), and every member pays a pause and a
restore (save, reset, load: ~0.3 s) per round even when it keeps its own weights.

With run-ahead, a member that reports its round's end while no other member waits for a
worker to train that round is not paused: its checkpoint is saved (clones of it restore
that one) and it is *held*, idle on its worker. As soon as enough members have reported
below it that it cannot be in the bottom quantile whatever the others report, it is
*released* and trains the next round at once: at the barrier it keeps its weights and hyps
anyway, so nothing it trains is thrown away. At the barrier, held members that keep theirs
go on without a pause or restore; those in the bottom quantile restore their parent's
checkpoint on the same worker. A released member that reaches the next round's end before
the barrier waits, idle, and its result is taken once the round is decided.

The decisions and rows are those of the pausing scheduler: ranking uses the same keys, and
a member's training does not depend on whether it paused (checkpoints restore exactly).
A member is not released into the run's last round: it would end before the barrier.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

RankKey = tuple[float, int]  # (score, -member): the order of GAPopulationBasedTraining._quantiles


def bottom_count(ranked: int, quantile_fraction: float) -> int:
    """How many members PBT's bottom quantile holds among `ranked`: ceil(n·q), at most n/2."""
    if ranked <= 1:
        return 0
    return min(math.ceil(ranked * quantile_fraction), ranked // 2)


class RunAhead:
    """One round's members that went past its end: held (idle) or ahead (training on)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.saves: dict[Any, Any] = {}      # trial -> its round-end save (clones take it)
        self.held: dict[Any, RankKey] = {}   # trial -> its rank key; idle on its worker
        self._may_run: set[Any] = set()      # held trials not at the run's last round
        self.ahead: set[Any] = set()         # released: training the next round
        self.stash: dict[Any, dict] = {}     # ahead trial -> its next round-end result
        self._keys: dict[Any, RankKey] = {}  # trial -> its key, for every report this round
        self._sorted: list[RankKey] = []
        self.handed_over: set[Any] = set()   # idle members paused for a waiting member
        self.released = 0                    # members released over the run (for the logs)

    def reported(self, trial: Any, key: RankKey) -> None:
        """`trial` reported this round's end with rank `key` (again, after a retry: replaced)."""
        old = self._keys.get(trial)
        if old is not None:
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        self._keys[trial] = key
        bisect.insort(self._sorted, key)

    def hold(self, trial: Any, save: Any, may_run: bool) -> None:
        """`trial` waits for the barrier on its worker; `save` holds its round-end weights."""
        self.saves[trial] = save
        self.held[trial] = self._keys[trial]
        if may_run:
            self._may_run.add(trial)

    def release_safe(self, ranked: int, quantile_fraction: float) -> list[Any]:
        """Held trials that cannot fall in the bottom quantile now: they become `ahead`.

        A member is out of the bottom n_b once n_b reported keys rank below its own (the
        keys are unique: the member index breaks ties)."""
        candidates = [t for t in self.held if t in self._may_run]
        if not candidates:
            return []
        n_b = bottom_count(ranked, quantile_fraction)
        if n_b > len(self._sorted):
            return []
        threshold = self._sorted[n_b - 1] if n_b else None
        safe = [t for t in candidates if threshold is None or self.held[t] > threshold]
        for t in safe:
            del self.held[t]
            self._may_run.discard(t)
            self.ahead.add(t)
        self.released += len(safe)
        return safe

    def early(self, trial: Any, epoch: Any, interval: int) -> str | None:
        """For a result of an ahead trial (the next round, before the barrier): 'stash' at
        that round's end, else 'continue'; None for any other result."""
        if trial not in self.ahead or epoch is None:
            return None
        return "stash" if int(epoch) % interval == 0 else "continue"

    def idle_one(self) -> Any | None:
        """A member idle on its worker past this round's end (held, or ahead with its next
        result stashed) to pause, so a member that has yet to train this round gets the
        worker; None if there is none. It stays at the barrier (its save and stash kept)."""
        trial = next(iter(self.held), None)
        if trial is None:
            trial = next(iter(self.stash), None)
        if trial is not None:
            self.held.pop(trial, None)
            self._may_run.discard(trial)
            self.ahead.discard(trial)
        return trial

    def waits(self, trial: Any) -> bool:
        """Whether `trial` went past this round's end (held or ahead): it is at the barrier."""
        return trial in self.saves

    def forget(self, trial: Any, drop_save: bool = False) -> None:
        """`trial` errored, ended or was paused: no longer held or ahead. Its save stays for
        clones unless `drop_save` (it ended)."""
        self.held.pop(trial, None)
        self._may_run.discard(trial)
        self.ahead.discard(trial)
        self.stash.pop(trial, None)
        self.handed_over.discard(trial)
        if drop_save:
            self.saves.pop(trial, None)

    def end_round(self) -> tuple[list[Any], dict[Any, dict]]:
        """The barrier passed: the held trials and the stashed results; all else cleared."""
        held, stash = list(self.held), dict(self.stash)
        self.saves.clear()
        self.held.clear()
        self._may_run.clear()
        self.ahead.clear()
        self.stash.clear()
        self.handed_over.clear()
        self._keys.clear()
        self._sorted.clear()
        return held, stash

    def __getstate__(self) -> dict[str, Any]:
        # A pickled scheduler (Tuner state) carries the setting, not live trials or futures.
        return {"enabled": self.enabled}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(bool(state.get("enabled", True)))
