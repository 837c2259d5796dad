"""Inference: the ensemble's temperature applies to its output (after averaging), per-member inputs, every class's
probability and per-class tile scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.evaluation.metrics import roc_auc
from slidestream.mil.heads import MILEnsemble, get_head
from slidestream.mil.inference import predict, predict_classes, predict_ensemble, predict_logits
from slidestream.mil.standardize import FeatureNorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def probe(slope: float, intercept: float):
    """A linear probe on the bag mean of 1-D features with class-1 log-odds ``slope * mean + intercept``."""
    head = get_head("mean_pool", 1, 2, hidden_dim=0)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[0.0], [slope]]))
        head.classifier.bias.copy_(torch.tensor([0.0, intercept]))
    return head.eval()


def test_temperature_applies_after_averaging_so_the_ranking_is_kept():
    # member A: log-odds = mean; member B: log-odds = -0.4706 * mean + 0.8824. Bag 1 (mean 4): A +4, B -1;
    # bag 2 (mean 0.6): both +0.6. Averaged probabilities rank bag 2 above bag 1; tempering each member first
    # (T = 4) would rank bag 1 above bag 2.
    a, b = probe(1.0, 0.0), probe(-1.6 / 3.4, 0.6 + 0.6 * 1.6 / 3.4)
    bags = [np.full((3, 1), 4.0, np.float32), np.full((5, 1), 0.6, np.float32)]
    ens = MILEnsemble([a, b], temperature=4.0)
    p_plain, _, _ = predict_ensemble(ens, bags, temperature=1.0)
    p_cal, spread, _ = predict_ensemble(ens, bags)
    member = np.array([[1 / (1 + np.exp(-z)) for z in (4.0, -1.0)], [1 / (1 + np.exp(-0.6))] * 2])
    np.testing.assert_allclose(p_plain, member.mean(1), atol=1e-6)
    odds = np.log(member.mean(1)) - np.log(1 - member.mean(1))
    np.testing.assert_allclose(p_cal, 1 / (1 + np.exp(-odds / 4.0)), atol=1e-6)
    np.testing.assert_allclose(spread, member.std(1), atol=1e-6)  # the spread is of uncalibrated members
    per_member = np.mean([[1 / (1 + np.exp(-z / 4.0)) for z in (4.0, -1.0)], [1 / (1 + np.exp(-0.15))] * 2], 1)
    assert per_member[0] > per_member[1] and p_cal[0] < p_cal[1]
    y = [0, 1]
    assert roc_auc(y, p_cal, n_bootstrap=0)["auc"] == roc_auc(y, p_plain, n_bootstrap=0)["auc"] == 1.0
    p_predict, _ = predict(ens, bags)
    np.testing.assert_allclose(p_predict, p_cal, atol=1e-6)


def test_one_member_ensemble_is_plain_temperature_scaling():
    torch.manual_seed(0)
    head = get_head("abmil", 4, 2, hidden_dim=8, attn_dim=4).eval()
    head.temperature = 2.5
    bags = [np.random.default_rng(i).standard_normal((7, 4)).astype(np.float32) for i in range(3)]
    logits, _ = predict_logits(head, bags)
    expected = torch.softmax(torch.from_numpy(logits).double() / 2.5, 1)[:, 1].numpy()
    p, std, _ = predict_ensemble(head, bags)
    np.testing.assert_allclose(p, expected, atol=1e-6)
    assert np.all(std == 0)
    np.testing.assert_allclose(predict(MILEnsemble([head], temperature=2.5), bags)[0], expected, atol=1e-6)


def test_feature_norms_standardise_each_members_input():
    a, b = probe(1.0, 0.0), probe(1.0, 0.0)
    bags = [np.full((4, 1), 10.0, np.float32)]
    norms = [FeatureNorm(np.array([10.0], np.float32), np.array([1.0], np.float32)),
             FeatureNorm(np.array([8.0], np.float32), np.array([2.0], np.float32))]
    p, _, _ = predict_ensemble([a, b], bags, feature_norms=norms)
    assert p[0] == pytest.approx(0.5 * (0.5 + 1 / (1 + np.exp(-1.0))), abs=1e-6)
    logits, _ = predict_logits(a, bags, feature_norms=norms[1:])
    assert logits[0, 1] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="normalisers"):
        predict_ensemble([a, b], bags, feature_norms=norms[:1])


def _three_class_members(name: str, n: int = 3):
    kw = {"clam_mb": dict(hidden_dim=8, attn_dim=4), "abmil": dict(hidden_dim=8, attn_dim=4),
          "dsmil": dict(query_dim=4), "mean_pool": dict(hidden_dim=8)}[name]
    members = []
    for seed in range(n):
        torch.manual_seed(seed)
        members.append(get_head(name, 5, 3, **kw).eval())
    return members


@pytest.mark.parametrize("name", ["clam_mb", "abmil", "dsmil", "mean_pool"])
def test_predict_classes_gives_every_class_before_and_after_the_temperature(name):
    members = _three_class_members(name)
    bags = [np.random.default_rng(10 + i).standard_normal((int(9 + i), 5)).astype(np.float32) for i in range(3)]
    ens = MILEnsemble(members, temperature=0.7)
    pred = predict_classes(ens, bags)
    with torch.no_grad():
        outs = [[m(torch.from_numpy(b)) for m in members] for b in bags]
    member = np.array([[torch.softmax(o.logits.double(), 0).numpy() for o in bag] for bag in outs])  # (n, M, K)
    mean = member.mean(1)
    np.testing.assert_allclose(pred.probability, mean, atol=1e-6)
    tempered = np.exp(np.log(mean) / 0.7)
    np.testing.assert_allclose(pred.calibrated, tempered / tempered.sum(1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(pred.spread, member.std(1), atol=1e-6)
    assert pred.probability.shape == pred.calibrated.shape == pred.spread.shape == (3, 3)
    # predict_ensemble is the class-1 column of the same numbers
    p1, s1, scores = predict_ensemble(ens, bags)
    np.testing.assert_allclose(p1, pred.calibrated[:, 1], atol=1e-12)
    np.testing.assert_allclose(s1, pred.spread[:, 1], atol=1e-12)
    if name == "abmil":
        assert pred.class_scores is None and ens.class_score_kind is None
    else:
        expected = [np.mean([o.extras["class_scores"].numpy() for o in bag], 0) for bag in outs]
        assert ens.class_score_kind == ("probability" if name == "mean_pool" else "attention")
        for got, want, b in zip(pred.class_scores, expected, bags):
            assert got.shape == (len(b), 3)
            np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True)
        if name == "dsmil":  # no stream, so no attention, for the negative class
            assert all(np.isnan(c[:, 0]).all() and np.isfinite(c[:, 1:]).all() for c in pred.class_scores)
