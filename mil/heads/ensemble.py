"""Several trained heads of one architecture (cross-validation folds) used as one model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .base import MILHead, MILOutput

__all__ = ["MILEnsemble"]


class MILEnsemble(nn.Module):
    """Several heads of one architecture (e.g. cross-validation folds) used as one model.

    ``forward`` returns a :class:`MILOutput` whose ``logits`` are ``log(mean_m softmax(z_m)) / temperature``: the
    log of the members' mean class probability, divided by the temperature *after* averaging, so
    ``softmax(logits)`` is the calibrated ensemble probability and the temperature changes neither its ranking
    nor its arg-max (see :mod:`slidestream.mil.calibration` for why the temperature applies here).
    ``instance_scores`` are the members' mean; ``extras["member_probs"] (M, K)`` are the members' (uncalibrated)
    probabilities and ``extras["prob_std"] (K,)`` their standard deviation (an uncertainty); for heads with
    per-class tile scores ``extras["class_scores"] (N, K)`` is the members' mean of theirs.
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

    @property
    def class_score_kind(self) -> str | None:
        return self.members[0].class_score_kind

    def forward(self, bag: Tensor | Sequence[Tensor]) -> MILOutput:
        """Score one bag with every member.

        Parameters
        ----------
        bag : torch.Tensor or sequence of torch.Tensor
            ``(N, D)`` float, shared by all members, or one ``(N, D)`` tensor per member (the same instances
            standardised with each member's own feature normaliser).
        """
        if isinstance(bag, (list, tuple)):
            if len(bag) != len(self.members):
                raise ConfigError(f"got {len(bag)} member inputs for an ensemble of {len(self.members)}")
            outs = [m(b) for m, b in zip(self.members, bag)]
        else:
            outs = [m(bag) for m in self.members]
        probs = torch.stack([torch.softmax(o.logits.float(), dim=0) for o in outs])
        mean = probs.mean(0)
        std = probs.std(0, unbiased=False)
        scores = torch.stack([o.instance_scores.float() for o in outs]).mean(0)
        logits = torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny)) / self.temperature
        extras = {"prob_std": std, "member_probs": probs}
        if all("class_scores" in o.extras for o in outs):
            extras["class_scores"] = torch.stack([o.extras["class_scores"].float() for o in outs]).mean(0)
        return MILOutput(logits, scores, extras)
