"""YOLOv5's classic steady-state GA as ask/tell; all state is rebuilt from the store's rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..train.results import Metrics
from .operators import (
    PARENT_METHODS, ParentMethod, clip_to_space, mutate, select_parent, top_parents,
)
from .records import Row, TrialRecord, as_row_table
from .space import (
    HypLike, SearchSpace, add_default_anchors, check_hyp_against_space, zero_genes,
)
from .store import EvolutionStore

# Tag mixed into the trial's SeedSequence so the training seed is a stream of its own,
# separate from the GA's draws for the same trial.
_TRAIN_SEED_TAG = 0x7E55


@dataclass(frozen=True)
class Suggestion:
    """The hyperparameters proposed for one trial and how they were made."""

    trial_index: int
    hyp: dict[str, float]                 # every hyp key, in the base hyp's order
    extras: dict[str, float]              # sidecar-only genes (freeze, prune), if evolved
    parent_rows: tuple[int, ...]          # evolve.csv rows the parent came from
    seed: int                             # training seed for this trial (run seed, index)
    generation: int                       # evolve.csv rows when suggested
    cloned: bool                          # the child equals its parent (nothing could move)
    strategy: str = "classic"

    def record(self, trial_id: str, status: str,
               results: Sequence[float] | Metrics | None = None, *, node: str | None = None,
               device: str | None = None, start: float | None = None,
               end: float | None = None, reason: str | None = None) -> TrialRecord:
        """The store record for this suggestion's outcome (`tell`)."""
        freeze = self.extras.get("freeze")
        prune = self.extras.get("prune")
        return TrialRecord(
            trial_id, status, self.hyp, results, strategy=self.strategy,
            generation=self.generation, parent_rows=self.parent_rows, seed=self.seed,
            node=node, device=device, start=start, end=end,
            freeze=None if freeze is None else int(freeze),
            prune=None if prune is None else float(prune), cloned=self.cloned, reason=reason)


def trial_seed(seed: int, trial_index: int) -> int:
    """A reproducible 31-bit training seed for trial `trial_index` of a run seeded `seed`."""
    state = np.random.SeedSequence([seed, trial_index, _TRAIN_SEED_TAG]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


class GeneticAlgorithm:
    """Classic YOLOv5 evolution: parent from the top rows, multiplicative mutation, limits.

    Args:
        space: genes with gain and limits; its extra genes (freeze, prune) need base values.
        base_hyp: the starting hyps (`anchors=3` is appended when the space evolves anchors
            and the hyp lacks it, as YOLOv5 does). Its key order is the gene order.
        seed: run seed; trial i draws from np.random.default_rng([seed, i]).
        parent_method: 'single' (YOLOv5's default) or 'weighted'.
        base_extras: starting values of the extra genes, e.g. {'freeze': 10}.
        n_parents, mp, sigma: YOLOv5's 5, 0.8 and 0.2.
    """

    def __init__(self, space: SearchSpace, base_hyp: HypLike, seed: int,
                 parent_method: ParentMethod = "single",
                 base_extras: Mapping[str, float] | None = None, n_parents: int = 5,
                 mp: float = 0.8, sigma: float = 0.2) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"evolve seed must be a non-negative integer, got {seed!r}")
        if parent_method not in PARENT_METHODS:
            raise ConfigError(f"parent method must be one of {', '.join(PARENT_METHODS)}, "
                              f"got {parent_method!r}")
        hyp = add_default_anchors(base_hyp, space)
        check_hyp_against_space(hyp, space)
        extras = dict(base_extras or {})
        missing = [n for n in space.extra_names() if n not in extras]
        if missing:
            raise ConfigError(f"{space.source}: gene(s) {', '.join(missing)} need a base value")
        self.space, self.seed, self.parent_method = space, seed, parent_method
        self.n_parents, self.mp, self.sigma = n_parents, mp, sigma
        self.hyp_keys: tuple[str, ...] = tuple(hyp)
        self.gene_names: tuple[str, ...] = self.hyp_keys + space.extra_names()
        base = hyp | {n: float(extras[n]) for n in space.extra_names()}
        self.base: dict[str, float] = base
        # Hyp keys outside the space keep their value: gain 0, as YOLOv5's frozen genes.
        self.gains = np.array([space[n].gain if n in space else 0.0 for n in self.gene_names])
        self.zero_genes: list[str] = zero_genes(base, space)

    def ask(self, trial_index: int, rows: Sequence[Row]) -> Suggestion:
        """Propose trial `trial_index`'s hyps from the store's rows (deterministic).

        Only finished rows with a finite fitness can be parents. With none, trial 0 gets the
        unmutated base hyps (YOLOv5's baseline row) and later trials mutate the base.
        """
        if trial_index < 0:
            raise ValueError(f"trial_index must be >= 0, got {trial_index}")
        rng = np.random.default_rng([self.seed, trial_index])
        table = as_row_table(rows)
        eligible = np.flatnonzero(table.eligible)
        parent = np.array([self.base[n] for n in self.gene_names])
        parent_rows: tuple[int, ...] = ()
        if eligible.size == 0 and trial_index == 0:
            return self._suggest(trial_index, parent, parent, (), len(table), cloned=False)
        if eligible.size:
            top = eligible[top_parents(table.fitness[eligible], self.n_parents)]
            values = np.array([[table[i].gene(n, self.base[n]) for n in self.gene_names]
                               for i in top])
            method = self.parent_method if top.size > 1 else "single"
            parent, used = select_parent(values, table.fitness[top], method, rng)
            parent_rows = tuple(int(top[u]) for u in used)
        child, _ = mutate(parent, self.gains, rng, self.mp, self.sigma)
        return self._suggest(trial_index, child, parent, parent_rows, len(table))

    def _suggest(self, trial_index: int, child: np.ndarray, parent: np.ndarray,
                 parent_rows: tuple[int, ...], generation: int,
                 cloned: bool | None = None) -> Suggestion:
        genes = clip_to_space(dict(zip(self.gene_names, child.tolist())), self.space)
        if cloned is None:
            before = clip_to_space(dict(zip(self.gene_names, parent.tolist())), self.space)
            cloned = genes == before
        return Suggestion(
            trial_index, {k: float(genes[k]) for k in self.hyp_keys},
            {n: genes[n] for n in self.space.extra_names()}, parent_rows,
            trial_seed(self.seed, trial_index), generation, cloned)

    def tell(self, store: EvolutionStore, suggestion: Suggestion, trial_id: str,
             status: str, results: Sequence[float] | Metrics | None = None,
             **meta: Any) -> int | None:
        """Append the trial's outcome (node, device, start, end, reason) to the store.

        Returns its evolve.csv row, or None for a failed trial.
        """
        return store.append(suggestion.record(trial_id, status, results, **meta))
