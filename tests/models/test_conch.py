"""CONCH towers: the poolers compute what the reference code computes, position embeddings resample DINO-style."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from slidestream.models.conch import (AttentionalPooler, ConchV1Tower, ConchV15Tower, MHAPooler, checkpoint_filter_fn,
                                      resample_pos_embed_dino)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_attentional_pool(p: AttentionalPooler, x: torch.Tensor) -> torch.Tensor:
    """CONCH v1.5's pooler written step by step as its reference code does (einsum over a 5-d layout)."""
    b, h = x.shape[0], p.heads
    x = p.ln_k(x[:, None])                                              # b 1 n c
    q = p.to_q(p.ln_q(p.query[None, None].expand(b, 1, -1, -1)))        # b 1 q d
    k, v = p.to_kv(x).chunk(2, dim=-1)

    def split(t):  # b m n (h d) -> b h m n d
        return t.view(*t.shape[:3], h, t.shape[-1] // h).permute(0, 3, 1, 2, 4)

    q, k, v = split(q) * p.scale, split(k), split(v)
    sim = torch.einsum("...id,...jd->...ij", q, k)
    attn = (sim - sim.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    out = torch.einsum("...ij,...jd->...id", attn, v)                   # b h m q d
    out = out.permute(0, 2, 3, 1, 4).reshape(b, 1, out.shape[3], -1)
    return p.to_out(out).squeeze(1)


def test_attentional_pooler_matches_the_reference_formulation():
    torch.manual_seed(0)
    pool = AttentionalPooler(64, 96, n_head=8, n_queries=1).eval()
    x = torch.randn(3, 17, 96)
    with torch.no_grad():
        out, ref = pool(x), _reference_attentional_pool(pool, x)
    assert out.shape == (3, 1, 64)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_mha_pooler_matches_sequence_first_multihead_attention():
    # CONCH v1 calls nn.MultiheadAttention sequence-first with the query repeated over the batch
    torch.manual_seed(1)
    pool = MHAPooler(32, 48, n_head=4).eval()
    x = torch.randn(2, 9, 48)
    ref_attn = torch.nn.MultiheadAttention(32, 4, kdim=48, vdim=48)
    ref_attn.load_state_dict(pool.attn.state_dict())
    with torch.no_grad():
        kv = pool.ln_k(x).permute(1, 0, 2)
        q = pool.ln_q(pool.query).unsqueeze(1).repeat(1, 2, 1)
        ref = ref_attn(q, kv, kv, need_weights=False)[0].permute(1, 0, 2)
        out = pool(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.in_proj_bias"} <= set(
        pool.state_dict())


def test_dino_resample_equals_interpolation_at_forward_time():
    torch.manual_seed(2)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    out = resample_pos_embed_dino(pos, (28, 28))
    # the reference interpolates at every forward with scale_factor (28 + 0.1) / 14, bicubic, no antialias
    patches = pos[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(patches, scale_factor=(28.1 / math.sqrt(196), 28.1 / math.sqrt(196)), mode="bicubic")
    ref = torch.cat([pos[:, :1], ref.permute(0, 2, 3, 1).reshape(1, -1, 8)], 1)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # not what a size-based (or antialiased) resize gives: the offset matters
    by_size = F.interpolate(patches, size=(28, 28), mode="bicubic", antialias=True)
    assert not torch.allclose(out[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, -1, 8))
    assert resample_pos_embed_dino(pos, (14, 14)) is pos


def _tiny_trunk(img_size: int, **kw):
    return timm.create_model("vit_tiny_patch16_224", img_size=img_size, num_classes=0, **kw).eval()


def test_v15_tower_pools_all_trunk_tokens_and_loads_a_224_checkpoint_at_448():
    torch.manual_seed(3)
    tower = ConchV15Tower(_tiny_trunk(64, init_values=1e-6)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = tower.trunk.forward_features(x)
        ref = tower.ln_contrast(_reference_attentional_pool(tower.attn_pool_contrast, tokens)[:, 0])
        out = tower(x)
    assert out.shape == (2, 768) and tower.num_prefix_tokens == 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # a checkpoint made at 32 px (2x2 patches) fits the 64-px tower after the DINO-style resample
    small = ConchV15Tower(_tiny_trunk(32, init_values=1e-6))
    state = checkpoint_filter_fn(small.state_dict(), tower)
    assert state["trunk.pos_embed"].shape == tower.trunk.pos_embed.shape
    tower.load_state_dict(state, strict=True)


def test_v1_filter_drops_caption_text_and_projection_keys():
    tower = ConchV1Tower(_tiny_trunk(32))
    state = dict(tower.state_dict())
    extra = {"attn_pool_caption.query": torch.zeros(4, 768), "ln_caption.weight": torch.zeros(768),
             "proj_contrast": torch.zeros(512, 512), "text.token_embedding.weight": torch.zeros(3, 3),
             "text_decoder.x": torch.zeros(1), "logit_scale": torch.zeros(())}
    out = checkpoint_filter_fn({**state, **extra}, tower)
    assert set(out) == set(state)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert tower(x).shape == (1, 512)
