"""Paired comparisons of models on the same cases: seed-averaged AUC and AUC differences with bootstrap CIs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidestream.errors import ConfigError
from slidestream.evaluation.compare import auc_over_seeds, paired_auc_difference
from slidestream.evaluation.metrics import roc_auc


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    noise = rng.random(n)
    return y, good, noise


def test_one_seed_is_roc_auc_to_the_last_digit():
    y, good, _ = _data()
    a, b = auc_over_seeds(y, good, n_bootstrap=500, seed=3), roc_auc(y, good, n_bootstrap=500, seed=3)
    assert (a["auc"], a["auc_ci_low"], a["auc_ci_high"]) == (b["auc"], b["auc_ci_low"], b["auc_ci_high"])
    assert a["auc_sd"] == 0.0 and a["auc_seeds"] == [b["auc"]]


def test_seeds_are_averaged_and_spread_is_reported():
    y, good, noise = _data()
    both = auc_over_seeds(y, np.stack([good, noise]), n_bootstrap=300)
    per = [roc_auc(y, p, n_bootstrap=0)["auc"] for p in (good, noise)]
    assert both["auc"] == pytest.approx(np.mean(per)) and both["auc_sd"] == pytest.approx(np.std(per, ddof=1))
    assert both["auc_ci_low"] < both["auc"] < both["auc_ci_high"]


def test_paired_difference_tells_a_real_gap_from_none():
    y, good, noise = _data(80)
    real = paired_auc_difference(y, good, noise, n_bootstrap=1000)
    manual = roc_auc(y, good, n_bootstrap=0)["auc"] - roc_auc(y, noise, n_bootstrap=0)["auc"]
    assert real["delta"] == pytest.approx(manual) and real["ci_low"] > 0 and real["p_not_better"] < 0.025
    same = paired_auc_difference(y, good, good, n_bootstrap=200)
    assert same["delta"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p_not_better"] == 1.0
    # reversed: the same gap with the sign flipped
    rev = paired_auc_difference(y, noise, good, n_bootstrap=1000)
    assert rev["delta"] == pytest.approx(-real["delta"]) and rev["ci_high"] == pytest.approx(-real["ci_low"])


def test_paired_intervals_are_narrower_than_unpaired_ones():
    # two strongly correlated models: pairing removes the shared case-to-case variation
    y, good, _ = _data(80, seed=1)
    rng = np.random.default_rng(5)
    better = np.clip(good + 0.08 * y + 0.02 * rng.random(80), 0, 1)
    d = paired_auc_difference(y, better, good, n_bootstrap=1000)
    a, b = roc_auc(y, better, n_bootstrap=1000, seed=1), roc_auc(y, good, n_bootstrap=1000, seed=2)
    assert d["ci_high"] - d["ci_low"] < 0.5 * ((a["auc_ci_high"] - a["auc_ci_low"]) + (b["auc_ci_high"] - b["auc_ci_low"]))


def test_undefined_and_bad_input():
    one = auc_over_seeds([1, 1, 1], [0.2, 0.5, 0.9])
    assert not one["auc_defined"] and math.isnan(one["auc"])
    assert not paired_auc_difference([0, 0], [0.1, 0.2], [0.3, 0.4])["defined"]
    with pytest.raises(ConfigError, match="seeds, n"):
        auc_over_seeds([0, 1], [[0.1, 0.2, 0.3]])
    with pytest.raises(ConfigError, match="probabilities"):
        paired_auc_difference([0, 1], [0.1, 2.0], [0.1, 0.2])
