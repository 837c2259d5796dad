"""MIL heads: shapes, registry, invariances, auxiliary losses, Nyström attention."""

from __future__ import annotations

import math
import time

import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.mil.heads import MILEnsemble, MILHead, get_head, list_heads, nystrom_attention

D = 32
SMALL = {
    "abmil": dict(hidden_dim=32, attn_dim=16),
    "clam_sb": dict(hidden_dim=32, attn_dim=16),
    "clam_mb": dict(hidden_dim=32, attn_dim=16),
    "transmil": dict(hidden_dim=32, n_heads=4),
    "dsmil": dict(hidden_dim=32, query_dim=16),
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
    aux = head.auxiliary_loss(out, 1)
    assert aux.ndim == 0 and torch.isfinite(aux)


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
        (out.logits.sum() + head.auxiliary_loss(out, label)).backward()
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
def test_heads_without_auxiliary_loss_return_zero(name):
    head = make(name)
    out = head(torch.randn(30, D))
    assert head.auxiliary_loss(out, 1).item() == 0.0


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb", "dsmil"])
def test_heads_with_auxiliary_loss_return_positive(name):
    head = make(name)
    out = head(torch.randn(30, D))
    assert head.auxiliary_loss(out, 1).item() > 0
    assert head.auxiliary_loss(out, torch.tensor(0)).item() > 0


def test_clam_instance_loss_handles_tiny_bags_and_weight():
    head = make("clam_sb", k_sample=8)
    out = head(torch.randn(1, D))
    assert head.auxiliary_loss(out, 1).item() == 0.0  # no disjoint top/bottom sets in a 1-instance bag
    out = head(torch.randn(5, D))
    assert head.auxiliary_loss(out, 1).item() > 0  # k shrinks to N // 2
    zero = make("clam_sb", inst_weight=0.0)
    assert zero.auxiliary_loss(zero(torch.randn(30, D)), 1).item() == 0.0


def test_clam_subtyping_adds_out_of_class_terms():
    bag = torch.randn(50, D)
    plain = make("clam_mb", n_classes=3, seed=3)
    sub = make("clam_mb", n_classes=3, seed=3, subtyping=True)
    plain.eval(), sub.eval()
    assert plain.auxiliary_loss(plain(bag), 0).item() != pytest.approx(sub.auxiliary_loss(sub(bag), 0).item())


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


def test_nystrom_is_accurate_on_low_rank_attention():
    # Nyström is accurate when attention is low rank: tokens from 8 clusters, each landmark segment pure.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g)
    assign = torch.randint(0, 8, (64,), generator=g).repeat_interleave(16)
    x = (centres[assign] + 0.05 * torch.randn(1024, 16, generator=g))[None] * 0.5
    v = torch.randn(1, 1024, 16, generator=g)
    exact = torch.softmax(x @ x.transpose(-1, -2), dim=-1) @ v
    approx = nystrom_attention(x, x, v, num_landmarks=64)
    assert (approx - exact).norm() / exact.norm() < 0.02
    uniform = v.mean(-2, keepdim=True).expand_as(exact)
    assert (uniform - exact).norm() / exact.norm() > 0.5  # the case is not trivially near-uniform


def test_nystrom_segments_and_pseudo_inverse_match_dense_reference():
    # Queries/keys that drift smoothly along the sequence give distinct landmarks (well-conditioned kernel).
    g = torch.Generator().manual_seed(1)
    n, m = 1003, 17  # 1003 is not a multiple of 17: segments of 59 and 60 tokens
    t = torch.linspace(0, 1, n)[:, None]
    f = torch.arange(1, 5)[None] * 2 * math.pi
    base = torch.cat([torch.sin(f * t), torch.cos(f * t)], dim=1)
    q, k = (base + 0.1 * torch.randn(3, n, 8, generator=g) for _ in range(2))
    v = torch.randn(3, n, 8, generator=g)
    q_l = torch.stack([s.mean(-2) for s in q.tensor_split(m, dim=-2)], dim=-2)
    k_l = torch.stack([s.mean(-2) for s in k.tensor_split(m, dim=-2)], dim=-2)
    kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
    assert torch.linalg.cond(kernel_2).max() < 100  # well conditioned, so 6 iterations converge
    ref = (torch.softmax(q @ k_l.transpose(-1, -2), dim=-1) @ torch.linalg.pinv(kernel_2)
           @ (torch.softmax(q_l @ k.transpose(-1, -2), dim=-1) @ v))
    torch.testing.assert_close(nystrom_attention(q, k, v, m, pinv_iterations=12), ref, atol=1e-4, rtol=1e-3)
    # As many landmarks as tokens: exact attention.
    exact = torch.softmax(q[:, :40] @ k[:, :40].transpose(-1, -2), dim=-1) @ v[:, :40]
    torch.testing.assert_close(nystrom_attention(q[:, :40], k[:, :40], v[:, :40], 64), exact)


def test_transmil_switches_attention_by_bag_size():
    head = make("transmil", full_attention_max_tokens=100).eval()
    assert not head.attn1.uses_nystrom(100) and head.attn1.uses_nystrom(101)
    full = make("transmil", attention="full").eval()
    nys = make("transmil", attention="nystrom", num_landmarks=64).eval()
    nys.load_state_dict(full.state_dict())
    bag = torch.randn(900, D)
    a, b = full(bag), nys(bag)
    assert torch.allclose(a.logits, b.logits, atol=0.05)
    # Class-token scores are the exact softmax row in both modes, so they agree closely too.
    assert torch.corrcoef(torch.stack([a.instance_scores, b.instance_scores]))[0, 1] > 0.95


def test_transmil_large_bag_runs_with_nystrom():
    head = make("transmil").eval()
    bag = torch.randn(20_000, D)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = head(bag)
    assert out.instance_scores.shape == (20_000,)
    assert torch.isfinite(out.logits).all()
    assert time.perf_counter() - t0 < 20


def test_ensemble_averages_member_probabilities():
    members = [make("abmil", seed=s).eval() for s in range(3)]
    ens = MILEnsemble(members, temperature=2.0).eval()
    bag = torch.randn(40, D)
    out = ens(bag)
    probs = torch.stack([torch.softmax(m(bag).logits / 2.0, 0) for m in members])
    torch.testing.assert_close(torch.softmax(out.logits, 0), probs.mean(0))
    torch.testing.assert_close(out.extras["prob_std"], probs.std(0, unbiased=False))
    torch.testing.assert_close(out.instance_scores, torch.stack([m(bag).instance_scores for m in members]).mean(0))
    with pytest.raises(ConfigError):
        MILEnsemble([make("abmil"), make("mean_pool")])
    with pytest.raises(ConfigError):
        MILEnsemble([])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_heads_run_under_bfloat16_autocast(name):
    # Training uses bf16 autocast on CUDA; CPU autocast exercises the same dtype mixing without a GPU.
    head = make(name, full_attention_max_tokens=64) if name == "transmil" else make(name)
    bag = torch.randn(150, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(bag)
        aux = head.auxiliary_loss(out, 1)
    loss = torch.nn.functional.cross_entropy(out.logits[None].float(), torch.tensor([1])) + aux.float()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())
    ref = make(name, full_attention_max_tokens=64) if name == "transmil" else make(name)
    ref.eval()
    head.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(bag).logits.float()
    assert torch.allclose(low, ref(bag).logits, atol=0.1)
