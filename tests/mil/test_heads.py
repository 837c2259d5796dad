"""MIL heads: shapes, registry, invariances, losses, ensembles (equation-level checks are in test_references.py)."""

from __future__ import annotations


import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.mil.heads import MILEnsemble, MILHead, get_head, list_heads

D = 32
SMALL = {
    "abmil": dict(hidden_dim=32, attn_dim=16),
    "clam_sb": dict(hidden_dim=32, attn_dim=16),
    "clam_mb": dict(hidden_dim=32, attn_dim=16),
    "transmil": dict(hidden_dim=32, n_heads=4),
    "dsmil": dict(query_dim=16),
    "mean_pool": dict(hidden_dim=32),
    "max_pool": dict(hidden_dim=32),
}
ATTENTION_HEADS = ["abmil", "clam_sb", "clam_mb", "dsmil"]
ORDER_FREE_HEADS = ["abmil", "clam_sb", "clam_mb", "dsmil", "mean_pool", "max_pool"]



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def make(name: str, n_classes: int = 2, seed: int = 0, **kw) -> MILHead:
    torch.manual_seed(seed)
    return get_head(name, D, n_classes, **{**SMALL[name], **kw})


def test_registry_lists_every_head():
    assert set(list_heads()) == set(SMALL)
    assert list_heads() == sorted(list_heads())


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_output_shapes_and_finiteness(name, n):
    head = make(name).eval()
    out = head(torch.randn(n, D))
    assert out.logits.shape == (2,)
    assert out.instance_scores.shape == (n,)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.instance_scores).all()
    loss = head.loss(out, 1)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_three_classes(name):
    head = make(name, n_classes=3).eval()
    out = head(torch.randn(40, D))
    assert out.logits.shape == (3,)
    assert out.instance_scores.shape == (40,)
    if "class_scores" in out.extras:
        assert out.extras["class_scores"].shape == (40, 3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_parameter_gets_a_gradient(name):
    head = make(name).train()
    bag = torch.randn(60, D)
    for label in (0, 1):
        out = head(bag)
        head.loss(out, label).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("name", ATTENTION_HEADS)
def test_attention_scores_are_a_distribution(name):
    out = make(name).eval()(torch.randn(123, D))
    assert (out.instance_scores >= 0).all()
    assert out.instance_scores.sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", ORDER_FREE_HEADS)
def test_permutation_invariance(name):
    head = make(name).eval()
    bag = torch.randn(80, D)
    perm = torch.randperm(80)
    a, b = head(bag), head(bag[perm])
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.instance_scores[perm], b.instance_scores, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["abmil", "transmil", "mean_pool", "max_pool"])
def test_default_loss_is_the_cross_entropy_of_the_slide_logits(name):
    head = make(name)
    out = head(torch.randn(30, D))
    for label in (0, 1, torch.tensor(1)):
        expected = torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([int(label)]))
        torch.testing.assert_close(head.loss(out, label), expected)


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb", "dsmil"])
def test_heads_with_instance_terms_differ_from_plain_cross_entropy(name):
    head = make(name)
    out = head(torch.randn(30, D))
    for label in (0, 1):
        ce = torch.nn.functional.cross_entropy(out.logits[None], torch.tensor([label]))
        assert abs(head.loss(out, label).item() - ce.item()) > 1e-4


def test_clam_subtyping_adds_out_of_class_terms():
    bag = torch.randn(50, D)
    plain = make("clam_mb", n_classes=3, seed=3)
    sub = make("clam_mb", n_classes=3, seed=3, subtyping=True)
    plain.eval(), sub.eval()
    assert plain.loss(plain(bag), 0).item() != pytest.approx(sub.loss(sub(bag), 0).item())


def test_binary_heads_report_class_one():
    head = make("clam_mb").eval()
    out = head(torch.randn(50, D))
    torch.testing.assert_close(out.instance_scores, out.extras["class_scores"][:, 1])


def test_get_head_errors_and_aliases():
    with pytest.raises(ConfigError, match="abmil"):
        get_head("nope", D)
    with pytest.raises(ConfigError, match="bad arguments"):
        get_head("abmil", D, not_a_parameter=1)
    with pytest.raises(ConfigError):
        get_head("abmil", D, n_classes=1)
    head = get_head("CLAM-SB", D, hidden_dim=16, attn_dim=None)
    assert head.head_name == "clam_sb"
    assert head.head_kwargs == {"hidden_dim": 16}


def test_bad_bags_are_refused_with_advice():
    head = make("abmil")
    with pytest.raises(ConfigError, match="encoder"):
        head(torch.randn(10, D + 1))
    with pytest.raises(ConfigError, match="no instances"):
        head(torch.randn(0, D))
    with pytest.raises(ConfigError, match="2-D"):
        head(torch.randn(D))
    assert head(torch.randn(1, 10, D)).instance_scores.shape == (10,)


def test_ensemble_averages_member_probabilities_then_applies_the_temperature():
    members = [make("abmil", seed=s).eval() for s in range(3)]
    ens = MILEnsemble(members, temperature=2.0).eval()
    bag = torch.randn(40, D)
    out = ens(bag)
    probs = torch.stack([torch.softmax(m(bag).logits, 0) for m in members])
    # calibrated ensemble probability: the mean member probability, tempered after averaging
    torch.testing.assert_close(torch.softmax(out.logits, 0), torch.softmax(probs.mean(0).log() / 2.0, 0))
    torch.testing.assert_close(out.extras["prob_std"], probs.std(0, unbiased=False))
    torch.testing.assert_close(out.extras["member_probs"], probs)
    # one input per member (each member's own standardisation) gives each member its own bag
    other = torch.randn(40, D)
    split = ens([bag, other, bag])
    torch.testing.assert_close(split.extras["member_probs"][1], torch.softmax(members[1](other).logits, 0))
    with pytest.raises(ConfigError, match="member inputs"):
        ens([bag, bag])
    torch.testing.assert_close(out.instance_scores, torch.stack([m(bag).instance_scores for m in members]).mean(0))
    with pytest.raises(ConfigError):
        MILEnsemble([make("abmil"), make("mean_pool")])
    with pytest.raises(ConfigError):
        MILEnsemble([])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_heads_run_under_bfloat16_autocast(name):
    # Training uses bf16 autocast on CUDA; CPU autocast exercises the same dtype mixing without a GPU.
    head = make(name)
    bag = torch.randn(150, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(bag)
        loss = head.loss(out, 1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())
    ref = make(name)
    ref.eval()
    head.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(bag).logits.float()
    assert torch.allclose(low, ref(bag).logits, atol=0.1)
