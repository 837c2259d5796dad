"""DSMIL (Li, Li and Eliceiri, CVPR 2021): dual-stream MIL with a critical instance and attention to it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from .base import MILHead, MILOutput, _label_index
from .registry import register_head

__all__ = ["DSMIL"]


@register_head("dsmil")
class DSMIL(MILHead):
    """Dual-stream MIL (Li, Li & Eliceiri, CVPR 2021), as the reference code ``binli123/dsmil-wsi`` trains it.

    Outputs are per-class **sigmoids**, as in the reference: class 0 is the negative class (the reference's
    all-zeros target) and classes ``1 .. K-1`` get one logit each, so ``C = K - 1`` outputs (one for a binary
    task). With ``x`` the ``(N, D)`` bag:

    * instance stream: ``c = x W_i^T + b_i`` ``(N, C)``; ``max_c = max_i c_i`` ``(C,)``;
    * bag stream: the critical instance of each class ``m_c = argmax_i c_ic``; ``Q = q(x)`` ``(N, 128)`` with
      ``q = Linear → ReLU → Linear → Tanh``; ``A = softmax_N(Q Q[m]^T / sqrt(128))`` ``(N, C)``;
      ``B = A^T V`` with ``V = x`` (the reference's default ``passing_v=False``; ``passing_v=True`` uses
      ``V = ReLU(Linear(Dropout_v(x)))``); ``s = Conv1d(C, C, kernel=D)(B)`` ``(C,)``.

    To keep the ``(K,)``-logit interface of every head, the slide logits are ``[0, s_1, …, s_{K-1}]``: for a
    binary task ``softmax([0, s])[1] = sigmoid(s)`` and ``CE([0, s], y) = BCE(s, y)``, so probabilities,
    calibration and metrics downstream are exactly the reference's sigmoid outputs.

    ``loss`` is the reference's ``bag_weight * BCE(s, y) + (1 - bag_weight) * BCE(max_c, y)`` with
    ``bag_weight = 0.5`` (each BCE a mean over the ``C`` outputs, targets one-hot over classes ``1..K-1``).
    ``combine`` sets the test-time score: ``"bag"`` (the reference's default, ``--average`` off) reports the
    bag stream ``s``; ``"mean"`` reports the probability average ``0.5 (sigmoid(s) + sigmoid(max_c))`` of the two
    streams (the reference's ``--average``), returned as its log-odds. Weights are initialised as the reference's
    training script does: orthogonal matrices, zero biases.

    ``instance_scores`` are the attention ``A`` of the reported class (class 1 for binary tasks, else the most
    likely positive class); ``extras`` hold ``attention (N, C)``, ``instance_logits (N, C)``,
    ``bag_logits (C,)``, ``max_instance_logits (C,)`` and ``class_scores (N, K)``: ``A`` with a NaN column in
    front for class 0, the negative class, which has no stream and so no attention.

    Remaining deviations from the reference
    ---------------------------------------
    * With ``K > 2`` classes the slide logits ``[0, s_1, …]`` go through a softmax downstream (probabilities sum
      to 1), whereas the reference reports ``K - 1`` independent sigmoids; the loss is the reference's BCE.
    * ``combine="mean"`` uses the older reference's 0.5/0.5 average; the current reference's ``--average`` sums the
      two sigmoids (a score in [0, 2], not a probability), which ranks slides identically.
    * No decision threshold is chosen here (the reference picks Youden's J on validation data); the
      optimiser, schedule and early stopping are the shared ones of :mod:`slidestream.mil.train` (the reference:
      Adam(1e-4, betas (0.5, 0.9), L2 1e-3), cosine per epoch, 50 epochs, patience 10 on (AUC + accuracy) / 2).
    * ``dropout_patches`` (off by default in the reference) is not implemented; training may sub-sample very large
      bags (``TrainConfig.max_instances``).

    Parameters
    ----------
    in_dim, n_classes : int
        Feature dimension ``D`` and number of classes ``K``.
    query_dim : int, default 128
        Width of the query network (hard-coded 128 in the reference).
    nonlinear_q : bool, default True
        ``Linear → ReLU → Linear → Tanh`` query network; False: a single ``Linear``.
    passing_v : bool, default False
        Project values with ``Dropout(dropout_v) → Linear(D, D) → ReLU`` instead of using the features.
    dropout_v : float, default 0.0
        Dropout of the value projection (only with ``passing_v``).
    combine : {"bag", "mean"}, default "bag"
        Test-time score (see above).
    bag_weight : float, default 0.5
        Weight of the bag-stream loss; the max-instance loss gets ``1 - bag_weight``.
    """

    class_score_kind = "attention"

    def __init__(self, in_dim: int, n_classes: int = 2, query_dim: int = 128, nonlinear_q: bool = True,
                 passing_v: bool = False, dropout_v: float = 0.0, combine: str = "bag", bag_weight: float = 0.5):
        super().__init__(in_dim, n_classes)
        if combine not in ("bag", "mean"):
            raise ConfigError(f"combine must be 'bag' or 'mean', got {combine!r}")
        if not 0.0 <= bag_weight <= 1.0:
            raise ConfigError(f"bag_weight must be in [0, 1], got {bag_weight}")
        self.n_outputs = n_classes - 1
        self.combine = combine
        self.bag_weight = float(bag_weight)
        self.query_dim = int(query_dim)
        self.instance_classifier = nn.Linear(in_dim, self.n_outputs)
        if nonlinear_q:
            self.query: nn.Module = nn.Sequential(nn.Linear(in_dim, query_dim), nn.ReLU(),
                                                  nn.Linear(query_dim, query_dim), nn.Tanh())
        else:
            self.query = nn.Linear(in_dim, query_dim)
        if passing_v:
            self.value: nn.Module = nn.Sequential(nn.Dropout(dropout_v), nn.Linear(in_dim, in_dim), nn.ReLU())
        else:
            self.value = nn.Identity()
        # The reference's Conv1d(C, C, kernel_size=D) over the (C, D) pooled matrix: every class's logit reads
        # every class's pooled vector.
        self.bag_classifier = nn.Conv1d(self.n_outputs, self.n_outputs, kernel_size=in_dim)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.orthogonal_(module.weight)
                nn.init.zeros_(module.bias)

    def _forward(self, bag: Tensor) -> MILOutput:
        inst_logits = self.instance_classifier(bag)  # (N, C)
        critical = inst_logits.detach().argmax(dim=0)  # (C,)
        q = self.query(bag)  # (N, q)
        a = torch.softmax((q @ q[critical].transpose(0, 1)) / math.sqrt(self.query_dim), dim=0)  # (N, C)
        pooled = a.transpose(0, 1) @ self.value(bag)  # (C, D)
        bag_logits = self.bag_classifier(pooled[None])[0, :, 0]  # (C,)
        max_logits = inst_logits.max(dim=0).values  # (C,)
        scores = bag_logits
        if self.combine == "mean":
            # log-odds of 0.5 (sigmoid(s) + sigmoid(m)), computed in log space so saturated streams stay finite
            s, m = bag_logits.float(), max_logits.float()
            scores = (torch.logaddexp(F.logsigmoid(s), F.logsigmoid(m))
                      - torch.logaddexp(F.logsigmoid(-s), F.logsigmoid(-m)))
        logits = torch.cat([scores.new_zeros(1), scores])
        column = int(scores.detach().argmax()) if self.n_outputs > 1 else 0
        extras = {"attention": a, "instance_logits": inst_logits, "bag_logits": bag_logits,
                  "max_instance_logits": max_logits,
                  "class_scores": torch.cat([torch.full_like(a[:, :1], float("nan")), a], dim=1)}
        return MILOutput(logits, a[:, column], extras)

    def loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        """``bag_weight * BCE(bag stream) + (1 - bag_weight) * BCE(max instance)``, float32, as the reference."""
        target = output.logits.new_zeros(self.n_outputs, dtype=torch.float32)
        y = _label_index(label)
        if y > 0:
            target[y - 1] = 1.0
        bag = F.binary_cross_entropy_with_logits(output.extras["bag_logits"].float(), target)
        inst = F.binary_cross_entropy_with_logits(output.extras["max_instance_logits"].float(), target)
        return self.bag_weight * bag + (1.0 - self.bag_weight) * inst
