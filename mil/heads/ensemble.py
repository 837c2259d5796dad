"""Several trained heads of one architecture (cross-validation folds) used as one model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .base import MILHead, MILOutput

__all__ = ["MILEnsemble"]


class MILEnsemble(nn.Module):
    """Several heads of one architecture (e.g. cross-validation folds) used as one model.

    ``forward`` returns a :class:`MILOutput` whose ``logits`` are the log of the members' mean class
    probability (each member's logits divided by ``temperature`` first), so ``softmax(logits)`` is the
    ensemble probability; ``instance_scores`` are the members' mean; ``extras["prob_std"] (K,)`` is the
    standard deviation of the members' probabilities (an uncertainty) and ``extras["member_probs"] (M, K)``.
    """

    def __init__(self, members: list[MILHead] | nn.ModuleList, temperature: float = 1.0):
        super().__init__()
        members = list(members)
        if not members:
            raise ConfigError("an ensemble needs at least one member model")
        first = members[0]
        for m in members[1:]:
            if (m.head_name, m.in_dim, m.n_classes, m.head_kwargs) != (
                first.head_name, first.in_dim, first.n_classes, first.head_kwargs
            ):
                raise ConfigError("ensemble members must share head name, kwargs, in_dim and n_classes")
        self.members = nn.ModuleList(members)
        self.temperature = float(temperature)

    @property
    def head_name(self) -> str:
        return self.members[0].head_name

    @property
    def head_kwargs(self) -> dict[str, Any]:
        return self.members[0].head_kwargs

    @property
    def in_dim(self) -> int:
        return self.members[0].in_dim

    @property
    def n_classes(self) -> int:
        return self.members[0].n_classes

    def forward(self, bag: Tensor) -> MILOutput:
        outs = [m(bag) for m in self.members]
        probs = torch.stack([torch.softmax(o.logits.float() / self.temperature, dim=0) for o in outs])
        mean = probs.mean(0)
        std = probs.std(0, unbiased=False)
        scores = torch.stack([o.instance_scores.float() for o in outs]).mean(0)
        logits = torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
        return MILOutput(logits, scores, {"prob_std": std, "member_probs": probs})
