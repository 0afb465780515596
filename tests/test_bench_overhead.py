"""bench/evolve_overhead.py's steady-state trials/hour: a short run's start and tail left out."""

from __future__ import annotations

import math

import pytest

from bench.evolve_overhead import concurrency_table, steady_rate, steady_window

# Two slots, 10 s trials, the second slot 5 s behind: one trial per 10 s per slot.
SLOT_A = [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
SLOT_B = [(5.0, 15.0), (15.0, 25.0), (25.0, 35.0)]


def test_steady_rate_of_two_offset_slots_is_twice_one_slot():
    spans = sorted(SLOT_A + SLOT_B)
    window = steady_window([SLOT_A[0], SLOT_B[0]], spans)
    assert window == (15.0, 30.0)
    assert steady_rate(spans, *window) == pytest.approx(720.0)  # 2 x 360 per hour
    assert steady_rate(SLOT_A, *steady_window(SLOT_A[:1], SLOT_A)) == pytest.approx(360.0)
    # The whole-span figure for the same warm trials: 4 trials in 25 s, 0.8 of the steady one.
    assert 3600 * 4 / (35.0 - 10.0) == pytest.approx(0.8 * 720.0)


def test_steady_rate_counts_a_trial_by_its_share_of_the_window():
    assert steady_rate([(0.0, 10.0), (10.0, 20.0)], 5.0, 15.0) == pytest.approx(3600 / 10)
    assert math.isnan(steady_rate([(0.0, 10.0)], 10.0, 10.0))  # no window: no figure


def test_concurrency_table_reports_steady_and_span_speed_ups_and_their_medians():
    rows = []
    for k, (one, two) in enumerate([(400.0, 780.0), (420.0, 800.0), (380.0, 760.0)]):
        for config, ours in (("1x1", one), ("2x1", two)):
            rows.append({"round": k, "config": config, "slots": int(config[0]), "cpus": 1,
                         "steady_trials_per_hour": ours, "warm_trials_per_hour": 0.9 * ours,
                         "bare_steady_trials_per_hour": ours * 1.05,
                         "bare_warm_trials_per_hour": ours})
    text = concurrency_table(rows)
    assert "| 1 | 2 × 1 | 800 (720) | 840 (800) | 0.95 | 1.90× (1.90×) | 1.90× (1.90×) |" in text
    # medians of 1.95, 1.90, 2.00
    assert "Median speed-up of 2x1 over 1x1 (3 round(s)): ours 1.95× steady (1.95×" in text
