"""Slide-level metrics and plots."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score
from slidestream.errors import ConfigError
from slidestream.evaluation.metrics import binary_metrics, brier_score, expected_calibration_error, metrics_by_group, roc_auc, threshold_metrics
from slidestream.evaluation.multiclass import multiclass_metrics
from slidestream.evaluation.plots import plot_reliability, plot_roc
from slidestream.fileio import strict_json

PNG = b"\x89PNG\r\n\x1a\n"


def data(n=200, seed=0, sep=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = 1 / (1 + np.exp(-(sep * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, np.round(score, 2)  # rounding creates ties


def test_auc_matches_sklearn_with_ties():
    y, p = data()
    assert roc_auc(y, p, n_bootstrap=0)["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    y, p = data()
    a = roc_auc(y, p, n_bootstrap=500, seed=1)
    b = roc_auc(y, p, n_bootstrap=500, seed=1)
    c = roc_auc(y, p, n_bootstrap=500, seed=2)
    assert a == b
    assert a["auc_ci_low"] != c["auc_ci_low"]
    assert a["auc_ci_low"] < a["auc"] < a["auc_ci_high"]
    assert a["auc_bootstrap_used"] == 500
    # Interval width shrinks with more cases (roughly 1/sqrt(n)).
    y4, p4 = data(n=3200)
    w4 = roc_auc(y4, p4, n_bootstrap=500)
    assert (w4["auc_ci_high"] - w4["auc_ci_low"]) < 0.5 * (a["auc_ci_high"] - a["auc_ci_low"])


def test_one_class_input_gives_nan_with_flag_never_a_crash():
    y = np.ones(10, dtype=int)
    p = np.linspace(0, 1, 10)
    m = binary_metrics(y, p)
    assert math.isnan(m["auc"]) and m["auc_defined"] is False
    assert math.isnan(m["specificity"]) and m["sensitivity"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert binary_metrics([], [])["n"] == 0
    json.dumps(strict_json(m), allow_nan=False)


def test_threshold_metrics_against_counts_and_sklearn():
    y, p = data(seed=3)
    m = threshold_metrics(y, p, threshold=0.6)
    pred = p >= 0.6
    assert m["tp"] == np.sum(pred & (y == 1)) and m["fp"] == np.sum(pred & (y == 0))
    assert m["sensitivity"] == pytest.approx(np.mean(pred[y == 1]))
    assert m["specificity"] == pytest.approx(np.mean(~pred[y == 0]))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))


def test_brier_and_ece():
    y, p = data(seed=4)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    # All predictions 0.8, all positive: every case is in one bin with gap 0.2.
    assert expected_calibration_error(np.ones(50, int), np.full(50, 0.8))["ece"] == pytest.approx(0.2)
    # Labels drawn from the probabilities themselves: calibrated, so ECE is small.
    rng = np.random.default_rng(5)
    q = rng.random(50_000)
    yq = (rng.random(50_000) < q).astype(int)
    e = expected_calibration_error(yq, q, n_bins=10)
    assert e["ece"] < 0.02 and e["mce"] < 0.04
    # A shrunk (under-confident) version of the same probabilities is worse.
    assert expected_calibration_error(yq, 0.5 + 0.5 * (q - 0.5))["ece"] > 0.1


def test_binary_metrics_is_flat_and_jsonable():
    y, p = data(seed=6)
    m = binary_metrics(y, p, n_bootstrap=100)
    for key in ("auc", "auc_ci_low", "auc_ci_high", "balanced_accuracy", "sensitivity", "specificity",
                "brier", "ece", "n", "n_pos", "n_neg"):
        assert key in m
    assert all(isinstance(v, (int, float, bool)) for v in m.values())
    assert json.loads(json.dumps(m)) == pytest.approx(m)


def test_metrics_by_group_matches_subsets():
    y, p = data(n=300, seed=7)
    groups = np.array(["site_a", "site_b", "site_c"])[np.arange(300) % 3]
    y = y.copy()
    y[groups == "site_c"] = 0  # one site has only negatives
    out = metrics_by_group(y, p, groups, n_bootstrap=50)
    assert list(out) == ["site_a", "site_b", "site_c"]
    sel = groups == "site_a"
    assert out["site_a"] == binary_metrics(y[sel], p[sel], n_bootstrap=50)
    assert out["site_c"]["auc_defined"] is False and math.isnan(out["site_c"]["auc"])
    with pytest.raises(ConfigError):
        metrics_by_group(y, p, groups[:10])


def test_multiclass_metrics():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    probs[np.arange(300), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    m = multiclass_metrics(y, probs)
    assert m["macro_auc_ovr"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))


def test_plots_are_written_as_png(tmp_path):
    y, p = data(seed=9)
    for path in (plot_roc(y, p, tmp_path / "roc.png", n_bootstrap=50),
                 plot_reliability(y, p, tmp_path / "rel.png"),
                 plot_roc(np.zeros(5, int), np.linspace(0, 1, 5), tmp_path / "one.png")):
        data_ = path.read_bytes()
        assert data_.startswith(PNG) and len(data_) > 5000
    assert sorted(f.name for f in tmp_path.iterdir()) == ["one.png", "rel.png", "roc.png"]


def test_input_validation():
    with pytest.raises(ConfigError, match="0 and 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ConfigError):
        roc_auc([0, 1], [0.1, 1.2])
    with pytest.raises(ConfigError):
        roc_auc([0, 1], [0.1])


def test_top_label_ece_is_guo_et_al_and_differs_from_the_class1_ece():
    from slidestream.evaluation.metrics import top_label_calibration_error

    # p = 0.3 with half positive and p = 0.7 with 90 % positive: class-1 bins both miss by 0.2, but the top-label
    # confidence is 0.7 in both groups, right half the time and 90 % of the time: on average exactly right.
    y = np.array([1] * 5 + [0] * 5 + [1] * 9 + [0])
    p = np.array([0.3] * 10 + [0.7] * 10)
    assert expected_calibration_error(y, p)["ece_class1"] == pytest.approx(0.2)
    assert top_label_calibration_error(y, p)["ece_top_label"] == pytest.approx(0.0, abs=1e-12)
    # direct definition on random data: bins of max(p, 1 - p), accuracy of the p >= 0.5 call
    rng = np.random.default_rng(8)
    q = rng.random(500)
    yq = (rng.random(500) < q**2).astype(int)
    conf, right = np.maximum(q, 1 - q), ((q >= 0.5) == (yq == 1))
    bins = np.minimum((conf * 10).astype(int), 9)
    expected = sum(np.sum(bins == b) / 500 * abs(right[bins == b].mean() - conf[bins == b].mean())
                   for b in np.unique(bins))
    assert top_label_calibration_error(yq, q)["ece_top_label"] == pytest.approx(expected)
    # (n, K) input: the arg-max class and its probability
    probs = np.stack([1 - q, q], axis=1)
    assert top_label_calibration_error(yq, probs)["ece_top_label"] == pytest.approx(expected)
    m = binary_metrics(yq, q, n_bootstrap=0)
    assert m["ece"] == m["ece_class1"] and m["ece_top_label"] == pytest.approx(expected)
