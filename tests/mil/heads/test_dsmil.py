"""DSMIL against its reference equations (binli123/dsmil-wsi ``dsmil.py``, ``train_tcga.py``), re-derived in NumPy
with the head's own weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.mil.heads import get_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, Q = 6, 4


def w(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce(z, y):
    """Mean binary cross-entropy of logits ``z`` against 0/1 targets ``y`` (per-entry mean, as BCEWithLogitsLoss)."""
    z, y = np.asarray(z, float), np.asarray(y, float)
    return float(np.mean(-(y * np.log(sigmoid(z)) + (1 - y) * np.log(1 - sigmoid(z)))))


def reference(head, x: np.ndarray, passing_v: bool = False):
    """The reference forward: instance logits c (N, C), bag logits (C,), attention A (N, C)."""
    c = x @ w(head.instance_classifier.weight).T + w(head.instance_classifier.bias)
    l1, l2 = head.query[0], head.query[2]
    qx = np.tanh(np.maximum(x @ w(l1.weight).T + w(l1.bias), 0) @ w(l2.weight).T + w(l2.bias))
    m = c.argmax(axis=0)
    s = qx @ qx[m].T / np.sqrt(Q)
    a = np.exp(s - s.max(axis=0)) / np.exp(s - s.max(axis=0)).sum(axis=0)
    v = x
    if passing_v:
        lin = head.value[1]
        v = np.maximum(x @ w(lin.weight).T + w(lin.bias), 0)
    b = a.T @ v  # (C, D)
    conv_w, conv_b = w(head.bag_classifier.weight), w(head.bag_classifier.bias)  # (C, C, D), (C,)
    bag = np.einsum("ocd,cd->o", conv_w, b) + conv_b
    return c, bag, a


@pytest.mark.parametrize("passing_v", [False, True])
def test_binary_forward_and_loss_match_the_reference(passing_v):
    torch.manual_seed(0)
    head = get_head("dsmil", D, 2, query_dim=Q, passing_v=passing_v).eval()
    x = np.random.default_rng(0).standard_normal((9, D))
    out = head(torch.from_numpy(x).float())
    c, bag, a = reference(head, x, passing_v)
    assert head.bag_classifier.weight.shape == (1, 1, D)  # one output for a binary task
    np.testing.assert_allclose(w(out.logits), [0.0, bag[0]], atol=1e-5)
    np.testing.assert_allclose(w(out.instance_scores), a[:, 0], atol=1e-6)
    np.testing.assert_allclose(w(out.extras["max_instance_logits"]), c.max(axis=0), atol=1e-6)
    # softmax([0, s]) is sigmoid(s), so probabilities downstream are the reference's sigmoid output
    assert torch.softmax(out.logits, 0)[1].item() == pytest.approx(sigmoid(bag[0]), abs=1e-6)
    for y in (0, 1):
        expected = 0.5 * bce(bag, [y]) + 0.5 * bce(c.max(axis=0), [y])
        assert head.loss(out, y).item() == pytest.approx(expected, abs=1e-5)
        # and the cross-entropy of [0, s] is the BCE of s
        ce = torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([y])).item()
        assert ce == pytest.approx(bce(bag, [y]), abs=1e-5)


def test_three_classes_use_sigmoids_with_class_zero_as_the_all_zero_target():
    torch.manual_seed(1)
    head = get_head("dsmil", D, 3, query_dim=Q).eval()
    x = np.random.default_rng(1).standard_normal((11, D))
    out = head(torch.from_numpy(x).float())
    c, bag, a = reference(head, x)
    assert c.shape == (11, 2) and bag.shape == (2,)
    np.testing.assert_allclose(w(out.logits), [0.0, *bag], atol=1e-5)
    np.testing.assert_allclose(w(out.extras["attention"]), a, atol=1e-6)
    targets = {0: [0, 0], 1: [1, 0], 2: [0, 1]}
    for y, t in targets.items():
        expected = 0.5 * bce(bag, t) + 0.5 * bce(c.max(axis=0), t)
        assert head.loss(out, y).item() == pytest.approx(expected, abs=1e-5)
    # the Conv1d bag classifier mixes classes: changing class 1's pooled vector moves class 2's logit
    assert torch.count_nonzero(head.bag_classifier.weight[1, 0]) > 0


def test_mean_combination_averages_the_two_streams_probabilities():
    torch.manual_seed(2)
    bag_only = get_head("dsmil", D, 2, query_dim=Q).eval()
    torch.manual_seed(2)
    mean = get_head("dsmil", D, 2, query_dim=Q, combine="mean").eval()
    x = np.random.default_rng(2).standard_normal((8, D)) * 3
    c, bag, _ = reference(mean, x)
    out = mean(torch.from_numpy(x).float())
    p = torch.softmax(out.logits.double(), 0)[1].item()
    assert p == pytest.approx(0.5 * (sigmoid(bag[0]) + sigmoid(c.max())), abs=1e-6)
    # training sees the same two streams whatever the test-time combination
    torch.testing.assert_close(mean.loss(out, 1), bag_only.loss(bag_only(torch.from_numpy(x).float()), 1))
    # saturated streams stay finite
    with torch.no_grad():
        mean.instance_classifier.bias.fill_(200.0)
    assert torch.isfinite(mean(torch.from_numpy(x).float()).logits).all()


def test_weights_start_orthogonal_with_zero_biases_and_values_are_the_features():
    torch.manual_seed(3)
    head = get_head("dsmil", 32, 2)
    first = head.query[0].weight  # (128, 32): orthonormal columns
    torch.testing.assert_close(first.T @ first, torch.eye(32), atol=1e-5, rtol=0)
    second = head.query[2].weight
    torch.testing.assert_close(second @ second.T, torch.eye(128), atol=1e-5, rtol=0)
    assert all(torch.all(m.bias == 0) for m in (head.query[0], head.query[2], head.instance_classifier,
                                                  head.bag_classifier))
    assert isinstance(head.value, torch.nn.Identity)  # the reference's passing_v=False
    with pytest.raises(ConfigError):
        get_head("dsmil", D, combine="max")


def test_per_class_tile_scores_are_the_attention_of_each_positive_class():
    torch.manual_seed(3)
    head = get_head("dsmil", D, 4, query_dim=Q).eval()
    x = np.random.default_rng(2).standard_normal((11, D)).astype(np.float32)
    with torch.no_grad():
        out = head(torch.from_numpy(x))
    scores = w(out.extras["class_scores"])
    _, _, a = reference(head, x.astype(np.float64))
    assert scores.shape == (11, 4) and head.class_score_kind == "attention"
    assert np.isnan(scores[:, 0]).all()  # the negative class has no stream
    np.testing.assert_allclose(scores[:, 1:], a, atol=1e-5)
