import math

import pytest

from protege.config import EvalConfig, Example
from protege.evaluate.bootstrap import bootstrap_ci, paired_difference, pass_at_k, ratio_ci
from protege.evaluate.task_eval import score_predictions


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(200, 10, 1) == pytest.approx(10 / 200)  # pass@1 is c/n
    assert pass_at_k(10, 9, 2) == 1.0  # fewer than k wrong samples: some draw of k holds a right one
    assert pass_at_k(10, 0, 5) == 0.0


def test_pass_at_k_is_stable_where_binomials_overflow():
    # C(2000, 1000) overflows a float; the product form gives 1 - C(1990,1000)/C(2000,1000) anyway
    expected = 1 - math.comb(1990, 1000) / math.comb(2000, 1000)
    assert pass_at_k(2000, 10, 1000) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_bootstrap_ci_of_a_constant_is_the_constant():
    assert bootstrap_ci([0.7] * 20) == pytest.approx((0.7, 0.7))


def test_bootstrap_ci_matches_the_normal_approximation():
    # 50 right of 100: mean 0.5, standard error sqrt(0.25 / 100) = 0.05, 95% about 0.5 -+ 1.96 * 0.05
    low, high = bootstrap_ci([1] * 50 + [0] * 50, resamples=2000)
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    narrow_low, narrow_high = bootstrap_ci([1] * 50 + [0] * 50, confidence=0.5, resamples=2000)
    assert low < narrow_low < 0.5 < narrow_high < high  # 50%: 0.5 -+ 0.674 * 0.05


def test_one_item_is_its_own_interval():
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    assert paired_difference([1.0], [0.0]) == {"diff": 1.0, "low": 1.0, "high": 1.0, "significant": True}


def test_bootstrap_ci_of_two_items_by_hand():
    # resampled means of [0, 1] are 0, 0.5, 1 with chances 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1
    assert bootstrap_ci([0, 1], resamples=4000) == (0.0, 1.0)


def test_bootstrap_is_seeded():
    scores = [0.11, 0.52, 0.93, 0.24, 0.75, 0.36, 0.87, 0.08, 0.69]
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)


def two_models(a_only: int, b_only: int, both: int, n: int = 100) -> tuple[list[int], list[int]]:
    """Per-item scores of models a and b: a_only items only a gets right, b_only only b, both both."""
    neither = n - a_only - b_only - both
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    return a, b


def test_two_points_on_100_items_is_not_a_win():
    a, b = two_models(a_only=6, b_only=4, both=64)  # 70% against 68%
    result = paired_difference(a, b)
    # differences: +1 six times, -1 four times: sd sqrt(0.1 - 0.02^2) = 0.316, standard error 0.0316
    assert result["diff"] == pytest.approx(0.02)
    assert result["low"] == pytest.approx(0.02 - 1.96 * 0.0316, abs=0.02)
    assert result["high"] == pytest.approx(0.02 + 1.96 * 0.0316, abs=0.02)
    assert result["significant"] is False


def test_thirty_points_on_100_items_is_a_win():
    a, b = two_models(a_only=35, b_only=5, both=45)  # 80% against 50%
    result = paired_difference(a, b)
    assert result["diff"] == pytest.approx(0.30) and result["low"] > 0.15 and result["significant"] is True
    assert paired_difference(b, a)["significant"] is True and paired_difference(b, a)["high"] < -0.15


def test_paired_difference_cancels_item_difficulty():
    # b is a shifted by 0.2 on every item: every paired resample differs by exactly 0.2
    a = [0.9, 0.1, 0.5, 0.7, 0.3]
    result = paired_difference(a, [x - 0.2 for x in a])
    assert result["low"] == pytest.approx(0.2) and result["high"] == pytest.approx(0.2)
    assert paired_difference(a, a) == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}


def test_paired_difference_needs_equal_lengths():
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


def test_summary_interval_uses_the_eval_config():
    items = [Example(input=str(i), output="y") for i in range(100)]
    predictions = ["y"] * 50 + ["n"] * 50
    _, summary = score_predictions(items, predictions, "exact", EvalConfig(confidence=0.9, bootstrap=2000))
    # 90%: 0.5 -+ 1.645 * 0.05
    assert summary["accuracy"] == 0.5 and summary["confidence"] == 0.9
    assert summary["ci"] == pytest.approx([0.418, 0.582], abs=0.02)


def test_ratio_ci_of_items_with_one_rate_is_that_rate():
    # 1 error in 2 calls on every episode: every resample pools to 1/2
    assert ratio_ci([1, 2, 3], [2, 4, 6]) == (0.5, 0.5)
    assert ratio_ci([0, 0], [0, 0]) == (0.0, 0.0)  # no calls at all: no errors


def test_ratio_ci_of_two_items_spans_their_own_rates():
    # resamples are {a,a}, {a,b}, {b,b}: rates 0/1, 1/3 and 2/2 -> the interval is [0, 1] by hand
    low, high = ratio_ci([0, 2], [1, 2], resamples=4000)
    assert (low, high) == (0.0, 1.0)


def test_ratio_ci_narrows_with_more_items_around_the_pooled_rate():
    # one error in every 4 calls over episodes of 1 or 7 calls: the pooled rate 1/4 by hand
    small = ratio_ci([0, 2] * 5, [1, 7] * 5, resamples=2000)
    large = ratio_ci([0, 2] * 50, [1, 7] * 50, resamples=2000)
    assert small[0] < large[0] <= 0.25 <= large[1] < small[1]
