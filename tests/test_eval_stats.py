"""The intervals of llmtrain.train.evaluate.stats."""

import math
import random

import pytest

from llmtrain.train.evaluate.stats import Z_95, paired_difference_interval, wilson_interval


def score_statistic(p: float, p0: float, n: int) -> float:
    return abs(p - p0) / math.sqrt(p0 * (1 - p0) / n)


@pytest.mark.parametrize(("successes", "n"), [(81, 263), (3, 10), (490, 500)])
def test_wilson_bounds_are_where_the_score_test_reaches_z(successes, n):
    """Wilson's interval is every p0 the score test at 5% does not reject: its bounds are the
    two p0 whose score statistic is exactly z."""
    estimate = wilson_interval(successes, n)
    p = successes / n
    assert estimate.value == p
    assert estimate.low < p < estimate.high
    for bound in (estimate.low, estimate.high):
        assert score_statistic(p, bound, n) == pytest.approx(Z_95, rel=1e-9)


def test_wilson_stays_inside_zero_and_one():
    none, every = wilson_interval(0, 50), wilson_interval(50, 50)
    assert none.low == 0 and 0 < none.high < 0.1
    assert every.high == 1 and 0.9 < every.low < 1


def test_paired_difference_of_equal_models_straddles_zero():
    rng = random.Random(0)
    outcomes = [rng.random() < 0.6 for _ in range(500)]
    estimate = paired_difference_interval(outcomes, outcomes)
    assert estimate.value == 0
    assert estimate.low < 0 < estimate.high


def test_paired_difference_matches_the_normal_approximation_on_many_problems():
    """With 20,000 problems Newcombe's interval and the paired Wald interval agree."""
    rng = random.Random(1)
    before = [rng.random() < 0.5 for _ in range(20_000)]
    after = [b if rng.random() < 0.8 else rng.random() < 0.7 for b in before]
    n = len(before)
    gained = sum(a and not b for b, a in zip(before, after))
    lost = sum(b and not a for b, a in zip(before, after))
    d = (gained - lost) / n
    half = Z_95 * math.sqrt(gained + lost - (gained - lost) ** 2 / n) / n
    estimate = paired_difference_interval(before, after)
    assert estimate.value == pytest.approx(d)
    assert estimate.low == pytest.approx(d - half, abs=2e-3)
    assert estimate.high == pytest.approx(d + half, abs=2e-3)


def test_pairing_narrows_the_interval_of_correlated_outcomes():
    """Two models right on mostly the same problems: the paired interval of their difference
    is narrower than that of independent samples of the same accuracies."""
    before = [True] * 300 + [False] * 200
    after = [True] * 300 + [True] * 30 + [False] * 170
    paired = paired_difference_interval(before, after)
    p1, p2, n = 330 / 500, 300 / 500, 500
    unpaired_half = Z_95 * math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
    assert paired.low > 0
    assert paired.high - paired.low < 2 * unpaired_half


def test_paired_difference_needs_outcomes_of_the_same_problems():
    with pytest.raises(ValueError, match="equally long"):
        paired_difference_interval([True, False], [True])
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
