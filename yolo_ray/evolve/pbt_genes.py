"""PBT's GA steps as pure functions: a member's first hyps, its parent draw and its explore.

The Ray scheduler (cluster/scheduler.py) calls these; they hold YOLOv5's math only (the
classic GA's parent choice and mutation, spec §1A), with every draw from a generator seeded
by (run seed, round, member), so a resumed or re-run population decides identically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

from .ga import GeneticAlgorithm
from .operators import clip_to_space, mutate, select_parent, top_parents
from .space import SearchSpace


T = TypeVar("T")


def split_quantiles(ranked: Sequence[T], fraction: float) -> tuple[list[T], list[T]]:
    """The bottom and top of `ranked` (worst first): ceil(n·q) each, at most n/2 (Ray's
    PBT sizes); both empty with fewer than 2."""
    if len(ranked) <= 1:
        return [], []
    n = min(math.ceil(len(ranked) * fraction), len(ranked) // 2)
    return list(ranked[:n]), list(ranked[len(ranked) - n:])


def member_rng(seed: int, round_index: int, member: int) -> np.random.Generator:
    """The generator member `member` draws from at round `round_index` (0: its start)."""
    return np.random.default_rng([seed, round_index, member])


def initial_genes(ga: GeneticAlgorithm, space: SearchSpace, member: int,
                  mutate_initial: bool = True) -> dict[str, float]:
    """Member `member`'s round-0 hyps: the base for member 0, else a mutation of the base."""
    base = {k: float(ga.base[k]) for k in ga.hyp_keys}
    if member == 0 or not mutate_initial:
        return base
    child = mutate(np.array(list(base.values())), ga.gains, member_rng(ga.seed, 0, member),
                   ga.mp, ga.sigma).child
    return {k: float(v) for k, v in
            clip_to_space(dict(zip(ga.hyp_keys, child.tolist())), space).items()}


def pick_parent(ga: GeneticAlgorithm, scores: Sequence[float],
                genes: Sequence[Sequence[float]], rng: np.random.Generator) -> int:
    """Index of the parent among candidates (YOLOv5's 'single' draw among the best
    min(n_parents, n), w = f − min f + 1e-6); non-finite scores are never drawn unless all are.
    `genes` holds each candidate's hyp values in `ga.hyp_keys` order."""
    scores_a = np.array(scores, dtype=float)
    top = top_parents(scores_a, ga.n_parents)
    finite = np.isfinite(scores_a[top])
    top = top[finite] if finite.any() else top[:1]
    values = np.array([list(genes[i]) for i in top], dtype=float)
    _, used = select_parent(values, np.nan_to_num(scores_a[top]), "single", rng)
    return int(top[used[0]])


def explore(ga: GeneticAlgorithm, space: SearchSpace, parent: Mapping[str, float],
            rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
    """The child's hyps (the parent's mutated, clipped to the limits, rounded) and each
    gene's multiplier."""
    m = mutate(np.array([float(parent[k]) for k in ga.hyp_keys]), ga.gains, rng, ga.mp,
               ga.sigma)
    child = clip_to_space(dict(zip(ga.hyp_keys, m.child.tolist())), space)
    return ({k: float(v) for k, v in child.items()},
            dict(zip(ga.hyp_keys, (float(x) for x in m.multipliers))))
