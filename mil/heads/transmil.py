"""TransMIL (Shao et al., NeurIPS 2021): a transformer over the bag with Nyström attention and a positional
encoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from .base import MILHead, MILOutput
from .registry import register_head


def moore_penrose_pinv(a: Tensor, iterations: int = 6) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse of softmax kernels, as nystrom-attention computes it.

    ``Z_0 = A^T / (max_j sum_i |A_ij| * max_i sum_j |A_ij|)`` then ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``.
    As in the reference the two maxima are taken over the whole tensor (all heads and batch items), giving one
    scale for every matrix of the batch.

    Parameters
    ----------
    a : torch.Tensor
        ``(..., m, m)`` float matrices.
    iterations : int, default 6

    Returns
    -------
    torch.Tensor
        ``(..., m, m)``, same dtype.
    """
    abs_a = a.abs()
    z = a.transpose(-1, -2) / (abs_a.sum(-1).max() * abs_a.sum(-2).max())
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(q: Tensor, k: Tensor, v: Tensor, num_landmarks: int, pinv_iterations: int = 6) -> Tensor:
    """Nyström approximation of ``softmax(q k^T) v`` (Xiong et al., AAAI 2021) exactly as nystrom-attention
    (lucidrains, 0.0.10 and later, no mask) computes it.

    With ``n`` tokens and ``m`` landmarks: ``p = (-n) mod m`` zero tokens are put in *front* of ``q, k, v``
    (the reference pads the input tokens, and its ``to_qkv`` has no bias, so their queries, keys and values are
    zero); the landmarks are the means of ``m`` consecutive segments of ``l = ceil(n / m)`` padded tokens; the pad
    tokens stay unmasked keys (logit 0, value 0), as in the reference. ``out = softmax(q k_l^T)
    pinv(softmax(q_l k_l^T)) softmax(q_l k^T) v``, and the last ``n`` rows are returned (the fixed slice of
    0.0.10; 0.0.9 returned the first ``n``, shifted by the padding). A bag shorter than ``m`` is padded to ``m``
    tokens and still approximated, never switched to exact attention.

    Precision: under bfloat16 autocast the products (pseudo-inverse included) run in bfloat16, as the reference's
    fp16 mixed-precision training ran them in half precision; bfloat16 keeps float32's range, so the pseudo-inverse's
    scaling cannot overflow, and its output stays within about 1 % of the float32 one. Otherwise (no autocast, or
    float16 autocast, whose range the scaling can leave) everything runs in float32.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``(..., n, d)``; ``q`` already multiplied by the attention scale.
    num_landmarks : int
        Number of landmarks ``m``.
    pinv_iterations : int, default 6
        Iterations of :func:`moore_penrose_pinv`.

    Returns
    -------
    torch.Tensor
        ``(..., n, d)``, float32 (bfloat16 under bfloat16 autocast).
    """
    dev = q.device.type
    bf16 = torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.bfloat16
    with torch.autocast(device_type=dev, enabled=bf16, dtype=torch.bfloat16):
        if not bf16:
            q, k, v = q.float(), k.float(), v.float()
        n, d = q.shape[-2], q.shape[-1]
        m = int(num_landmarks)
        pad = (-n) % m
        if pad:
            q, k, v = (F.pad(t, (0, 0, pad, 0)) for t in (q, k, v))
        seg = (n + pad) // m
        lead = q.shape[:-2]
        q_l = q.reshape(*lead, m, seg, d).sum(-2) / seg
        k_l = k.reshape(*lead, m, seg, d).sum(-2) / seg
        kernel_1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)  # (.., n', m)
        kernel_2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)  # (.., m, m)
        kernel_3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)  # (.., m, n')
        out = (kernel_1 @ moore_penrose_pinv(kernel_2, pinv_iterations)) @ (kernel_3 @ v)
        return out[..., -n:, :]


class _NystromAttention(nn.Module):
    """TransMIL's attention layer: nystrom-attention's ``NystromAttention`` (no mask), or exact softmax attention.

    ``to_qkv`` (no bias) → heads → Nyström (or exact) attention → plus the residual depthwise convolution of
    the values (one ``kernel × 1`` filter per head along the token axis, shared by the head's columns, no bias)
    → merge heads → ``to_out`` (Linear, Dropout). With ``attention="exact"`` the same layer (same parameters,
    residual convolution included) uses ``softmax(q k^T) v`` instead of the approximation.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, attention: str, num_landmarks: int,
                 pinv_iterations: int, residual_conv_kernel: int):
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"hidden_dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.scale = (dim // n_heads) ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        self.res_conv = (nn.Conv2d(n_heads, n_heads, (residual_conv_kernel, 1), padding=(residual_conv_kernel // 2, 0),
                                   groups=n_heads, bias=False) if residual_conv_kernel else None)
        self.attention = attention
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (n, dim)`` → ``(out (n, dim), cls_attention (n,))``, token 0 being the class token."""
        n, dim = x.shape
        q, k, v = self.to_qkv(x).reshape(n, 3, self.n_heads, dim // self.n_heads).permute(1, 2, 0, 3)
        q = q * self.scale
        if self.attention == "nystrom":
            out = nystrom_attention(q, k, v, self.num_landmarks, self.pinv_iterations).to(v.dtype)
        else:
            out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        if self.res_conv is not None:
            # The reference convolves the front-padded values; the pad rows are zeros, so convolving the real rows
            # with the convolution's own zero padding gives the same last n rows.
            out = out + self.res_conv(v[None])[0]
        # The class-token row of the exact softmax is O(n): report it whatever approximation ran above.
        cls_attn = torch.softmax((q[:, :1] @ k.transpose(-1, -2)).float(), dim=-1).mean(0)[0]
        return self.to_out(out.transpose(0, 1).reshape(n, dim)), cls_attn


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
    """TransMIL (Shao et al., NeurIPS 2021), as ``szc19990412/TransMIL`` builds it.

    ``x → Linear+ReLU → pad to a square grid by repeating the first tokens → prepend class token →
    TransLayer → PPEG → TransLayer → LayerNorm → classifier on the class token``. A TransLayer is
    ``x + NystromAttention(LayerNorm(x))`` (pre-norm, residual, no feed-forward) with ``hidden_dim // n_heads``
    per head, ``num_landmarks = hidden_dim // 2``, 6 pseudo-inverse iterations, the residual depthwise value
    convolution (kernel 33 along the sequence, one filter per head) and dropout 0.1 on the output projection;
    PPEG adds depthwise 7/5/3 convolutions of the token grid. The class token starts as ``torch.randn`` (std 1).

    ``attention`` is chosen explicitly: ``"nystrom"`` (default, the reference: every bag, however small, goes
    through the approximation, padded in front to a multiple of the landmarks) or ``"exact"`` (softmax attention
    with the same parameters, for small bags or checks). The Nyström maths is that of nystrom-attention 0.0.10+
    (see :func:`nystrom_attention`).

    ``instance_scores`` (our addition; the reference has no instance output) are the class token's exact softmax
    attention to each instance in the last layer, mean over heads (one row is O(n) whatever the attention mode);
    tokens added to fill the grid are dropped.

    Remaining deviations from the reference
    ---------------------------------------
    * The reference pins nystrom-attention 0.0.9, whose output slice keeps the pad rows and drops the last real
      ones (fixed in 0.0.10); this head follows the fixed slice, so released TransMIL numbers were made with a
      shifted output that is not reproduced.
    * The reference trained in fp16 mixed precision. Here Nyström attention runs in bfloat16 under bfloat16
      autocast (CUDA training, or ``precision="bfloat16"`` on a CPU) and in float32 otherwise.
    * Training uses the shared AdamW / cosine loop of :mod:`slidestream.mil.train` (the reference:
      Lookahead-RAdam(2e-4, wd 1e-5), gradient accumulation 2, 200 epochs, patience 10 on validation loss).

    Parameters
    ----------
    in_dim, n_classes : int
        Feature dimension ``D`` and number of classes ``K``.
    hidden_dim : int, default 512
    n_heads : int, default 8
    dropout : float, default 0.1
        Dropout of the attention output projections.
    attention : {"nystrom", "exact"}, default "nystrom"
    num_landmarks : int, optional
        Default ``hidden_dim // 2``.
    pinv_iterations : int, default 6
    residual_conv_kernel : int, default 33
        Length of the residual value convolution (odd); 0 removes it.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 512, n_heads: int = 8,
                 dropout: float = 0.1, attention: str = "nystrom", num_landmarks: int | None = None,
                 pinv_iterations: int = 6, residual_conv_kernel: int = 33):
        super().__init__(in_dim, n_classes)
        if attention not in ("nystrom", "exact"):
            raise ConfigError(f"attention must be 'nystrom' or 'exact', got {attention!r}")
        if residual_conv_kernel < 0 or (residual_conv_kernel and residual_conv_kernel % 2 == 0):
            raise ConfigError(f"residual_conv_kernel must be odd (or 0 for none), got {residual_conv_kernel}")
        landmarks = int(num_landmarks) if num_landmarks else max(1, hidden_dim // 2)
        self.attention = attention
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, hidden_dim))
        args = (n_heads, dropout, attention, landmarks, pinv_iterations, residual_conv_kernel)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.attn1 = _NystromAttention(hidden_dim, *args)
        self.ppeg = _PPEG(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.attn2 = _NystromAttention(hidden_dim, *args)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def _forward(self, bag: Tensor) -> MILOutput:
        n = bag.shape[0]
        h = self.fc(bag)
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:
            # side^2 - n <= n for every n >= 1, so the first `extra` tokens exist: the reference's h[:add]
            h = torch.cat([h, h[:extra]], dim=0)
        x = torch.cat([self.cls_token.to(h.dtype), h], dim=0)
        out, _ = self.attn1(self.norm1(x))
        x = self.ppeg(x + out, side)
        out, cls_attn = self.attn2(self.norm2(x))
        x = x + out
        logits = self.classifier(self.norm(x[0]))
        return MILOutput(logits, cls_attn[1 : n + 1], {})
