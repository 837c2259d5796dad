"""CONCH vision towers: a timm ViT trunk followed by CONCH's attention-pooling head.

CONCH (Lu et al., Nature Medicine 2024) and CONCH v1.5 (the patch encoder of TITAN, Ding et al. 2024) embed a
tile as the output of one learned query attending to every token of the trunk (class and patch tokens, after the
trunk's final LayerNorm), followed by a LayerNorm. Presets name these classes in their ``head`` field; the
modules keep the key layout of the published checkpoints, so the files load with strict key checks:

- :class:`ConchV15Tower` (``MahmoodLab/conchv1_5``, file ``pytorch_model_vision.bin``): trunk ViT-L/16 with layer
  scale; pooler with bias-free ``to_q``/``to_kv``/``to_out`` projections, 8 heads, 768-d output.
- :class:`ConchV1Tower` (``MahmoodLab/CONCH``, the vision part ``visual.*`` of ``pytorch_model.bin``): trunk
  ViT-B/16 at 448 px; pooler ``torch.nn.MultiheadAttention(512, 8, kdim=768, vdim=768)``, 512-d output before
  the contrastive projection (``proj_contrast``, not applied, as in TRIDENT's default).

Remaining deviations from the reference code, all below float32 rounding or outside the embedding:

- CONCH v1.5's checkpoint holds position embeddings for 224 px (14×14 patches); the reference model interpolates
  them at every forward for 448 px inputs (bicubic, DINO's ``scale_factor`` formula with the +0.1 offset, no
  antialias). :func:`checkpoint_filter_fn` does that interpolation once when the weights are loaded and the trunk
  is built for 448 px, which gives the same numbers.
- Keys of CONCH v1's text tower, caption pooler and ``proj_contrast`` are dropped when loading.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConchV15Tower", "ConchV1Tower", "checkpoint_filter_fn", "resample_pos_embed_dino"]

# parts of CONCH v1's full vision-language checkpoint that a tile encoder does not use
_UNUSED_PREFIXES = ("attn_pool_caption.", "ln_caption.", "proj_contrast", "text.", "text_decoder.", "logit_scale",
                    "trunk.head.", "head.")


class _TrunkTower(nn.Module):
    """What every tower shares: the trunk's tokens and the attributes :class:`~slidestream.models.Encoder` reads."""

    trunk: nn.Module

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.trunk, "num_prefix_tokens", 1))

    @property
    def patch_embed(self) -> nn.Module:
        # a ViT, not a CNN: no channels_last
        return self.trunk.patch_embed

    def forward_features(self, x: Tensor) -> Tensor:
        """Trunk tokens ``(B, 1 + N, D_trunk)`` after its final LayerNorm."""
        return self.trunk.forward_features(x)


class AttentionalPooler(nn.Module):
    """CONCH v1.5's pooler: ``n_queries`` learned queries attend to LayerNorm-ed context tokens.

    Parameters
    ----------
    d_model : int
        Width of the queries and of the output.
    context_dim : int
        Width of the tokens attended to.
    n_head : int
        Attention heads (``d_model`` must be divisible by it).
    n_queries : int
        Learned queries (1 for the contrastive embedding).
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by {n_head} heads")
        self.heads = n_head
        self.scale = (d_model // n_head) ** -0.5
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, d_model, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, N, context_dim)`` → pooled queries ``(B, n_queries, d_model)``."""
        b, n, _ = x.shape
        h = self.heads
        q = self.to_q(self.ln_q(self.query))                       # (Q, d)
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)           # (B, N, d) each
        q = q.view(1, -1, h, q.shape[-1] // h).transpose(1, 2)      # (1, h, Q, dh)
        k = k.view(b, n, h, -1).transpose(1, 2)                     # (B, h, N, dh)
        v = v.view(b, n, h, -1).transpose(1, 2)
        sim = (q * self.scale) @ k.transpose(-1, -2)                # (B, h, Q, N)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
        return self.to_out(out)


class MHAPooler(nn.Module):
    """CONCH v1's pooler: ``torch.nn.MultiheadAttention`` from learned queries to LayerNorm-ed tokens."""

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens ``(B, N, context_dim)`` → pooled queries ``(B, n_queries, d_model)``."""
        kv = self.ln_k(x)
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, kv, kv, need_weights=False)[0]


class ConchV15Tower(_TrunkTower):
    """CONCH v1.5 vision tower: ``trunk`` (ViT-L/16) → attention pooling → LayerNorm, 768-d.

    Parameters
    ----------
    trunk : torch.nn.Module
        timm ``VisionTransformer`` built for the input size (448 px for the preset).

    Notes
    -----
    ``forward`` maps normalised ``(B, 3, S, S)`` images to float ``(B, 768)`` embeddings.
    """

    embed_dim = 768

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(self.embed_dim, int(trunk.embed_dim), n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(self.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.forward_features(x))[:, 0])


class ConchV1Tower(_TrunkTower):
    """CONCH (v1) vision tower: ``trunk`` (ViT-B/16, 448 px) → attention pooling → LayerNorm, 512-d.

    Parameters
    ----------
    trunk : torch.nn.Module
        timm ``VisionTransformer`` built for 448 px.

    Notes
    -----
    ``forward`` maps normalised ``(B, 3, S, S)`` images to float ``(B, 512)`` embeddings: CONCH's
    ``encode_image(x, proj_contrast=False, normalize=False)``.
    """

    embed_dim = 512

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = MHAPooler(self.embed_dim, int(trunk.embed_dim), n_head=8, n_queries=1)
        self.ln_contrast = nn.LayerNorm(self.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln_contrast(self.attn_pool_contrast(self.forward_features(x))[:, 0])


def resample_pos_embed_dino(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Interpolate ViT position embeddings to another patch grid the way DINO/iBOT models do at forward time.

    Bicubic, ``align_corners=False``, no antialias, with ``scale_factor = (grid + 0.1) / old_grid`` (the +0.1
    avoids rounding the output size down): CONCH v1.5's reference code applies exactly this to its 224-px
    embeddings at every 448-px forward.

    Parameters
    ----------
    pos_embed : torch.Tensor
        ``(1, num_prefix_tokens + G*G, D)`` for a square ``G×G`` grid.
    grid : (int, int)
        Target ``(rows, cols)`` of patches.
    num_prefix_tokens : int
        Leading embeddings (class token) kept as they are.

    Returns
    -------
    torch.Tensor
        ``(1, num_prefix_tokens + rows*cols, D)`` in the dtype of ``pos_embed``.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = patches.shape[1]
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"position embeddings of {n} patches are not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    dim = patches.shape[-1]
    img = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    out = F.interpolate(img, scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side), mode="bicubic",
                        align_corners=False)
    if tuple(out.shape[-2:]) != tuple(grid):
        raise ValueError(f"interpolated grid {tuple(out.shape[-2:])} is not {tuple(grid)}")
    out = out.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, out], dim=1)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Fit a CONCH checkpoint to a tower: drop the parts a tile encoder does not use, resample position embeddings.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
        Keys ``trunk.*``, ``attn_pool_contrast.*``, ``ln_contrast.*`` (plus, for CONCH v1, unused caption and
        projection keys once the ``visual.`` prefix is removed).
    model : ConchV15Tower or ConchV1Tower

    Returns
    -------
    dict of str to torch.Tensor
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith(_UNUSED_PREFIXES)}
    pos = out.get("trunk.pos_embed")
    trunk = getattr(model, "trunk", None)
    if pos is not None and trunk is not None and tuple(pos.shape) != tuple(trunk.pos_embed.shape):
        prefix = 0 if getattr(trunk, "no_embed_class", False) else int(getattr(trunk, "num_prefix_tokens", 1))
        out["trunk.pos_embed"] = resample_pos_embed_dino(pos, tuple(trunk.patch_embed.grid_size), prefix)
    return out
