"""Baselines: mean and max pooling of instance predictions."""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from .base import MILHead, MILOutput, _feature_mlp
from .registry import register_head


class _InstancePool(MILHead):
    """Instance classifier on an optional feature MLP, pooled over instances."""

    class_score_kind = "probability"

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 128, dropout: float = 0.25):
        super().__init__(in_dim, n_classes)
        if hidden_dim:
            self.features: nn.Module = _feature_mlp(in_dim, hidden_dim, dropout)
            width = hidden_dim
        else:
            self.features = nn.Identity()
            width = in_dim
        self.classifier = nn.Linear(width, n_classes)

    @abc.abstractmethod
    def _pool(self, inst_logits: Tensor) -> Tensor:
        """Slide logits ``(K,)`` from instance logits ``(N, K)``."""

    def _forward(self, bag: Tensor) -> MILOutput:
        inst_logits = self.classifier(self.features(bag))  # (N, K)
        logits = self._pool(inst_logits)
        probs = torch.softmax(inst_logits.float(), dim=1)
        return MILOutput(logits, probs[:, self.reported_class(logits)],
                         {"instance_logits": inst_logits, "class_scores": probs})


@register_head("mean_pool")
class MeanPoolMIL(_InstancePool):
    """Mean-pooling baseline: slide logits are the mean of instance logits (= classifier on mean features).

    ``instance_scores`` are instance probabilities of the reported class. ``hidden_dim=0`` removes the feature
    MLP (a linear probe on the mean embedding).
    """

    def _pool(self, inst_logits: Tensor) -> Tensor:
        return inst_logits.mean(dim=0)


@register_head("max_pool")
class MaxPoolMIL(_InstancePool):
    """Max-pooling baseline (mi-Net style): a slide is as positive as its most positive instance.

    Class 0 is the reference ("normal"): with instance log-odds ``d_ik = z_ik - z_i0``, the slide logits are
    ``[0, max_i d_i1, ..., max_i d_i(K-1)]``, so for a binary task the slide log-odds are the largest instance
    log-odds. (Taking the max of every class's logits separately lets the class-0 maximum, driven by the
    most normal-looking tile, compete with the evidence and trains poorly.) ``instance_scores`` are instance
    probabilities of the reported class. Parameters as :class:`MeanPoolMIL` but ``dropout=0.5`` by default.
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 128, dropout: float = 0.5):
        # Heavier dropout than the other heads: without it the max picks one noise instance per training
        # bag and memorises it (seen on small synthetic sets as folds with AUC far below 0.5).
        super().__init__(in_dim, n_classes, hidden_dim, dropout)

    def _pool(self, inst_logits: Tensor) -> Tensor:
        odds = inst_logits[:, 1:] - inst_logits[:, :1]
        return torch.cat([odds.new_zeros(1), odds.max(dim=0).values])
