"""Inference with trained MIL heads and fold ensembles: slide logits, probabilities and instance scores.

``bags`` arguments are any sequence with ``len()`` and ``bags[i]`` returning an array-like ``(N_i, D)`` (NumPy,
float16 accepted), read one at a time. ``feature_norms`` (one :class:`FeatureNorm` per ensemble member, or one
for a single head) standardise each bag for each member before it is scored, as the member was trained.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .heads import MILEnsemble, MILHead
from .standardize import FeatureNorm

__all__ = ["ClassPrediction", "predict", "predict_classes", "predict_ensemble", "predict_logits"]


def _to_tensor(bag: Any, in_dim: int | None, device: torch.device) -> torch.Tensor:
    arr = np.asarray(bag)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ConfigError(f"every bag must be a non-empty (N, D) array, got shape {arr.shape}")
    if in_dim is not None and arr.shape[1] != in_dim:
        raise ConfigError(f"bags have different feature sizes ({arr.shape[1]} vs {in_dim}); use one encoder")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)


@contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    """Pin torch's intra-op threads for the block (None: leave as is), then restore."""
    prev = torch.get_num_threads()
    try:
        if num_threads is not None:
            if num_threads < 1:
                raise ConfigError(f"num_threads must be >= 1 or None, got {num_threads}")
            torch.set_num_threads(num_threads)
        yield
    finally:
        torch.set_num_threads(prev)


#: Training / inference precisions of the MIL heads (``TrainConfig.precision``).
PRECISIONS = ("auto", "float32", "bfloat16")


def _autocast(device: torch.device, amp: bool | str):
    """bfloat16 autocast: ``True`` on CUDA only (CPU stays float32), ``"bfloat16"`` on every device (fast on CPUs
    with AMX-BF16), ``False`` / ``"float32"`` nowhere."""
    if amp == "bfloat16" or (amp is True and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def amp_mode(precision: str, amp: bool = True) -> bool | str:
    """The ``amp`` argument of the inference functions for a :data:`PRECISIONS` value: "auto" keeps ``amp``
    (bfloat16 on CUDA only), "float32" turns autocast off, "bfloat16" turns it on on every device."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return {"auto": bool(amp), "float32": False, "bfloat16": "bfloat16"}[precision]


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _model_input(model: MILHead | MILEnsemble, bag: Any, device: torch.device,
                 feature_norms: Sequence[FeatureNorm] | None) -> torch.Tensor | list[torch.Tensor]:
    """The bag as the model takes it: one tensor, or with ``feature_norms`` one standardised tensor per member."""
    if feature_norms is None:
        return _to_tensor(bag, model.in_dim, device)
    n_members = len(model.members) if isinstance(model, MILEnsemble) else 1
    if len(feature_norms) != n_members:
        raise ConfigError(f"got {len(feature_norms)} feature normalisers for a model of {n_members} member(s)")
    arr = np.asarray(bag)
    inputs = [_to_tensor(norm.apply(arr), model.in_dim, device) for norm in feature_norms]
    return inputs if isinstance(model, MILEnsemble) else inputs[0]


@torch.no_grad()
def _evaluate(model: MILHead | MILEnsemble, bags: Sequence, device: torch.device, amp: bool,
              feature_norms: Sequence[FeatureNorm] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    model.eval()
    logits, scores = [], []
    for i in range(len(bags)):
        with _autocast(device, amp):
            out = model(_model_input(model, bags[i], device, feature_norms))
        logits.append(out.logits.float().cpu().numpy())
        scores.append(out.instance_scores.float().cpu().numpy())
    return np.stack(logits).astype(np.float32), scores


def predict_logits(model: MILHead | MILEnsemble, bags: Sequence, *, amp: bool = False,
                   num_threads: int | None = None, feature_norms: Sequence[FeatureNorm] | None = None
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Slide logits and instance scores for each bag, on the model's device, in eval mode.

    ``num_threads`` pins torch's CPU threads for the call (None: leave as is). MIL heads run small matrix
    products, for which one thread is usually fastest and several threads on a busy machine are much slower.
    ``feature_norms`` (one per member; one for a single head) standardise each bag for each member first.

    Returns
    -------
    logits : numpy.ndarray
        ``(n, K)`` float32 (for an ensemble: log of the mean member probability over its temperature).
    instance_scores : list of numpy.ndarray
        ``n`` float32 arrays ``(N_i,)``.
    """
    if len(bags) == 0:
        return np.zeros((0, model.n_classes), dtype=np.float32), []
    with _threads(num_threads):
        return _evaluate(model, bags, _model_device(model), amp, feature_norms)


def predict(model: MILHead | MILEnsemble, bags: Sequence, *, temperature: float | None = None,
            amp: bool = False, num_threads: int | None = None,
            feature_norms: Sequence[FeatureNorm] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Probability of class 1 and instance scores for each bag.

    Parameters
    ----------
    model : MILHead or MILEnsemble
    bags : sequence of array_like
        ``(N_i, D)`` bags.
    temperature : float, optional
        Softmax temperature; defaults to ``model.temperature`` (1.0 unless calibrated / loaded). For an
        ensemble it divides the log of the members' mean probability (after averaging).
    amp : bool, default False
        bfloat16 autocast on CUDA.
    num_threads : int, optional
        CPU threads for the call, as in :func:`predict_logits`.
    feature_norms : sequence of FeatureNorm, optional
        Per-member feature normalisers, as in :func:`predict_logits`.

    Returns
    -------
    probs : numpy.ndarray
        ``(n,)`` float64 probability of class 1 (for ``K > 2`` use :func:`predict_logits`).
    instance_scores : list of numpy.ndarray
        ``n`` float32 arrays ``(N_i,)``.
    """
    t = float(getattr(model, "temperature", 1.0) if temperature is None else temperature)
    if not t > 0:
        raise ConfigError(f"temperature must be > 0, got {t}")
    if isinstance(model, MILEnsemble):
        saved, model.temperature = model.temperature, t
        try:
            logits, scores = predict_logits(model, bags, amp=amp, num_threads=num_threads,
                                            feature_norms=feature_norms)
        finally:
            model.temperature = saved
        t = 1.0
    else:
        logits, scores = predict_logits(model, bags, amp=amp, num_threads=num_threads, feature_norms=feature_norms)
    probs = torch.softmax(torch.from_numpy(logits).double() / t, dim=1).numpy()
    return probs[:, 1], scores


def predict_ensemble(models: MILEnsemble | MILHead | Sequence[MILHead], bags: Sequence, *,
                     temperature: float | None = None, amp: bool = False, num_threads: int | None = None,
                     feature_norms: Sequence[FeatureNorm] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Ensemble probability of class 1 and the members' spread (``temperature``, ``amp``, ``num_threads``,
    ``feature_norms`` as in :func:`predict`); :func:`predict_classes` gives every class.

    Returns
    -------
    probability : numpy.ndarray
        ``(n,)`` float64 ensemble probability of class 1: the members' mean probability, calibrated by
        ``temperature`` after averaging (the plain mean at ``temperature=1``).
    std : numpy.ndarray
        ``(n,)`` float64 standard deviation of the members' uncalibrated class-1 probabilities (an uncertainty;
        0 for a single member).
    instance_scores : list of numpy.ndarray
        ``n`` float32 arrays ``(N_i,)``, mean over members.
    """
    pred = predict_classes(models, bags, temperature=temperature, amp=amp, num_threads=num_threads,
                           feature_norms=feature_norms)
    return pred.calibrated[:, 1].copy(), pred.spread[:, 1].copy(), pred.instance_scores


@dataclass
class ClassPrediction:
    """What :func:`predict_classes` returns for ``n`` bags of a ``K``-class ensemble.

    Attributes
    ----------
    probability : numpy.ndarray
        ``(n, K)`` float64 members' mean class probabilities (uncalibrated).
    calibrated : numpy.ndarray
        ``(n, K)`` float64 ``softmax(log(probability) / T)``: the temperature applied after averaging.
    spread : numpy.ndarray
        ``(n, K)`` float64 standard deviation of the members' uncalibrated probabilities (0 for one member).
    instance_scores : list of numpy.ndarray
        ``n`` float32 ``(N_i,)``: the members' mean instance scores (each member's reported class).
    class_scores : list of numpy.ndarray or None
        ``n`` float32 ``(N_i, K)``: the members' mean per-class tile scores, for heads that have them
        (``class_score_kind``); None otherwise.
    """

    probability: np.ndarray
    calibrated: np.ndarray
    spread: np.ndarray
    instance_scores: list[np.ndarray]
    class_scores: list[np.ndarray] | None


def predict_classes(models: MILEnsemble | MILHead | Sequence[MILHead], bags: Sequence, *,
                    temperature: float | None = None, amp: bool = False, num_threads: int | None = None,
                    feature_norms: Sequence[FeatureNorm] | None = None) -> ClassPrediction:
    """Every class's ensemble probability, before and after the temperature, from one forward pass per bag.

    ``temperature`` defaults to the ensemble's (a single head's for one head); ``amp``, ``num_threads`` and
    ``feature_norms`` as in :func:`predict`. ``calibrated`` equals what :func:`predict_ensemble` returns for that
    temperature, ``probability`` what it returns at ``temperature=1``.
    """
    if isinstance(models, MILHead):
        ens = MILEnsemble([models], temperature=models.temperature)
    else:
        ens = models if isinstance(models, MILEnsemble) else MILEnsemble(list(models))
    t = float(ens.temperature if temperature is None else temperature)
    if not t > 0:
        raise ConfigError(f"temperature must be > 0, got {t}")
    device = _model_device(ens)
    raw, cal, std, scores, class_scores = [], [], [], [], []
    saved, ens.temperature = ens.temperature, 1.0
    try:
        ens.eval()
        with torch.no_grad(), _threads(num_threads):
            for i in range(len(bags)):
                with _autocast(device, amp):
                    out = ens(_model_input(ens, bags[i], device, feature_norms))
                # out.logits is log(mean member probability) (temperature 1); dividing it by t is exactly what
                # the ensemble computes at temperature t.
                raw.append(torch.softmax(out.logits.double(), dim=0).cpu().numpy())
                cal.append(torch.softmax((out.logits / t).double(), dim=0).cpu().numpy())
                std.append(out.extras["member_probs"].double().std(0, unbiased=False).cpu().numpy())
                scores.append(out.instance_scores.float().cpu().numpy())
                if "class_scores" in out.extras:
                    class_scores.append(out.extras["class_scores"].float().cpu().numpy())
    finally:
        ens.temperature = saved
    k = ens.n_classes
    shape = (len(raw), k)
    return ClassPrediction(np.asarray(raw).reshape(shape), np.asarray(cal).reshape(shape),
                           np.asarray(std).reshape(shape), scores,
                           class_scores if len(class_scores) == len(raw) and class_scores else None)
