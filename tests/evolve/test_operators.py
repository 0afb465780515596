"""GA operators: fixed-seed statistics of mutation and selection, limits and rounding."""

from __future__ import annotations

import numpy as np
import pytest

from yolo_ray.evolve.operators import clip_to_space, mutate, select_parent, top_parents
from yolo_ray.evolve.space import Gene, SearchSpace


def test_mutation_rate_and_multiplier_range() -> None:
    rng = np.random.default_rng(0)
    g = 30
    v = np.stack([mutate(np.ones(g), np.ones(g), rng).multipliers for _ in range(4000)])
    assert 0.79 < np.mean(v != 1.0) < 0.81           # B_k ~ Bernoulli(0.8)
    assert v.min() >= 0.3 and v.max() <= 3.0
    # v - 1 = Z·U·σ for mutated genes: sd = σ·sqrt(E[U²]) = 0.2/sqrt(3).
    assert abs(np.std(v[v != 1.0] - 1.0) - 0.2 / np.sqrt(3)) < 0.005


def test_mutation_draws_match_the_formula_with_one_u_per_offspring() -> None:
    parent, gains = np.array([0.01, 0.5, 3.0, 0.2]), np.array([1.0, 0.3, 2.0, 0.0])
    child, v = mutate(parent, gains, np.random.default_rng(42))
    rng = np.random.default_rng(42)  # replay: B (g,), Z (g,), then a single U
    b, z, u = rng.random(4) < 0.8, rng.standard_normal(4), rng.random()
    expected = np.clip(gains * b * z * u * 0.2 + 1.0, 0.3, 3.0)
    np.testing.assert_array_equal(v, expected)
    np.testing.assert_array_equal(child, parent * expected)
    assert v[3] == 1.0  # gain 0 never moves


def test_mutation_redraws_until_something_changes() -> None:
    rng = np.random.default_rng(1)
    for _ in range(500):  # mp small: most first draws change nothing
        m = mutate(np.ones(2), np.ones(2), rng, mp=0.05)
        assert not m.unchanged and np.any(m.multipliers != 1.0)


def test_all_zero_gains_return_a_flagged_clone() -> None:
    parent = np.array([0.1, 0.2])
    m = mutate(parent, np.zeros(2), np.random.default_rng(0))
    assert m.unchanged
    np.testing.assert_array_equal(m.child, parent)
    child, v = m  # unpacks as (child, multipliers)
    assert np.all(v == 1.0)


def test_larger_gain_spreads_more() -> None:
    rng = np.random.default_rng(3)
    v = np.stack([mutate(np.ones(2), np.array([1.0, 2.0]), rng).multipliers for _ in range(3000)])
    assert np.std(v[:, 1]) > 1.8 * np.std(v[:, 0])


def test_top_parents_order_ties_and_nan() -> None:
    f = np.array([0.2, np.nan, 0.9, 0.5, 0.9, 0.1, 0.7])
    assert top_parents(f, 5).tolist() == [2, 4, 6, 3, 0]
    assert top_parents(f[:2], 5).tolist() == [0, 1]  # fewer rows than n; NaN last
    assert top_parents(np.zeros(10), 3).tolist() == [0, 1, 2]


def test_single_selection_frequencies_follow_weights() -> None:
    f = np.array([0.5, 0.4, 0.3, 0.2, 0.1])
    w = f - f.min() + 1e-6
    values = np.arange(5, dtype=float)[:, None]
    rng = np.random.default_rng(7)
    n = 20000
    picks = np.array([select_parent(values, f, "single", rng)[1][0] for _ in range(n)])
    counts = np.bincount(picks, minlength=5)
    expected = n * w / w.sum()
    chi2 = float(np.sum((counts[:4] - expected[:4]) ** 2 / expected[:4]))
    assert chi2 < 16.27          # 3 degrees of freedom, p = 0.001
    assert counts[4] <= 1        # the weakest of the top rows has ~0 weight
    assert counts[0] > counts[1] > counts[2] > counts[3]


def test_weighted_parent_is_the_weighted_mean() -> None:
    x = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    f = np.array([0.3, 0.2, 0.1])
    parent, used = select_parent(x, f, "weighted", np.random.default_rng(0))
    w = f - f.min() + 1e-6
    np.testing.assert_allclose(parent, (x * w[:, None]).sum(0) / w.sum())
    assert used.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="parent method"):
        select_parent(x, f, "tournament", np.random.default_rng(0))  # type: ignore[arg-type]


def test_selection_is_deterministic_per_seed() -> None:
    x, f = np.arange(5.0)[:, None], np.linspace(0.1, 0.5, 5)
    def draw(s: int) -> list[int]:
        return [int(select_parent(x, f, "single", np.random.default_rng([s, i]))[1][0])
                for i in range(50)]

    assert draw(1) == draw(1) and draw(1) != draw(2)


def test_clip_to_space_limits_rounding_and_ints() -> None:
    space = SearchSpace((("lr0", Gene(1, 1e-5, 0.1)), ("box", Gene(1, 0.02, 0.2)),
                         ("freeze", Gene(1, 0.5, 24.4, "int"))))
    out = clip_to_space({"lr0": 0.0123456789, "box": 7.0, "freeze": 30.2, "cls": 0.123456789},
                        space)
    assert out == {"lr0": 0.01235, "box": 0.2, "freeze": 24, "cls": 0.123456789}
    assert isinstance(out["freeze"], int)
    assert clip_to_space({"lr0": 1e-9, "freeze": 0.0}, space) == {"lr0": 1e-05, "freeze": 1}
    rng = np.random.default_rng(0)
    for _ in range(200):  # random values always land inside the limits, 5 decimals
        v = clip_to_space({"box": float(rng.normal(0.1, 0.2))}, space)["box"]
        assert 0.02 <= v <= 0.2 and round(v, 5) == v
