"""GeneticAlgorithm: baseline first, determinism per seed, eligible parents, limits, extras."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from yolo_ray.errors import ConfigError
from yolo_ray.evolve.ga import GeneticAlgorithm, Suggestion, trial_seed
from yolo_ray.evolve.records import Row
from yolo_ray.evolve.space import with_freeze_gene, with_prune_gene
from yolo_ray.evolve.store import EvolutionStore
from yolo_ray.train.fitness import fitness_from_values


def _row(i: int, hyp: dict[str, float], map_: float, status: str = "finished",
         **meta: object) -> Row:
    values = (0.5, 0.5, map_, map_, 0.05, 0.03, 0.01)
    return Row(i, values, dict(hyp), fitness_from_values(values), {"status": status, **meta})


def _fake_fitness(hyp: dict[str, float]) -> list[float]:
    """A smooth objective with its optimum away from the base hyps (mock trainer)."""
    score = math.exp(-((hyp["lr0"] - 0.03) / 0.02) ** 2 - ((hyp["scale"] - 0.8) / 0.3) ** 2)
    return [0.5, 0.5, score, 0.8 * score, 0.05, 0.03, 0.01]


def _run(space, base_hyp, seed: int, n: int, tmp: Path) -> list[Suggestion]:
    ga = GeneticAlgorithm(space, base_hyp, seed=seed)
    store = EvolutionStore(tmp / f"run{seed}", ga.hyp_keys)
    out = []
    for i in range(n):
        s = ga.ask(i, store.rows())
        ga.tell(store, s, f"trial-{i}", "finished", _fake_fitness(s.hyp))
        out.append(s)
    return out


def test_first_suggestion_is_the_base_hyp(space, base_hyp) -> None:
    ga = GeneticAlgorithm(space, base_hyp, seed=0)
    s = ga.ask(0, [])
    assert s.hyp == base_hyp.as_dict() | {"anchors": 3.0}
    assert list(s.hyp) == list(base_hyp.keys()) + ["anchors"]  # anchors appended last
    assert s.parent_rows == () and not s.cloned and s.generation == 0
    # Later trials with nothing to select from mutate the base (no duplicate baselines).
    s1 = ga.ask(1, [])
    assert s1.hyp != s.hyp and s1.parent_rows == ()


def test_same_seed_same_suggestions_different_seed_differs(space, base_hyp, tmp_path) -> None:
    a = _run(space, base_hyp, 1, 15, tmp_path / "a")
    b = _run(space, base_hyp, 1, 15, tmp_path / "b")
    c = _run(space, base_hyp, 2, 15, tmp_path / "c")
    assert [s.hyp for s in a] == [s.hyp for s in b]
    assert [s.seed for s in a] == [s.seed for s in b]
    assert [s.hyp for s in a[1:]] != [s.hyp for s in c[1:]]
    assert len({s.seed for s in a}) == len(a)  # each trial its own training seed


def test_ask_is_pure(space, base_hyp) -> None:
    ga = GeneticAlgorithm(space, base_hyp, seed=3)
    rows = [_row(i, ga.base, 0.1 * i) for i in range(8)]
    assert ga.ask(5, rows) == ga.ask(5, rows)
    assert trial_seed(3, 5) == ga.ask(5, rows).seed


def test_only_finished_finite_rows_are_parents(space, base_hyp) -> None:
    ga = GeneticAlgorithm(space, base_hyp, seed=0)
    rows = [_row(0, ga.base, 0.99, "early-stopped"), _row(1, ga.base, float("nan")),
            _row(2, ga.base, 0.2), _row(3, ga.base, 0.98, "failed")]
    for i in range(50):
        assert ga.ask(i, rows).parent_rows == (2,)
    none_eligible = rows[:2]
    assert ga.ask(0, none_eligible).parent_rows == ()  # falls back to the base


def test_parents_come_from_the_top_five(space, base_hyp) -> None:
    ga = GeneticAlgorithm(space, base_hyp, seed=0)
    rows = [_row(i, ga.base, f) for i, f in enumerate([0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.6, 0.5])]
    chosen = {ga.ask(i, rows).parent_rows[0] for i in range(300)}
    assert chosen <= {1, 3, 5, 6}  # top five are 1,3,5,6,7; row 7 (weakest) has ~0 weight
    weighted = GeneticAlgorithm(space, base_hyp, seed=0, parent_method="weighted")
    assert weighted.ask(0, rows).parent_rows == (1, 3, 5, 6, 7)


def test_children_respect_limits_and_frozen_genes(space, base_hyp) -> None:
    ga = GeneticAlgorithm(space, base_hyp, seed=11)
    rows = [_row(0, ga.base, 0.5)]
    for i in range(200):
        s = ga.ask(i, rows)
        for k, v in s.hyp.items():
            g = space[k]
            assert g.lower <= v <= g.upper and round(v, 5) == v, k
        for k in ("iou_t", "fl_gamma", "perspective", "fliplr"):  # gain 0
            assert s.hyp[k] == ga.base[k]
        for k in ga.zero_genes:  # start at 0: multiplicative mutation keeps them there
            assert s.hyp[k] == 0.0
        assert s.parent_rows == (0,) and s.generation == 1


def test_cloned_when_nothing_can_move(space, base_hyp) -> None:
    frozen = space
    for name in space.names():
        frozen = frozen.with_gene(name, frozen[name].__class__(0.0, frozen[name].lower,
                                                               frozen[name].upper))
    ga = GeneticAlgorithm(frozen, base_hyp, seed=0)
    s = ga.ask(1, [_row(0, ga.base, 0.5)])
    assert s.cloned and s.hyp == ga.base


def test_extra_genes_freeze_and_prune(space, base_hyp) -> None:
    s2 = with_prune_gene(with_freeze_gene(space))
    with pytest.raises(ConfigError, match="freeze, prune"):
        GeneticAlgorithm(s2, base_hyp, seed=0)
    ga = GeneticAlgorithm(s2, base_hyp, seed=0, base_extras={"freeze": 10, "prune": 0.3})
    assert ga.ask(0, []).extras == {"freeze": 10, "prune": 0.3}
    rows = [_row(0, ga.base, 0.5, freeze=12, prune=0.5)]
    seen = set()
    for i in range(100):
        s = ga.ask(i, rows)
        assert "freeze" not in s.hyp and isinstance(s.extras["freeze"], int)
        assert 0 <= s.extras["freeze"] <= 24 and 0.0 <= s.extras["prune"] <= 0.9
        seen.add(s.extras["freeze"])
    assert len(seen) > 3 and 12 in seen  # moves around the parent's value from the sidecar
    rec = ga.ask(3, rows).record("t3", "finished", [0.1] * 7)
    assert rec.freeze is not None and rec.prune is not None


def test_bad_arguments(space, base_hyp) -> None:
    with pytest.raises(ConfigError, match="seed"):
        GeneticAlgorithm(space, base_hyp, seed=-1)
    with pytest.raises(ConfigError, match="parent method"):
        GeneticAlgorithm(space, base_hyp, seed=0, parent_method="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        GeneticAlgorithm(space, base_hyp, seed=0).ask(-1, [])


def test_evolution_improves_a_mock_objective(space, base_hyp, tmp_path) -> None:
    runs = _run(space, base_hyp, 5, 60, tmp_path)
    store = EvolutionStore(tmp_path / "run5")
    best = store.best_row()
    assert best is not None and best.fitness > 1.5 * store.rows()[0].fitness
    assert np.all(np.diff([s.generation for s in runs]) == 1)


def test_continues_from_a_yolov5_made_evolve_csv(space, base_hyp, tmp_path) -> None:
    from .conftest import write_yolov5_csv

    src = tmp_path / "evolve.csv"
    write_yolov5_csv(src, 10)
    ga = GeneticAlgorithm(with_freeze_gene(space), base_hyp, seed=0, base_extras={"freeze": 10})
    store = EvolutionStore(tmp_path / "run", ga.hyp_keys)
    store.seed_from_csv(src)
    rows = store.rows()
    top = set(np.argsort([-r.fitness for r in rows], kind="stable")[:5].tolist())
    for i in range(20):
        s = ga.ask(i, rows)
        assert set(s.parent_rows) <= top and s.generation == 10
        assert 3 <= s.extras["freeze"] <= 30  # YOLOv5 rows have no freeze: the base (10) is used
