"""PBT's GA steps (pure): a member's first hyps, the parent draw and the explore."""

from __future__ import annotations

import math

import numpy as np
import pytest

from yolo_ray.evolve.ga import GeneticAlgorithm
from yolo_ray.evolve.pbt_genes import explore, initial_genes, member_rng, pick_parent


@pytest.fixture()
def pbt_space(space):
    return space.without("anchors")


@pytest.fixture()
def ga(pbt_space, base_hyp) -> GeneticAlgorithm:
    return GeneticAlgorithm(pbt_space, base_hyp, seed=7)


def test_member_zero_starts_from_the_base_and_the_others_from_mutations(ga, pbt_space):
    assert initial_genes(ga, pbt_space, 0) == {k: float(ga.base[k]) for k in ga.hyp_keys}
    assert initial_genes(ga, pbt_space, 3, mutate_initial=False) == initial_genes(
        ga, pbt_space, 0)
    m3 = initial_genes(ga, pbt_space, 3)
    assert m3 == initial_genes(ga, pbt_space, 3)  # seeded by (run seed, round 0, member)
    assert m3 != initial_genes(ga, pbt_space, 4) and m3 != initial_genes(ga, pbt_space, 0)
    for k, v in m3.items():
        assert pbt_space[k].lower <= v <= pbt_space[k].upper and round(v, 5) == v


def test_the_parent_is_drawn_from_the_best_by_fitness_weight(ga):
    scores = [0.1, 0.5, float("nan"), 0.3, -math.inf, 0.2, 0.4]
    genes = [[float(i)] * len(ga.hyp_keys) for i in range(len(scores))]
    picks = [pick_parent(ga, scores, genes, np.random.default_rng([1, i]))
             for i in range(3000)]
    counts = np.bincount(picks, minlength=len(scores))
    # The best n_parents=5 finite ones only (0.5, 0.4, 0.3, 0.2, 0.1), w = f - min f + 1e-6:
    # the worst of them almost never, the best most often.
    assert counts[2] == counts[4] == 0 and counts[0] <= 3
    assert counts[1] > counts[6] > counts[3] > counts[5] > 0
    w = np.array([0.4, 0.3, 0.2, 0.1]) / 1.0
    assert counts[[1, 6, 3, 5]] / 3000 == pytest.approx(w, abs=0.04)
    assert pick_parent(ga, [float("nan")] * 3, genes[:3], member_rng(7, 1, 0)) in (0, 1, 2)


def test_explore_mutates_the_parent_within_the_limits(ga, pbt_space):
    parent = {k: float(ga.base[k]) for k in ga.hyp_keys}
    child, multipliers = explore(ga, pbt_space, parent, member_rng(7, 2, 1))
    again, _ = explore(ga, pbt_space, parent, member_rng(7, 2, 1))
    assert child == again and child != parent and set(multipliers) == set(ga.hyp_keys)
    for k, v in child.items():
        gene = pbt_space[k] if k in pbt_space else None
        if gene is None or gene.gain == 0:
            assert v == parent[k] and multipliers[k] == 1.0
            continue
        assert gene.lower <= v <= gene.upper
        assert 0.3 <= multipliers[k] <= 3.0
        expected = min(max(parent[k] * multipliers[k], gene.lower), gene.upper)
        assert v == pytest.approx(round(expected, 5), abs=1e-5)
