"""The leaderboard's table: rows over seeds, paired comparisons with the baseline, and the one-line reading."""

from __future__ import annotations

import numpy as np
import pytest

from slidestream.evaluation.compare import paired_auc_difference
from slidestream.evaluation.metrics import roc_auc
from slidestream.pipeline.leaderboard_table import leaderboard_table, summary_line


def _pair(head, seed, probs, labels, types, froc=0.5):
    return {"encoder": "e", "head": head, "seed": seed, "train_seconds": 2.0 + seed, "froc": {"froc": froc,
            "defined": True}, "metrics": {"balanced_accuracy": 0.5 + seed / 10, "ece_class1": 0.1,
                                          "ece_top_label": 0.2, "brier": 0.2},
            "predictions": [{"slide_id": f"s{i:02d}", "label": int(y), "lesion_type": t,
                             "calibrated_probability": float(p)} for i, (p, y, t) in enumerate(zip(probs, labels,
                                                                                                   types))]}


def test_rows_are_seed_means_with_paired_gaps():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 16)
    types = [""] * 20 + ["macro"] * 8 + ["micro"] * 6 + ["itc"] * 2
    micro = np.array([t == "micro" for t in types])
    pairs = []
    for seed in (0, 1):
        attention = np.clip(0.3 * labels + 0.7 * rng.random(36), 0, 1)
        mean = np.where(micro, rng.random(36) * 0.5, attention)  # mean pooling loses the micro-metastases
        pairs += [_pair("abmil", seed, attention, labels, types), _pair("mean_pool", seed, mean, labels, types, 0.3)]
    rows, comp = leaderboard_table(pairs, baseline="mean_pool", n_bootstrap=300)
    by = {r["head"]: r for r in rows}
    assert [r["rank"] for r in rows] == [1, 2] and by["abmil"]["seeds"] == 2
    aucs = [roc_auc(labels, [p["calibrated_probability"] for p in r["predictions"]], n_bootstrap=0)["auc"]
            for r in pairs if r["head"] == "abmil"]
    assert by["abmil"]["auc"] == pytest.approx(np.mean(aucs)) and by["abmil"]["auc_sd"] == pytest.approx(
        np.std(aucs, ddof=1))
    assert by["abmil"]["train_seconds"] == 2.5 and by["abmil"]["balanced_accuracy_sd"] == pytest.approx(
        np.std([0.5, 0.6], ddof=1))
    assert (by["abmil"]["n_macro"], by["abmil"]["n_micro"], by["abmil"]["n_itc"]) == (8, 6, 2)
    # micro AUC: the micro slides against the 20 normal ones only
    keep = (labels == 0) | micro
    a = np.stack([[p["calibrated_probability"] for p in r["predictions"]] for r in pairs if r["head"] == "abmil"])
    b = np.stack([[p["calibrated_probability"] for p in r["predictions"]] for r in pairs if r["head"] == "mean_pool"])
    gap = paired_auc_difference(labels[keep], a[:, keep], b[:, keep], n_bootstrap=300)
    assert comp["e/abmil"]["micro"] == gap and by["abmil"]["delta_auc_micro_vs_baseline"] == gap["delta"]
    assert gap["ci_low"] > 0 and np.isnan(by["mean_pool"]["delta_auc_vs_baseline"])
    assert by["abmil"]["froc"] == 0.5 and by["mean_pool"]["froc"] == 0.3
    text = summary_line(rows, comp)
    assert text.startswith("best: e + abmil") and "a real gap" in text and "6 micro-metastasis slides" in text
    no_base, none = leaderboard_table(pairs, baseline=None, n_bootstrap=0)
    assert none == {} and np.isnan(no_base[0]["auc_ci_low"])


def test_summary_line_reads_the_gap_and_its_interval():
    rows = [{"encoder": "e", "head": "abmil", "auc": 0.9, "auc_ci_low": 0.8, "auc_ci_high": 0.97, "froc": 0.5,
             "auc_micro": 0.85, "n_micro": 6},
            {"encoder": "e", "head": "mean_pool", "auc": 0.7, "auc_ci_low": 0.5, "auc_ci_high": 0.85, "froc": 0.2,
             "auc_micro": 0.55, "n_micro": 6}]
    real = {"e/abmil": {"micro": {"delta": 0.3, "ci_low": 0.1, "ci_high": 0.5}}}
    text = summary_line(rows, real)
    assert text.startswith("best: e + abmil, slide AUC 0.900 [0.800–0.970], FROC 0.500")
    assert "6 micro-metastasis slides abmil reaches AUC 0.850 against 0.550 for mean_pool" in text
    assert text.endswith("Δ 0.300 [0.100–0.500], a real gap")
    unsure = {"e/abmil": {"micro": {"delta": 0.3, "ci_low": -0.1, "ci_high": 0.5}}}
    assert summary_line(rows, unsure).endswith("a gap the CI cannot tell from 0")


