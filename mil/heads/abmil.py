"""Gated attention MIL (ABMIL; Ilse, Tomczak and Welling, ICML 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import GatedAttention, MILHead, MILOutput, _feature_mlp
from .registry import register_head


@register_head("abmil")
class GatedABMIL(MILHead):
    """Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018).

    ``h = MLP(x)``; ``a = softmax_N(GatedAttention(h))``; ``z = a^T h``; ``logits = W z``.
    ``instance_scores`` are the attention weights ``a`` (sum to 1).

    Remaining deviations from the reference (AttentionDeepMIL ``model.py``)
    -----------------------------------------------------------------------
    * The feature MLP is ``Linear(D, 256) → ReLU → Dropout`` on encoder features (the paper: a LeNet feature
      extractor and ``Linear(800, 500)``), as histopathology re-implementations do.
    * ``K`` softmax logits with cross-entropy; for a binary task this is the same model as the paper's single
      sigmoid output with BCE.
    * Dropout (default 0.25) after the MLP and in both attention branches, placed as CLAM's ``Attn_Net_Gated``;
      the paper uses none.

    Parameters
    ----------
    in_dim, n_classes : int
        Feature dimension ``D`` and number of classes ``K``.
    hidden_dim : int, default 256
        Width of the one-layer feature MLP.
    attn_dim : int, default 128
        Width of the attention scorer.
    dropout : float, default 0.25
        Dropout after the feature MLP and inside the attention scorer.
    gated : bool, default True
        Use the sigmoid gate (the paper's gated variant).
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 256, attn_dim: int = 128,
                 dropout: float = 0.25, gated: bool = True):
        super().__init__(in_dim, n_classes)
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim, 1, dropout, gated)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def _forward(self, bag: Tensor) -> MILOutput:
        h = self.features(bag)
        raw = self.attention(h)[:, 0]
        a = torch.softmax(raw, dim=0)
        logits = self.classifier(a @ h)
        return MILOutput(logits, a, {"attention_logits": raw})
