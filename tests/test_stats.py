"""Paired statistics (`robustact.evaluation.stats`) against independent computations: McNemar's exact test against
scipy (or a binomial sum written out here), analytic cases, and the bootstrap interval against the normal
approximation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustact.errors import RobustactError
from robustact.evaluation.stats import PairedDifference, mean_std, paired_difference


def binomial_two_sided(k: int, m: int) -> float:
    """The exact McNemar p-value computed directly: 2·P[Binomial(m, 1/2) <= k], capped at 1."""
    try:
        from scipy.stats import binomtest
    except ImportError:
        return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)
    return binomtest(k, m, 0.5).pvalue


def pair(only_a: int, only_b: int, both: int, neither: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    order = np.random.default_rng(seed).permutation(len(a))
    return np.array(a)[order], np.array(b)[order]


@pytest.mark.parametrize("only_a, only_b", [(3, 7), (12, 5), (40, 61), (0, 9), (150, 150), (1, 0)])
def test_mcnemar_matches_an_exact_binomial_test(only_a, only_b):
    a, b = pair(only_a, only_b, both=200, neither=100)
    d = paired_difference(a, b, n_boot=200)
    assert (d.only_a, d.only_b, d.n) == (only_a, only_b, len(a))
    assert d.p_value == pytest.approx(binomial_two_sided(min(only_a, only_b), only_a + only_b), rel=1e-9)
    assert d.diff == pytest.approx((only_a - only_b) / len(a))


def test_identical_vectors():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
    d = paired_difference(a, a.copy())
    assert (d.diff, d.low, d.high, d.p_value, d.only_a, d.only_b) == (0.0, 0.0, 0.0, 1.0, 0, 0)
    assert not d.significant
    assert d.format() == "+0.0 [+0.0, +0.0] pts, McNemar p = 1.000"


@pytest.mark.parametrize("k", [1, 3, 5, 10, 20])
def test_a_dominates_b_on_k_examples(k):
    a, b = pair(k, 0, both=50, neither=50)
    d = paired_difference(torch.tensor(a).bool(), list(b.astype(bool)))  # tensors and bool lists are fine
    assert d.p_value == pytest.approx(min(1.0, 2 * 0.5**k))
    assert d.diff == pytest.approx(k / len(a)) and d.low >= 0 and d.high > 0
    assert d.significant == (d.low > 0)
    if k >= 10:  # P(no dominated example in a resample) is ~e^-k, far below 2.5%
        assert d.significant


def test_bootstrap_interval_covers_the_difference_with_the_normal_width():
    rng = np.random.default_rng(7)
    n = 2000
    a = (rng.random(n) < 0.52).astype(int)
    b = np.where(rng.random(n) < 0.8, a, (rng.random(n) < 0.45).astype(int))  # correlated, as two models are
    d = paired_difference(a, b, n_boot=10000, seed=3)
    diffs = a - b
    assert d.low <= diffs.mean() <= d.high
    normal = 2 * 1.959964 * math.sqrt(diffs.var(ddof=1) / n)
    assert (d.high - d.low) == pytest.approx(normal, rel=0.15)
    assert paired_difference(a, b, n_boot=10000, seed=3) == d  # deterministic with the seed
    wider = paired_difference(a, b, level=0.99, n_boot=10000, seed=3)
    assert wider.low <= d.low and wider.high >= d.high and wider.level == 0.99


def test_format_and_significance():
    d = PairedDifference(diff=-0.031, low=-0.049, high=-0.013, p_value=0.00104, n=1000, only_a=10, only_b=41,
                         level=0.95)
    assert d.significant
    assert d.format() == "\u22123.1 [\u22124.9, \u22121.3] pts, McNemar p = 0.001"
    assert "p < 0.001" in PairedDifference(0.1, 0.05, 0.15, 1e-6, 100, 10, 0, 0.95).format()
    assert not PairedDifference(0.01, -0.01, 0.03, 0.4, 100, 3, 2, 0.95).significant
    assert d.to_dict()["significant"] is True


def test_bad_input_is_one_line():
    with pytest.raises(RobustactError, match="same images: a has 3 examples, b has 2"):
        paired_difference([1, 0, 1], [1, 0])
    with pytest.raises(RobustactError, match="at least one"):
        paired_difference([], [])
    with pytest.raises(RobustactError, match="only 0/1"):
        paired_difference([1, 2], [1, 0])
    with pytest.raises(RobustactError, match="level"):
        paired_difference([1], [0], level=95)


def test_mean_std():
    assert mean_std([0.5]) == (0.5, None)
    mean, std = mean_std([0.48, 0.5, 0.55])
    assert mean == pytest.approx(np.mean([0.48, 0.5, 0.55]))
    assert std == pytest.approx(np.std([0.48, 0.5, 0.55], ddof=1))
    with pytest.raises(RobustactError, match="at least one value"):
        mean_std([])
