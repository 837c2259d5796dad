"""CLAM-SB and CLAM-MB (Lu et al., Nature Biomedical Engineering 2021): attention pooling with instance-level clustering losses."""

from __future__ import annotations

import abc
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from .base import GatedAttention, MILHead, MILOutput, _feature_mlp, _label_index
from .registry import register_head


class _CLAM(MILHead):
    """Shared body of CLAM-SB and CLAM-MB (Lu et al., Nat. Biomed. Eng. 2021).

    Feature MLP, gated attention with one branch (SB) or one per class (MB), and one binary instance
    classifier per class for the instance-clustering loss: the ``k_sample`` highest-attended instances of the
    true class are pseudo-labelled positive and the ``k_sample`` lowest negative (``k`` shrinks to ``N // 2``
    for small bags so the two sets never overlap). With ``subtyping=True`` the highest-attended instances of
    the other classes are also pushed to negative. The paper's smooth top-1 SVM loss is replaced by cross
    entropy. ``auxiliary_loss`` returns ``inst_weight * mean instance loss``; the paper's 0.7/0.3 mix of bag
    and instance losses corresponds to ``inst_weight = 0.3 / 0.7``; the default 0.3 is close to it.
    """

    n_branches_per_class: bool = False

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, inst_weight: float = 0.3, subtyping: bool = False):
        super().__init__(in_dim, n_classes)
        if k_sample < 1:
            raise ConfigError(f"k_sample must be >= 1, got {k_sample}")
        self.k_sample = int(k_sample)
        self.inst_weight = float(inst_weight)
        self.subtyping = bool(subtyping)
        n_branches = n_classes if self.n_branches_per_class else 1
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim, n_branches, dropout)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(n_classes))

    @abc.abstractmethod
    def _bag_logits(self, pooled: Tensor) -> Tensor:
        """Slide logits ``(K,)`` from the attention-pooled vectors ``(B, H)``."""

    def _forward(self, bag: Tensor) -> MILOutput:
        h = self.features(bag)
        raw = self.attention(h)  # (N, B)
        a = torch.softmax(raw, dim=0)
        pooled = a.transpose(0, 1) @ h  # (B, H)
        logits = self._bag_logits(pooled)
        branch = self.reported_class(logits) if a.shape[1] > 1 else 0
        extras = {"attention_logits": raw, "features": h}
        if a.shape[1] > 1:
            extras["class_scores"] = a
        return MILOutput(logits, a[:, branch], extras)

    def auxiliary_loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        h = output.extras["features"]
        raw = output.extras["attention_logits"]
        label = _label_index(label)
        k = min(self.k_sample, h.shape[0] // 2)
        if k < 1 or self.inst_weight == 0.0:
            return output.logits.new_zeros(())
        losses = []
        for c, clf in enumerate(self.instance_classifiers):
            scores = raw[:, c if raw.shape[1] > 1 else 0]
            if c == label:
                top = torch.topk(scores, k).indices
                bottom = torch.topk(-scores, k).indices
                idx = torch.cat([top, bottom])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            elif self.subtyping:
                idx = torch.topk(scores, k).indices
                target = torch.zeros(k, dtype=torch.long, device=h.device)
            else:
                continue
            losses.append(F.cross_entropy(clf(h[idx]).float(), target))
        return self.inst_weight * torch.stack(losses).mean()


@register_head("clam_sb")
class CLAMSB(_CLAM):
    """CLAM single-branch: one attention map shared by all classes; ``instance_scores`` = that attention.

    Parameters are those of the shared CLAM body: ``hidden_dim=512``, ``attn_dim=256``, ``dropout=0.25``,
    ``k_sample=8``, ``inst_weight=0.3``, ``subtyping=False``.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, **kwargs: Any):
        super().__init__(in_dim, n_classes, **kwargs)
        self.classifier = nn.Linear(self.attention.value.in_features, n_classes)

    def _bag_logits(self, pooled: Tensor) -> Tensor:
        return self.classifier(pooled[0])


@register_head("clam_mb")
class CLAMMB(_CLAM):
    """CLAM multi-branch: one attention map and one bag classifier per class.

    ``instance_scores`` are the attention of the reported class; ``extras["class_scores"]`` holds all
    ``(N, K)`` maps. Parameters as :class:`CLAMSB`.
    """

    n_branches_per_class = True

    def __init__(self, in_dim: int, n_classes: int = 2, **kwargs: Any):
        super().__init__(in_dim, n_classes, **kwargs)
        hidden = self.attention.value.in_features
        # Class k is scored only from its own pooled vector: a per-class weight row and bias.
        self.class_weight = nn.Parameter(torch.empty(n_classes, hidden))
        self.class_bias = nn.Parameter(torch.empty(n_classes))
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(self.class_weight, -bound, bound)
        nn.init.uniform_(self.class_bias, -bound, bound)

    def _bag_logits(self, pooled: Tensor) -> Tensor:
        return (pooled * self.class_weight).sum(dim=1) + self.class_bias
