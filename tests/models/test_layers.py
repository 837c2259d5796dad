"""Layers presets name by dotted path: CTransPath's stem in timm's Swin, the eps-1e-12 LayerNorm."""

from __future__ import annotations

import pytest
import timm
import torch

from slidestream.models import pool_features
from slidestream.models.layers import CTransPathStem, LayerNormEps12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_stem_is_a_stride_4_channels_last_embedding_with_the_published_keys():
    torch.manual_seed(0)
    stem = CTransPathStem(img_size=32, embed_dim=96, norm_layer=torch.nn.LayerNorm).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = stem(x)
        ref = stem.norm(stem.proj(x).permute(0, 2, 3, 1))
    assert out.shape == (2, 8, 8, 96) and stem.grid_size == (8, 8)
    torch.testing.assert_close(out, ref)
    convs = [m for m in stem.proj if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 12, (3, 3), (2, 2)), (12, 24, (3, 3), (2, 2)), (24, 96, (1, 1), (1, 1))]
    assert convs[0].bias is None and convs[2].bias is not None
    assert {k.split(".")[1] for k in stem.state_dict() if k.startswith("proj.")} == {"0", "1", "3", "4", "6"}
    with pytest.raises(ValueError, match="takes"):
        stem(torch.randn(1, 3, 36, 36))
    with pytest.raises(ValueError, match="patch_size 4"):
        CTransPathStem(patch_size=16)


def test_swin_with_the_stem_pools_channels_last_tokens_in_its_head():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", embed_layer=CTransPathStem, num_classes=0).eval()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 27.52
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model(x)
    assert tokens.shape == (1, 7, 7, 768)
    torch.testing.assert_close(pooled, tokens.mean((1, 2)), rtol=1e-5, atol=1e-6)
    # pooling="avg" assumes NCHW and would average over (W, C): why the ctranspath preset uses timm's head
    assert pool_features(tokens, "avg").shape == (1, 7)


def test_layer_norm_eps12():
    norm = LayerNormEps12(8)
    assert norm.eps == 1e-12 and norm.weight.shape == (8,)
