"""TransMIL (Shao et al., NeurIPS 2021): a transformer over the bag with Nyström attention and a positional encoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .base import MILHead, MILOutput
from .registry import register_head


def _iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of a batch of square matrices by the Nyströmformer iteration."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    scale = a.abs().sum(-1).amax(-1) * a.abs().sum(-2).amax(-1)
    z = a.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def _segment_means(x: Tensor, m: int) -> Tensor:
    """Means of ``m`` contiguous segments along axis -2, sized like ``torch.tensor_split`` (longer ones first).

    Two reshapes instead of ``m`` small reductions: much faster, especially backwards.
    """
    n = x.shape[-2]
    size, n_long = divmod(n, m)
    cut = n_long * (size + 1)
    lead = x.shape[:-2]
    long = x[..., :cut, :].reshape(*lead, n_long, size + 1, x.shape[-1]).mean(-2)
    short = x[..., cut:, :].reshape(*lead, m - n_long, size, x.shape[-1]).mean(-2)
    return torch.cat([long, short], dim=-2)


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int, pinv_iterations: int = 6) -> Tensor:
    """Nyström approximation of ``softmax(q k^T) v`` (Xiong et al., AAAI 2021).

    Landmarks are the means of ``num_landmarks`` contiguous, nearly equal segments of the sequence, so no
    padding or mask is needed for any length. Computed in float32 even under autocast because the iterative
    pseudo-inverse is not stable in half precision.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``(..., n, d)``; ``q`` already multiplied by the attention scale.
    num_landmarks : int
        Number of landmarks ``m``; when ``m >= n`` the exact attention is returned.
    pinv_iterations : int, default 6
        Iterations of the pseudo-inverse.

    Returns
    -------
    torch.Tensor
        ``(..., n, d)`` float32.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        n = q.shape[-2]
        if num_landmarks >= n:
            return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        q_l = _segment_means(q, num_landmarks)
        k_l = _segment_means(k, num_landmarks)
        kernel_1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)  # (.., n, m)
        kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)  # (.., m, m)
        kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)  # (.., m, n)
        return kernel_1 @ (_iterative_pinv(kernel_2, pinv_iterations) @ (kernel_3 @ v))


class _SelfAttention(nn.Module):
    """Multi-head self-attention that is exact for short sequences and Nyström for long ones."""

    def __init__(self, dim: int, n_heads: int, dropout: float, mode: str, num_landmarks: int,
                 pinv_iterations: int, full_attention_max_tokens: int):
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"hidden_dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.mode = mode
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.full_attention_max_tokens = full_attention_max_tokens

    def uses_nystrom(self, n_tokens: int) -> bool:
        if self.mode == "full":
            return False
        if self.mode == "nystrom":
            return True
        return n_tokens > self.full_attention_max_tokens

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (n, dim)`` → ``(out (n, dim), cls_attention (n,))``, token 0 being the class token."""
        n, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.n_heads, dim // self.n_heads).permute(1, 2, 0, 3)
        q = q * self.scale
        if self.uses_nystrom(n):
            out = nystrom_attention(q, k, v, self.num_landmarks, self.pinv_iterations).to(v.dtype)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        # The class-token row of the exact softmax is O(n): report it whatever approximation ran above.
        cls_attn = torch.softmax((q[:, :1] @ k.transpose(-1, -2)).float(), dim=-1).mean(0)[0]
        return self.proj(out.transpose(0, 1).reshape(n, dim)), cls_attn


class _PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convolutions on the square token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, s, padding=s // 2, groups=dim) for s in (7, 5, 3))

    def forward(self, tokens: Tensor, side: int) -> Tensor:
        cls, feat = tokens[:1], tokens[1:]
        grid = feat.transpose(0, 1).reshape(1, -1, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, grid.flatten(2)[0].transpose(0, 1)], dim=0)


@register_head("transmil")
class TransMIL(MILHead):
    """TransMIL (Shao et al., NeurIPS 2021): correlated MIL with a transformer and PPEG position encoding.

    ``x → Linear+ReLU → pad to a square grid (repeat the first tokens) → prepend class token →
    attention layer → PPEG → attention layer → LayerNorm → classifier on the class token``.
    Each attention layer is pre-norm with a residual and no MLP, as in the paper.

    Attention: ``attention="auto"`` (default) is exact softmax attention while the sequence has at most
    ``full_attention_max_tokens`` tokens, and Nyström attention (``num_landmarks`` landmarks, default
    ``hidden_dim // 2`` as in the paper) beyond that, where the exact ``n × n`` matrix would not fit.
    Exact attention is both cheaper and exact for small bags; ``"full"`` and ``"nystrom"`` force one.

    ``instance_scores`` are the class token's attention to each instance in the last layer, mean over heads,
    always computed exactly (one row is O(n)); tokens added to fill the grid are dropped.

    Parameters
    ----------
    in_dim, n_classes : int
        Feature dimension ``D`` and number of classes ``K``.
    hidden_dim : int, default 512
    n_heads : int, default 8
    dropout : float, default 0.1
    attention : {"auto", "full", "nystrom"}, default "auto"
    num_landmarks : int, optional
    pinv_iterations : int, default 6
    full_attention_max_tokens : int, default 2048
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 512, n_heads: int = 8,
                 dropout: float = 0.1, attention: str = "auto", num_landmarks: int | None = None,
                 pinv_iterations: int = 6, full_attention_max_tokens: int = 2048):
        super().__init__(in_dim, n_classes)
        if attention not in ("auto", "full", "nystrom"):
            raise ConfigError(f"attention must be 'auto', 'full' or 'nystrom', got {attention!r}")
        landmarks = int(num_landmarks) if num_landmarks else max(1, hidden_dim // 2)
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.randn(1, hidden_dim) * 0.02)
        args = (n_heads, dropout, attention, landmarks, pinv_iterations, full_attention_max_tokens)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn1 = _SelfAttention(hidden_dim, *args)
        self.ppeg = _PPEG(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.attn2 = _SelfAttention(hidden_dim, *args)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def _forward(self, bag: Tensor) -> MILOutput:
        n = bag.shape[0]
        h = self.fc(bag)
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:
            h = torch.cat([h, h[torch.arange(extra, device=h.device) % n]], dim=0)
        x = torch.cat([self.cls_token.to(h.dtype), h], dim=0)
        out, _ = self.attn1(self.norm1(x))
        x = self.ppeg(x + out, side)
        out, cls_attn = self.attn2(self.norm2(x))
        x = x + out
        logits = self.classifier(self.norm(x[0]))
        return MILOutput(logits, cls_attn[1 : n + 1], {})
