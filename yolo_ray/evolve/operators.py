"""Pure GA operators of YOLOv5's classic evolution: parent ranking, selection, mutation, limits."""

from __future__ import annotations

import math
from typing import Literal, Mapping, NamedTuple

import numpy as np

from .space import SearchSpace

ParentMethod = Literal["single", "weighted"]
PARENT_METHODS: tuple[str, ...] = ("single", "weighted")

MULTIPLIER_MIN, MULTIPLIER_MAX = 0.3, 3.0  # YOLOv5's clip on the mutation multiplier
DECIMALS = 5                               # YOLOv5 rounds constrained values to 5 decimals
# Safety net for the "redraw while nothing changed" loop: with gains so small that
# 1 + gain*... == 1.0 in float64 it would otherwise never end.
_MAX_DRAWS = 10_000


class Mutation(NamedTuple):
    """A mutated child and the multipliers applied (`child, v = mutate(...)` unpacks both)."""

    child: np.ndarray
    multipliers: np.ndarray

    @property
    def unchanged(self) -> bool:
        """True when no multiplier differs from 1 (every gain 0: the child is a clone)."""
        return bool(np.all(self.multipliers == 1.0))


def top_parents(rows_fitness: np.ndarray, n: int = 5) -> np.ndarray:
    """Indices of the `n` fittest rows, fittest first (ties keep row order; NaN ranks last).

    Args:
        rows_fitness: (k,) fitness per row.
        n: how many parents to keep (YOLOv5: 5); fewer when there are fewer rows.
    """
    f = np.asarray(rows_fitness, dtype=np.float64).reshape(-1)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    key = np.where(np.isnan(f), -np.inf, f)
    n = min(n, f.size)
    # Only rows at or above the n-th best value can win (O(k) with many rows); a stable sort
    # of those on -fitness keeps the earlier row first among equals.
    cut = np.partition(key, f.size - n)[f.size - n]
    candidates = np.flatnonzero(key >= cut)
    return candidates[np.argsort(-key[candidates], kind="stable")][:n]


def select_parent(values: np.ndarray, fitness: np.ndarray, method: ParentMethod,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Choose the parent gene vector from the top rows, with w = f − min(f) + 1e-6.

    Args:
        values: (k, g) gene values of the candidate parents.
        fitness: (k,) their fitness (finite).
        method: 'single' picks one row with probability w/Σw; 'weighted' returns Σ w·x / Σ w.
        rng: the only source of randomness.

    Returns:
        (parent (g,), indices of the rows that contributed).
    """
    x = np.asarray(values, dtype=np.float64)
    f = np.asarray(fitness, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != f.size or f.size == 0:
        raise ValueError(f"values must be (k, g) and fitness (k,) with k >= 1, "
                         f"got {x.shape} and {f.shape}")
    if method not in PARENT_METHODS:
        raise ValueError(f"parent method must be one of {PARENT_METHODS}, got {method!r}")
    # The weakest of the candidates gets (almost) no weight: YOLOv5's choice.
    w = f - f.min() + 1e-6
    if method == "single" or f.size == 1:
        i = int(rng.choice(f.size, p=w / w.sum()))
        return x[i].copy(), np.array([i])
    return (x * w[:, None]).sum(axis=0) / w.sum(), np.arange(f.size)


def mutate(parent: np.ndarray, gains: np.ndarray, rng: np.random.Generator,
           mp: float = 0.8, sigma: float = 0.2) -> Mutation:
    """YOLOv5's multiplicative mutation, v_k = clip(1 + g_k·B_k·Z_k·U·σ, 0.3, 3.0).

    B_k ~ Bernoulli(mp), Z_k ~ N(0, 1) per gene and ONE U ~ Uniform(0, 1) per offspring; the
    draw is repeated while every v_k == 1 so at least one gene changes. When no gain is
    positive nothing can change: the parent is returned with all multipliers 1
    (`Mutation.unchanged`) instead of looping forever.
    """
    p = np.asarray(parent, dtype=np.float64).reshape(-1)
    g = np.asarray(gains, dtype=np.float64).reshape(-1)
    if p.shape != g.shape:
        raise ValueError(f"parent and gains differ in length: {p.size} vs {g.size}")
    v = np.ones_like(p)
    if not np.any(g > 0):
        return Mutation(p.copy(), v)
    for _ in range(_MAX_DRAWS):
        b = rng.random(g.size) < mp
        z = rng.standard_normal(g.size)
        u = rng.random()
        v = np.clip(g * b * z * u * sigma + 1.0, MULTIPLIER_MIN, MULTIPLIER_MAX)
        if np.any(v != 1.0):
            break
    return Mutation(p * v, v)


def clip_to_space(values: Mapping[str, float], space: SearchSpace) -> dict[str, float]:
    """Clip every gene of `space` to [lower, upper] and round: 5 decimals, int genes to int.

    Keys outside the space pass through unchanged (YOLOv5 constrains only meta keys).
    """
    out: dict[str, float] = {}
    for name, value in values.items():
        if name not in space:
            out[name] = value
            continue
        gene = space[name]
        clipped = min(max(float(value), gene.lower), gene.upper)
        if gene.kind == "int":
            # Rounding must not leave non-integer limits: stay within [ceil(lo), floor(hi)].
            lo, hi = math.ceil(gene.lower), math.floor(gene.upper)
            out[name] = min(max(int(round(clipped)), lo), hi)
        else:
            # Python's round() rounds the exact decimal value (np.round scales by 1e5 first);
            # a limit with more than 5 decimals still wins over the rounding.
            out[name] = min(max(round(clipped, DECIMALS), gene.lower), gene.upper)
    return out
