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


def smooth_top1_svm_loss(logits: Tensor, target: Tensor, alpha: float = 1.0, tau: float = 1.0) -> Tensor:
    """Smooth top-1 multiclass SVM loss (Berrada et al., ICLR 2018), as ``topk.svm.SmoothTop1SVM`` computes it.

    With ``delta_j = alpha [j != y]``, per sample ``tau * log sum_j exp((x_j + delta_j - x_y) / tau)`` (smooth),
    switched to the hard hinge ``max_j (x_j + delta_j) - x_y`` where the top score leads the second by at least
    ``tau * ln(1000)`` (the reference's numerical switch, decided on detached scores); the mean over samples.
    For two classes the smooth loss is ``softplus(1 - (x_y - x_other))``: cross-entropy with a unit margin.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, K)`` float scores, ``K >= 2``.
    target : torch.Tensor
        ``(B,)`` int64 classes.
    alpha, tau : float, default 1.0
        Margin and smoothing temperature (CLAM uses the defaults).

    Returns
    -------
    torch.Tensor
        Scalar float32 loss.
    """
    x = logits.float()
    k = x.shape[1]
    delta = alpha * (torch.arange(k, device=x.device)[None, :] != target[:, None]).float()
    x_y = x.gather(1, target[:, None])
    smooth = tau * torch.logsumexp((x + delta - x_y) / tau, dim=1)
    hard_value = (x + delta).max(dim=1).values - x_y[:, 0]
    top2 = x.detach().topk(2, dim=1).values
    hard = (top2[:, 0] - top2[:, 1]) >= tau * math.log(1000.0)
    return torch.where(hard, hard_value, smooth).mean()


class _CLAM(MILHead):
    """Shared body of CLAM-SB and CLAM-MB (Lu et al., Nat. Biomed. Eng. 2021), as ``mahmoodlab/CLAM`` builds it.

    ``h = Dropout(ReLU(Linear(x)))`` (512 wide); gated attention ``w^T (Dropout(tanh(V h)) * Dropout(sigmoid(U h)))``
    with one branch (SB) or one per class (MB), softmax over instances; pooled ``M = A h``; one binary instance
    classifier per class.

    ``loss`` is the reference's ``bag_weight * CE(logits, y) + (1 - bag_weight) * L_inst`` (``bag_weight = 0.7``).
    Instance clustering: for the true class, the ``k_sample`` most and ``k_sample`` least attended instances of its
    branch are pseudo-labelled 1 and 0 and scored by that class's instance classifier; with ``subtyping=True``
    the ``k_sample`` most attended instances of every other class's branch are pseudo-labelled 0 by that class's
    classifier, and the terms are averaged over classes (the reference's sum / C). ``inst_loss`` is ``"svm"``
    (default: the smooth top-1 SVM of :func:`smooth_top1_svm_loss`, the setting of CLAM's published commands,
    ``--inst_loss svm``) or ``"ce"`` (cross-entropy, CLAM's argparse default).

    ``k_sample`` is fixed, as in the reference: a bag with at least ``k_sample`` instances uses exactly ``k``
    (for ``k <= N < 2k`` the most and least attended sets overlap, as they do in the reference); a bag with fewer
    than ``k_sample`` instances, which the reference cannot train on (``torch.topk`` fails), gets no instance
    term: its loss is ``bag_weight * CE``.

    Remaining deviations from the reference
    ---------------------------------------
    * The attention dropouts use ``dropout`` (default 0.25); the reference always uses 0.25 there when dropout is
      on, whatever its ``--drop_out`` value.
    * The optimiser, schedule and early stopping are the shared ones of :mod:`slidestream.mil.train` (the
      reference: Adam(2e-4, L2 1e-5), constant LR, up to 200 epochs, patience 20 after epoch 50 on the validation
      bag loss); class balance comes from ``TrainConfig.balance`` (the reference's ``--weighted_sample``).
    * ``bag_loss="svm"`` of the reference is not offered; training may sub-sample very large bags
      (``TrainConfig.max_instances``), which changes which instances the top-k picks.
    """

    n_branches_per_class: bool = False

    def __init__(self, in_dim: int, n_classes: int = 2, hidden_dim: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, bag_weight: float = 0.7, inst_loss: str = "svm",
                 subtyping: bool = False, gated: bool = True):
        super().__init__(in_dim, n_classes)
        if k_sample < 1:
            raise ConfigError(f"k_sample must be >= 1, got {k_sample}")
        if not 0.0 <= bag_weight <= 1.0:
            raise ConfigError(f"bag_weight must be in [0, 1], got {bag_weight}")
        if inst_loss not in ("svm", "ce"):
            raise ConfigError(f"inst_loss must be 'svm' or 'ce', got {inst_loss!r}")
        self.k_sample = int(k_sample)
        self.bag_weight = float(bag_weight)
        self.inst_loss = inst_loss
        self.subtyping = bool(subtyping)
        n_branches = n_classes if self.n_branches_per_class else 1
        self.features = _feature_mlp(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attn_dim, n_branches, dropout, gated)
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

    def instance_loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        """The instance-clustering loss ``L_inst`` of one bag (float32 scalar; 0 for bags under ``k_sample``)."""
        h = output.extras["features"]
        raw = output.extras["attention_logits"]
        label = _label_index(label)
        k = self.k_sample
        if h.shape[0] < k:
            return output.logits.new_zeros((), dtype=torch.float32)
        loss_fn = smooth_top1_svm_loss if self.inst_loss == "svm" else F.cross_entropy
        losses = []
        for c, clf in enumerate(self.instance_classifiers):
            # top-k of the raw scores = top-k of the softmaxed attention the reference ranks
            scores = raw[:, c if raw.shape[1] > 1 else 0]
            if c == label:
                idx = torch.cat([torch.topk(scores, k).indices, torch.topk(-scores, k).indices])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            elif self.subtyping:
                idx = torch.topk(scores, k).indices
                target = torch.zeros(k, dtype=torch.long, device=h.device)
            else:
                continue
            losses.append(loss_fn(clf(h[idx]).float(), target))
        return torch.stack(losses).mean()

    def loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        """``bag_weight * CE(logits, label) + (1 - bag_weight) * instance_loss``, float32."""
        bag = super().loss(output, label)
        return self.bag_weight * bag + (1.0 - self.bag_weight) * self.instance_loss(output, label)


@register_head("clam_sb")
class CLAMSB(_CLAM):
    """CLAM single-branch: one attention map shared by all classes; ``instance_scores`` = that attention.

    Parameters are those of the shared CLAM body: ``hidden_dim=512``, ``attn_dim=256``, ``dropout=0.25``,
    ``k_sample=8``, ``bag_weight=0.7``, ``inst_loss="svm"``, ``subtyping=False``, ``gated=True``.
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
    ``(N, K)`` maps. The reference's ``K`` separate ``Linear(H, 1)`` bag classifiers are held as one ``(K, H)``
    weight and ``(K,)`` bias with the same initialisation (the maths is the same; parameter names differ from the
    reference's state dict). Parameters as :class:`CLAMSB`.
    """

    n_branches_per_class = True
    class_score_kind = "attention"

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
