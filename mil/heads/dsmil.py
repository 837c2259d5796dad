"""DSMIL (Li, Li and Eliceiri, CVPR 2021): dual-stream MIL with a critical instance and attention to it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MILHead, MILOutput, _feature_mlp, _label_index
from .registry import register_head


@register_head("dsmil")
class DSMIL(MILHead):
    """Dual-stream MIL (Li, Li & Eliceiri, CVPR 2021).

    Instance stream: ``c = W_i h`` per instance; its max over instances gives ``extras["max_instance_logits"]``.
    Bag stream: the critical instance of each class (arg-max of ``c``) is the query; attention
    ``A = softmax_N(q(h) q(h_crit)^T / sqrt(d_q))`` pools values ``v(h)`` per class, and a linear layer over the
    ``(K, H)`` pooled matrix (the paper's 1-D convolution spanning the whole embedding) gives ``logits``.

    ``auxiliary_loss`` is ``max_instance_weight * CE(max_instance_logits)``, so training optimises both streams
    as in the paper; ``logits`` are the bag stream (average with the max-instance logits for the paper's
    combined test score). ``instance_scores`` are the attention of the reported class;
    ``extras["class_scores"]`` holds ``A (N, K)``.

    Parameters
    ----------
    in_dim, n_classes : int
    hidden_dim : int, default 256
        Width of the feature MLP.
    query_dim : int, default 128
    dropout : float, default 0.25
    max_instance_weight : float, default 1.0
    """

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 256, query_dim: int = 128,
                 dropout: float = 0.25, max_instance_weight: float = 1.0):
        super().__init__(in_dim, n_classes)
        self.max_instance_weight = float(max_instance_weight)
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.instance_classifier = nn.Linear(hidden_dim, n_classes)
        self.query = nn.Sequential(nn.Linear(hidden_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim),
                                   nn.Tanh())
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.bag_classifier = nn.Linear(n_classes * hidden_dim, n_classes)
        self.query_scale = query_dim ** -0.5

    def _forward(self, bag: Tensor) -> MILOutput:
        h = self.features(bag)
        inst_logits = self.instance_classifier(h)  # (N, K)
        critical = inst_logits.detach().argmax(dim=0)  # (K,)
        q = self.query(h)
        a = torch.softmax((q @ q[critical].transpose(0, 1)) * self.query_scale, dim=0)  # (N, K)
        pooled = a.transpose(0, 1) @ self.value(h)  # (K, H)
        logits = self.bag_classifier(pooled.reshape(-1))
        extras = {"max_instance_logits": inst_logits.max(dim=0).values, "instance_logits": inst_logits,
                  "class_scores": a}
        return MILOutput(logits, a[:, self.reported_class(logits)], extras)

    def auxiliary_loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        target = torch.tensor([_label_index(label)], device=output.logits.device)
        return self.max_instance_weight * F.cross_entropy(output.extras["max_instance_logits"][None].float(), target)
