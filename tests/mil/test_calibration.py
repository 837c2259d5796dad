"""Temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from slidestream.errors import ConfigError
from slidestream.mil.calibration import apply_temperature, fit_temperature, negative_log_likelihood


def sample(n, k, seed=0):
    """Calibrated logits and labels drawn from them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, size=(n, k))
    p = softmax(z, axis=1)
    y = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)  # inverse-CDF draw per row
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 3.0])
def test_recovers_the_temperature_that_miscalibrated_the_logits(true_t):
    z, y = sample(20_000, 3)
    t = fit_temperature(z * true_t, y)  # over-confident (3.0) or under-confident (0.5) logits
    assert t == pytest.approx(true_t, rel=0.08)
    assert negative_log_likelihood(z * true_t, y, t) < negative_log_likelihood(z * true_t, y, 1.0)


def test_binary_log_odds_input_equals_two_column_logits():
    z, y = sample(5000, 2, seed=1)
    log_odds = (z[:, 1] - z[:, 0]) * 2.5
    t1 = fit_temperature(log_odds, y)
    t2 = fit_temperature(np.stack([np.zeros_like(log_odds), log_odds], 1), y)
    assert t1 == pytest.approx(t2, rel=1e-5)
    assert t1 == pytest.approx(2.5, rel=0.1)


def test_apply_temperature_keeps_ranking_and_sums_to_one():
    z, _ = sample(500, 4, seed=2)
    p = apply_temperature(z, 2.0)
    assert np.allclose(p.sum(1), 1)
    assert np.array_equal(p.argmax(1), z.argmax(1))
    assert np.allclose(p, softmax(z / 2.0, axis=1))
    assert apply_temperature(np.array([0.0, 2.0]), 1.0).shape == (2, 2)


def test_invalid_inputs():
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ConfigError):
        fit_temperature(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ConfigError):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ConfigError):
        apply_temperature(np.zeros((2, 2)), 0.0)
