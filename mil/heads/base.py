"""Multiple-instance learning heads: one bag of tile features in, slide logits and per-tile scores out.

A *bag* is the feature matrix of one slide, a float tensor of shape ``(N, D)`` (``N`` tiles, ``D`` encoder
dimensions). Every head maps it to a :class:`MILOutput` with slide ``logits`` of shape ``(K,)`` and
``instance_scores`` of shape ``(N,)`` (attention weights or instance probabilities, for heatmaps). Heads are
built by name through one registry (:mod:`slidestream.mil.heads.registry`).

Conventions shared by all heads
-------------------------------
* ``instance_scores`` describe the *reported class*: class 1 when ``n_classes == 2`` (so heatmaps always show
  the evidence for "tumour" whatever the slide's prediction), otherwise the predicted class.
* Heads with a score per tile and class put the ``(N, K)`` matrix in ``extras["class_scores"]`` and say what it
  is in ``class_score_kind``: ``"attention"`` (CLAM-MB: one attention branch per class; DSMIL: the attention to
  each positive class's critical instance, NaN for class 0, which has no stream) or ``"probability"`` (mean and
  max pooling: each tile's class probabilities). ABMIL, CLAM-SB and TransMIL have one attention map for all
  classes and no per-class tile scores (``class_score_kind`` None).
* The whole training loss of one bag comes from ``head.loss(output, label)``: cross-entropy of the slide
  logits by default; heads whose reference trains with other or extra terms (CLAM's instance clustering,
  DSMIL's max-instance stream) override it with their reference's weights, so the training loop has no
  per-head cases.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError

__all__ = ["GatedAttention", "MILHead", "MILOutput"]

@dataclass
class MILOutput:
    """What a head returns for one bag.

    Attributes
    ----------
    logits : torch.Tensor
        ``(K,)`` float, unnormalised slide-level class scores.
    instance_scores : torch.Tensor
        ``(N,)`` float, one score per instance for the reported class (see module docstring).
    extras : dict of str to torch.Tensor
        Head-specific intermediate tensors (attention logits, instance logits, features) that
        ``loss`` and heatmap code may use.
    """

    logits: Tensor
    instance_scores: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class MILHead(nn.Module, abc.ABC):
    """Base class of all heads: holds ``in_dim``, ``n_classes`` and the registry name and kwargs.

    Subclasses implement ``_forward(bag)`` on a validated ``(N, D)`` tensor.
    """

    head_name: str = ""
    #: What ``extras["class_scores"]`` holds (module docstring); None for heads without per-class tile scores.
    class_score_kind: str | None = None

    def __init__(self, in_dim: int, n_classes: int = 2):
        super().__init__()
        if int(in_dim) < 1:
            raise ConfigError(f"in_dim must be >= 1, got {in_dim}")
        if int(n_classes) < 2:
            raise ConfigError(f"n_classes must be >= 2 (use 2 for binary tasks), got {n_classes}")
        self.in_dim = int(in_dim)
        self.n_classes = int(n_classes)
        # Filled in by get_head so a checkpoint can rebuild the exact same module.
        self.head_kwargs: dict[str, Any] = {}
        # Softmax temperature used by predict(); set from a checkpoint or after calibration.
        self.temperature: float = 1.0

    def forward(self, bag: Tensor) -> MILOutput:
        """Score one bag.

        Parameters
        ----------
        bag : torch.Tensor
            ``(N, D)`` float (a leading batch axis of size 1 is accepted and dropped).

        Returns
        -------
        MILOutput
            ``logits (K,)``, ``instance_scores (N,)``.
        """
        return self._forward(_check_bag(bag, self.in_dim))

    @abc.abstractmethod
    def _forward(self, bag: Tensor) -> MILOutput:
        """Score a validated ``(N, D)`` bag."""

    def loss(self, output: MILOutput, label: int | Tensor) -> Tensor:
        """Total training loss of one bag: here the cross-entropy of the slide logits.

        Parameters
        ----------
        output : MILOutput
            What :meth:`forward` returned for the bag.
        label : int or torch.Tensor
            The bag's class index in ``[0, K)``.

        Returns
        -------
        torch.Tensor
            Scalar float32 loss (nats). Heads with extra terms override this with their reference's weighting.
        """
        target = torch.tensor([_label_index(label)], device=output.logits.device)
        return F.cross_entropy(output.logits[None].float(), target)

    def reported_class(self, logits: Tensor) -> int:
        """Class described by ``instance_scores``: 1 for binary tasks, else the arg-max of ``logits``."""
        if self.n_classes == 2:
            return 1
        return int(logits.detach().argmax())


def _check_bag(bag: Tensor, in_dim: int) -> Tensor:
    if not isinstance(bag, Tensor):
        bag = torch.as_tensor(bag, dtype=torch.float32)
    if bag.ndim == 3 and bag.shape[0] == 1:
        bag = bag[0]
    if bag.ndim != 2:
        raise ConfigError(f"a bag must be a 2-D (N, D) feature matrix, got shape {tuple(bag.shape)}")
    if bag.shape[0] == 0:
        raise ConfigError("the bag has no instances (a slide without tissue tiles?): drop it before training")
    if bag.shape[1] != in_dim:
        raise ConfigError(
            f"bag has {bag.shape[1]} features per instance but the head expects {in_dim}: "
            "use features from the encoder the head was trained with"
        )
    if not bag.is_floating_point():
        bag = bag.float()
    return bag


def _label_index(label: int | Tensor) -> int:
    return int(label.item()) if isinstance(label, Tensor) else int(label)


def _feature_mlp(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


class GatedAttention(nn.Module):
    """Gated attention scorer (Ilse et al. 2018) with CLAM's dropout placement (``Attn_Net_Gated``).

    ``w^T (drop(tanh(V h)) * drop(sigmoid(U h)))``: two independent dropout masks, one after the tanh branch
    and one after the sigmoid gate. Maps ``(N, dim)`` to raw (pre-softmax) scores ``(N, n_branches)``. With
    ``gated=False`` the gate is dropped (the paper's plain variant, CLAM's ``Attn_Net``:
    ``w^T drop(tanh(V h))``).
    """

    def __init__(self, dim: int, attn_dim: int, n_branches: int = 1, dropout: float = 0.0, gated: bool = True):
        super().__init__()
        self.value = nn.Linear(dim, attn_dim)
        self.gate = nn.Linear(dim, attn_dim) if gated else None
        self.drop_value = nn.Dropout(dropout)
        self.drop_gate = nn.Dropout(dropout)
        self.score = nn.Linear(attn_dim, n_branches)

    def forward(self, h: Tensor) -> Tensor:
        a = self.drop_value(torch.tanh(self.value(h)))
        if self.gate is not None:
            a = a * self.drop_gate(torch.sigmoid(self.gate(h)))
        return self.score(a)
