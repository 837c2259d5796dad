"""CLAM-SB/MB against the reference equations (mahmoodlab/CLAM ``models/model_clam.py``, ``utils/core_utils.py``,
smooth-topk ``SmoothTop1SVM``), re-derived in NumPy with the head's own weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.mil.heads import get_head
from slidestream.mil.heads.clam import smooth_top1_svm_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D, H, A = 6, 8, 5


def w(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def lin(layer, x):
    return x @ w(layer.weight).T + w(layer.bias)


def ce(logits, y):
    z = np.asarray(logits, float)
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[y])


def svm(logits, y, alpha=1.0, tau=1.0):
    """SmoothTop1SVM of one sample (Berrada et al. 2018, smooth-topk): smooth unless top1 - top2 >= tau ln 1000."""
    x = np.asarray(logits, float)
    delta = alpha * (np.arange(len(x)) != y)
    top = np.sort(x)[::-1]
    if top[0] - top[1] >= tau * math.log(1000):
        return float((x + delta).max() - x[y])
    s = (x + delta - x[y]) / tau
    return float(tau * (np.log(np.exp(s - s.max()).sum()) + s.max()))


def reference(head, x):
    """h (N, H), raw attention (N, B), softmaxed attention (N, B), slide logits (K,)."""
    h = np.maximum(lin(head.features[0], x), 0)
    att = head.attention
    raw = lin(att.score, np.tanh(lin(att.value, h)) * (1 / (1 + np.exp(-lin(att.gate, h)))))
    a = np.exp(raw - raw.max(0)) / np.exp(raw - raw.max(0)).sum(0)
    pooled = a.T @ h  # (B, H)
    if hasattr(head, "classifier"):
        logits = lin(head.classifier, pooled[0])
    else:
        logits = (pooled * w(head.class_weight)).sum(1) + w(head.class_bias)
    return h, raw, a, logits


def inst_terms(head, h, a, label, k, loss):
    terms = []
    for c in range(head.n_classes):
        col = a[:, c if a.shape[1] > 1 else 0]
        order = np.argsort(-col, kind="stable")
        clf = head.instance_classifiers[c]
        if c == label:
            idx = np.concatenate([order[:k], order[::-1][:k]])
            tgt = [1] * k + [0] * k
        elif head.subtyping:
            idx, tgt = order[:k], [0] * k
        else:
            continue
        z = lin(clf, h[idx])
        terms.append(np.mean([loss(z[i], tgt[i]) for i in range(len(idx))]))
    return float(np.mean(terms))


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
@pytest.mark.parametrize("inst_loss", ["svm", "ce"])
@pytest.mark.parametrize("n", [12, 5])  # n = 5 lies in [k, 2k): the most and least attended sets overlap
def test_forward_and_loss_match_the_reference(name, inst_loss, n):
    torch.manual_seed(n)
    k = 3
    head = get_head(name, D, 2, hidden_dim=H, attn_dim=A, k_sample=k, inst_loss=inst_loss).eval()
    x = np.random.default_rng(n).standard_normal((n, D))
    out = head(torch.from_numpy(x).float())
    h, raw, a, logits = reference(head, x)
    np.testing.assert_allclose(w(out.logits), logits, atol=1e-5)
    np.testing.assert_allclose(w(out.instance_scores), a[:, -1 if name == "clam_mb" else 0], atol=1e-6)
    for label in (0, 1):
        inst = inst_terms(head, h, a, label, k, svm if inst_loss == "svm" else ce)
        expected = 0.7 * ce(logits, label) + 0.3 * inst
        assert head.loss(out, label).item() == pytest.approx(expected, abs=1e-5)
        assert head.instance_loss(out, label).item() == pytest.approx(inst, abs=1e-5)


def test_subtyping_averages_in_class_and_out_of_class_terms():
    torch.manual_seed(7)
    head = get_head("clam_mb", D, 3, hidden_dim=H, attn_dim=A, k_sample=2, subtyping=True).eval()
    x = np.random.default_rng(7).standard_normal((10, D))
    out = head(torch.from_numpy(x).float())
    h, _, a, logits = reference(head, x)
    for label in range(3):
        expected = 0.7 * ce(logits, label) + 0.3 * inst_terms(head, h, a, label, 2, svm)
        assert head.loss(out, label).item() == pytest.approx(expected, abs=1e-5)


def test_bags_smaller_than_k_get_no_instance_term():
    torch.manual_seed(0)
    head = get_head("clam_sb", D, 2, hidden_dim=H, attn_dim=A).eval()  # k_sample = 8
    out = head(torch.randn(7, D))
    assert head.instance_loss(out, 1).item() == 0.0
    ce_bag = torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([1]))
    torch.testing.assert_close(head.loss(out, 1), 0.7 * ce_bag)
    assert head.instance_loss(head(torch.randn(8, D)), 1).item() > 0


def test_smooth_top1_svm_matches_the_formula_on_both_branches():
    x = torch.tensor([[0.3, -0.2], [2.0, -6.0], [-4.0, 4.0]])
    y = torch.tensor([0, 1, 1])
    expected = np.mean([svm(r, t) for r, t in zip(x.numpy(), y.numpy())])
    assert smooth_top1_svm_loss(x, y).item() == pytest.approx(expected, abs=1e-6)
    # margin 8 > ln 1000: the hard hinge, which is 0 for the right class ahead and 1 + 8 when behind
    assert smooth_top1_svm_loss(torch.tensor([[8.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(0.0)
    assert smooth_top1_svm_loss(torch.tensor([[8.0, 0.0]]), torch.tensor([1])).item() == pytest.approx(9.0)
    # binary smooth branch: softplus(1 - margin)
    assert smooth_top1_svm_loss(torch.tensor([[1.5, 0.5]]), torch.tensor([0])).item() == pytest.approx(
        math.log1p(math.exp(0.0)))
    three = torch.tensor([[0.1, 0.4, -0.3]])
    assert smooth_top1_svm_loss(three, torch.tensor([2])).item() == pytest.approx(svm([0.1, 0.4, -0.3], 2))


def test_dropout_sits_after_fc_and_in_both_attention_branches():
    torch.manual_seed(0)
    head = get_head("clam_sb", D, 2, hidden_dim=H, attn_dim=A, dropout=0.4)
    assert isinstance(head.features[2], torch.nn.Dropout) and head.features[2].p == 0.4
    assert head.attention.drop_value.p == 0.4 and head.attention.drop_gate.p == 0.4
    # in training mode the two branch masks are independent: zeroing the gate's dropout changes the scores
    head.train()
    h = torch.randn(50, H)
    torch.manual_seed(1)
    both = head.attention(h)
    head.attention.drop_gate.p = 0.0
    torch.manual_seed(1)
    value_only = head.attention(h)
    assert not torch.allclose(both, value_only)
    with pytest.raises(ConfigError):
        get_head("clam_sb", D, inst_loss="hinge")
    with pytest.raises(ConfigError):
        get_head("clam_sb", D, bag_weight=1.5)
