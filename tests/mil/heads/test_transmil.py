"""TransMIL and its Nyström attention against the reference equations (szc19990412/TransMIL ``models/TransMIL.py``,
lucidrains/nystrom-attention 0.0.10+), re-derived in NumPy with the head's own weights."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from slidestream.errors import ConfigError
from slidestream.mil.heads import get_head, nystrom_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def w(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_nystrom(q, k, v, m, iters=6):
    """nystrom-attention (0.0.10+, no mask) on (H, n, d) arrays; q already scaled."""
    n = q.shape[1]
    pad = (m - n % m) % m
    if pad:  # zero tokens in front
        q, k, v = (np.concatenate([np.zeros((t.shape[0], pad, t.shape[2])), t], axis=1) for t in (q, k, v))
    seg = math.ceil(n / m)
    q_l = np.stack([q[:, j * seg:(j + 1) * seg].sum(1) / seg for j in range(m)], axis=1)
    k_l = np.stack([k[:, j * seg:(j + 1) * seg].sum(1) / seg for j in range(m)], axis=1)
    a1 = softmax(q @ k_l.transpose(0, 2, 1))
    a2 = softmax(q_l @ k_l.transpose(0, 2, 1))
    a3 = softmax(q_l @ k.transpose(0, 2, 1))
    # one scale for all heads: max row sum times max column sum over the whole tensor
    z = a2.transpose(0, 2, 1) / (np.abs(a2).sum(-1).max() * np.abs(a2).sum(-2).max())
    eye = np.eye(m)
    for _ in range(iters):
        az = a2 @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    out = (a1 @ z) @ (a3 @ v)
    return out[:, -n:]  # the fixed slice: the last n rows are the real tokens


@pytest.mark.parametrize("n,m", [(23, 8), (24, 8), (5, 8), (1, 4)])
def test_nystrom_matches_the_reference_padding_landmarks_pinv_and_slice(n, m):
    g = np.random.default_rng(n)
    q, k, v = (g.standard_normal((3, n, 4)) for _ in range(3))
    got = nystrom_attention(*(torch.from_numpy(t).float() for t in (q, k, v)), num_landmarks=m)
    np.testing.assert_allclose(w(got), ref_nystrom(q, k, v, m), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("n", [200, 300])
def test_nystrom_runs_in_bfloat16_under_bfloat16_autocast_within_a_percent_of_float32(n):
    # TransMIL's shapes: 8 heads of 64, 256 landmarks, tokens from LayerNorm-ed features through a random projection.
    g = torch.Generator().manual_seed(n)
    x = torch.nn.functional.layer_norm(torch.randn(n, 512, generator=g), (512,))
    q, k, v = (x @ (torch.randn(512, 3 * 512, generator=g) / 512 ** 0.5)).reshape(n, 3, 8, 64).permute(1, 2, 0, 3)
    q = q * 64 ** -0.5
    full = nystrom_attention(q, k, v, num_landmarks=256)
    np.testing.assert_allclose(w(full), ref_nystrom(w(q), w(k), w(v), 256), rtol=1e-3, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nystrom_attention(q, k, v, num_landmarks=256)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    err = ((low.float() - full).norm() / full.norm()).item()
    assert 1e-4 < err < 0.02  # really computed in bfloat16, and close
    with torch.autocast("cpu", dtype=torch.float16):
        kept = nystrom_attention(q, k, v, num_landmarks=256)
    assert kept.dtype == torch.float32 and torch.equal(kept, full)  # float16 autocast leaves it in float32


def test_nystrom_approximates_exact_attention_on_low_rank_data():
    # Tokens from 8 clusters in segments of 16: each landmark segment is pure, so the kernel is low rank.
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


def ref_layer(layer, norm, x, mode, m):
    """x + NystromAttention(LayerNorm(x)) with the reference's residual value convolution."""
    h = layer.n_heads
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + norm.eps) * w(norm.weight) + w(norm.bias)
    n, dim = y.shape
    d = dim // h
    qkv = y @ w(layer.to_qkv.weight).T
    q, k, v = (qkv[:, i * dim:(i + 1) * dim].reshape(n, h, d).transpose(1, 0, 2) for i in range(3))
    q = q * d ** -0.5
    out = ref_nystrom(q, k, v, m) if mode == "nystrom" else softmax(q @ k.transpose(0, 2, 1)) @ v
    kernel = w(layer.res_conv.weight)[:, 0, :, 0]  # (h, 33)
    half = kernel.shape[1] // 2
    vp = np.concatenate([np.zeros((h, half, d)), v, np.zeros((h, half, d))], axis=1)
    out = out + np.stack([sum(kernel[i, j] * vp[i, j:j + n] for j in range(kernel.shape[1])) for i in range(h)])
    out = out.transpose(1, 0, 2).reshape(n, dim) @ w(layer.to_out[0].weight).T + w(layer.to_out[0].bias)
    return x + out


def ref_ppeg(ppeg, x, side):
    cls, feat = x[:1], x[1:]
    grid = torch.from_numpy(feat.T.reshape(1, -1, side, side))
    total = grid.clone()
    for conv in ppeg.convs:
        ks = conv.kernel_size[0]
        total = total + torch.nn.functional.conv2d(grid, conv.weight.detach().double(), conv.bias.detach().double(),
                                                   padding=ks // 2, groups=grid.shape[1])
    return np.concatenate([cls, total[0].reshape(grid.shape[1], -1).numpy().T])


@pytest.mark.parametrize("mode", ["nystrom", "exact"])
@pytest.mark.parametrize("n", [5, 10])
def test_forward_matches_the_reference(mode, n):
    torch.manual_seed(n)
    head = get_head("transmil", 7, 2, hidden_dim=16, n_heads=4, attention=mode).eval()
    x = np.random.default_rng(n).standard_normal((n, 7))
    h = np.maximum(x @ w(head.fc[0].weight).T + w(head.fc[0].bias), 0)
    side = math.ceil(math.sqrt(n))
    h = np.concatenate([h, h[: side * side - n]])  # wrap-around: the first tokens again
    t = np.concatenate([w(head.cls_token), h])
    t = ref_layer(head.attn1, head.norm1, t, mode, 8)
    t = ref_ppeg(head.ppeg, t, side)
    t = ref_layer(head.attn2, head.norm2, t, mode, 8)
    c = t[0]
    c = (c - c.mean()) / np.sqrt(c.var() + head.norm.eps) * w(head.norm.weight) + w(head.norm.bias)
    logits = c @ w(head.classifier.weight).T + w(head.classifier.bias)
    out = head(torch.from_numpy(x).float())
    np.testing.assert_allclose(w(out.logits), logits, atol=2e-4, rtol=1e-3)


def test_attention_mode_is_explicit_not_switched_by_bag_size():
    torch.manual_seed(0)
    nys = get_head("transmil", 16, hidden_dim=32, n_heads=4).eval()
    assert nys.attention == "nystrom" and nys.attn1.res_conv.kernel_size == (33, 1)
    exact = get_head("transmil", 16, hidden_dim=32, n_heads=4, attention="exact").eval()
    exact.load_state_dict(nys.state_dict())  # same parameters in both modes
    bag = torch.randn(6, 16)  # far fewer tokens than the 16 landmarks: the reference still uses Nyström
    assert not torch.allclose(nys(bag).logits, exact(bag).logits, atol=1e-4)
    with pytest.raises(ConfigError):
        get_head("transmil", 16, attention="auto")
    with pytest.raises(ConfigError):
        get_head("transmil", 16, residual_conv_kernel=4)


def test_class_token_starts_as_a_standard_normal_draw():
    torch.manual_seed(0)
    token = get_head("transmil", 16).cls_token  # (1, 512)
    assert token.std().item() == pytest.approx(1.0, abs=0.1)
    assert not any(isinstance(m, torch.nn.Dropout) for m in get_head("transmil", 16).fc)


def test_large_bag_runs_with_nystrom():
    torch.manual_seed(0)
    head = get_head("transmil", 32, hidden_dim=32, n_heads=4).eval()
    bag = torch.randn(20_000, 32)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = head(bag)
    assert out.instance_scores.shape == (20_000,)
    assert torch.isfinite(out.logits).all()
    assert time.perf_counter() - t0 < 20
