"""Multi-class metrics against scikit-learn computed independently, and their plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion

from slidestream.errors import ConfigError
from slidestream.evaluation import multiclass_metrics, plot_confusion_matrix, plot_roc_ovr

PNG = b"\x89PNG\r\n\x1a\n"


def data(n=120, k=4, seed=0, signal=0.6):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    probs[np.arange(n), y] += signal * rng.random(n)
    return y, probs / probs.sum(1, keepdims=True)


def test_macro_auc_is_the_mean_of_one_vs_rest_aucs():
    y, probs = data()
    m = multiclass_metrics(y, probs, class_names=["A", "B", "C", "D"])
    per_class = [roc_auc_score((y == c).astype(int), probs[:, c]) for c in range(4)]
    assert m["macro_auc_ovr"] == pytest.approx(np.mean(per_class), abs=1e-12)
    for name, auc in zip("ABCD", per_class):
        assert m["per_class"][name]["auc"] == pytest.approx(auc, abs=1e-12)
    assert m["macro_auc_ovr"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert m["accuracy"] == pytest.approx(np.mean(y == probs.argmax(1)))
    assert m["confusion_matrix"] == sk_confusion(y, probs.argmax(1), labels=range(4)).tolist()
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=range(4)))
    assert m["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(4)[y]) ** 2, 1)))
    cm = np.array(m["confusion_matrix"])
    for c, name in enumerate("ABCD"):
        assert m["per_class"][name]["recall"] == pytest.approx(cm[c, c] / cm[c].sum())
        assert m["per_class"][name]["precision"] == pytest.approx(cm[c, c] / cm[:, c].sum())
        assert m["per_class"][name]["n"] == int(np.sum(y == c))


def test_bootstrap_intervals_hold_the_estimate_and_repeat_with_the_seed():
    y, probs = data(seed=3)
    m = multiclass_metrics(y, probs, n_bootstrap=300, seed=5)
    assert m["macro_auc_ci_low"] < m["macro_auc_ovr"] < m["macro_auc_ci_high"]
    for c in m["per_class"].values():
        assert c["auc_ci_low"] < c["auc"] < c["auc_ci_high"]
    assert multiclass_metrics(y, probs, n_bootstrap=300, seed=5) == m
    assert multiclass_metrics(y, probs, n_bootstrap=300, seed=6)["macro_auc_ci_low"] != m["macro_auc_ci_low"]
    assert math.isnan(multiclass_metrics(y, probs)["macro_auc_ci_low"])  # no bootstrap: no interval


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_a_class_absent_from_the_labels_is_left_out_of_the_macro_mean():
    y, probs = data(k=3, seed=4)
    y = np.where(y == 2, 0, y)  # no case of class 2
    m = multiclass_metrics(y, probs, class_names=["A", "B", "C"])
    assert math.isnan(m["per_class"]["C"]["auc"]) and math.isnan(m["per_class"]["C"]["recall"])
    aucs = [roc_auc_score((y == c).astype(int), probs[:, c]) for c in (0, 1)]
    assert m["macro_auc_ovr"] == pytest.approx(np.mean(aucs))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    one = multiclass_metrics(np.zeros(5, int), probs[:5])
    assert math.isnan(one["macro_auc_ovr"]) and one["auc_defined"] is False


@pytest.mark.parametrize("y, probs", [([0, 3], np.full((2, 3), 1 / 3)), ([0, 1], np.full((2, 3), 2.0)),
                                      ([0, 1, 2], np.full((2, 3), 1 / 3)), ([0.5, 1], np.full((2, 3), 1 / 3))])
def test_bad_inputs_are_refused(y, probs):
    with pytest.raises(ConfigError):
        multiclass_metrics(y, probs)


def test_confusion_and_one_vs_rest_roc_plots(tmp_path):
    y, probs = data(k=3, seed=7)
    names = ["LUAD", "LUSC", "MESO"]
    cm = plot_confusion_matrix(y, probs.argmax(1), tmp_path / "confusion.png", class_names=names)
    roc = plot_roc_ovr(y, probs, tmp_path / "roc.png", class_names=names)
    absent = plot_roc_ovr(np.zeros(6, int), probs[:6], tmp_path / "one.png", class_names=names)
    for path in (cm, roc, absent):
        data_ = path.read_bytes()
        assert data_.startswith(PNG) and len(data_) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "one.png", "roc.png"]
