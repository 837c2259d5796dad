"""Training and cross-validation of MIL heads on in-memory (or lazily loaded) bags; the inference functions of
:mod:`slidestream.mil.inference` are re-exported here.

A bag is the ``(N, D)`` float feature matrix of one slide. ``bags`` arguments are any sequence with ``len()``
and ``bags[i]`` returning an array-like ``(N_i, D)`` (NumPy, float16 accepted); items are read when needed and
not kept, so a sequence that reads from slide stores keeps memory flat.

Training is one bag per step (bags differ in size), AdamW with a per-step cosine schedule, each bag's loss
given by its head (:meth:`MILHead.loss`: cross-entropy, or the head reference's mix of bag and instance terms).

Class balance (``TrainConfig.balance``). With one bag per step a class weight inside a mean-reduced
cross-entropy cancels (``w_y l / w_y``), so balance is applied to whole bags instead:

* ``"loss"`` (default): the bag's whole loss (bag and instance terms) is multiplied by ``w[y] / mean_i w[y_i]``,
  so the mean weight over the training set is 1 and the learning rate keeps its meaning. In expectation this is
  the same objective as the sampler, with every bag seen once an epoch and no extra gradient noise.
* ``"sampler"``: each epoch draws ``n`` bags with replacement with probability proportional to ``w[y_i]``, as CLAM's
  ``--weighted_sample`` (``WeightedRandomSampler`` with per-bag weights ``N / N_class``); bags are unweighted.
* ``"none"``: every bag once an epoch, unweighted.

``w`` is ``N / (K * N_k)`` for ``class_weight="balanced"`` or the given per-class weights.

Reproducibility: inside :func:`train_head` the global torch RNG is
forked and seeded with ``config.seed`` (the caller's RNG state is restored afterwards), bag order and bag
sub-sampling use a NumPy generator seeded from it, ``deterministic=True`` turns on
``torch.use_deterministic_algorithms`` and ``num_threads`` pins the intra-op thread count for the duration.
With these, two CPU runs with the same seed give identical weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .heads import MILEnsemble, MILHead, get_head, list_heads
from ..evaluation.metrics import binary_metrics
from ..evaluation.multiclass import multiclass_metrics
from .inference import (_autocast, _evaluate, _threads, _to_tensor, amp_mode, predict, predict_ensemble,
                        predict_logits)
from .splits import Splits, check_groups_in_one_fold, group_keys, stratified_kfold
from .standardize import FeatureNorm, fit_feature_norm

__all__ = [
    "TrainConfig",
    "TrainResult",
    "CVResult",
    "train_head",
    "predict",
    "predict_logits",
    "predict_ensemble",
    "cross_validate",
]

ProgressFn = Callable[[int, int, dict[str, Any]], None]

BALANCE_MODES = ("loss", "sampler", "none")


@dataclass
class TrainConfig:
    """How to train one head.

    Attributes
    ----------
    head : str
        Registry name (:func:`slidestream.mil.heads.list_heads`).
    head_kwargs : dict
        Hyper-parameters passed to :func:`get_head`.
    epochs : int
        Maximum passes over the training bags.
    lr, weight_decay : float
        AdamW learning rate (peak of the cosine schedule) and decoupled weight decay.
    seed : int
        Seeds initialisation, dropout, bag order and sub-sampling.
    patience : int or None
        Early stopping: stop after this many epochs without improvement of ``monitor`` on the validation bags
        and restore the best epoch's weights. None, or no validation bags, trains all epochs.
    monitor : {"val_loss", "val_auc"}
        What early stopping watches; ``val_auc`` falls back to ``val_loss`` when the validation set has one class.
    max_instances : int or None
        Training bags with more instances are randomly sub-sampled to this many each step (a fresh draw every
        epoch), bounding memory and time on very large slides; prediction always sees the whole bag.
    balance : {"loss", "sampler", "none"}
        How class balance is applied (module docstring): per-bag loss weights (default), class-balanced sampling
        with replacement (CLAM's weighted sampler), or not at all.
    class_weight : "balanced", sequence of float or None
        Per-class weights used by ``balance``: "balanced" uses ``n / (K * count_k)`` from the training labels;
        None means equal weights (so balancing changes nothing). Ignored with ``balance="none"``.
    n_classes : int or None
        Number of classes; None infers ``max(label) + 1`` (at least 2).
    device : str
        "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1" ...
    amp : bool
        bfloat16 autocast on CUDA; ignored on CPU, where training stays float32 (unless ``precision``).
    precision : {"auto", "float32", "bfloat16"}
        "auto" follows ``amp``; "float32" never autocasts; "bfloat16" autocasts on every device, CPU included:
        on CPUs with AMX-BF16 TransMIL's Nyström attention then trains about 2.5 times faster, while the small heads
        gain nothing. Weights and optimiser state stay float32 either way.
    deterministic : bool
        ``torch.use_deterministic_algorithms(True)`` during training (on CUDA this sets
        ``CUBLAS_WORKSPACE_CONFIG`` if unset).
    num_threads : int or None
        Intra-op CPU threads during training; None leaves torch's setting.
    max_grad_norm : float or None
        Gradient-norm clipping; None disables it.
    min_delta : float
        Smallest change of ``monitor`` that counts as an improvement.
    """

    head: str = "abmil"
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int | None = 5
    monitor: str = "val_loss"
    max_instances: int | None = 8192
    balance: str = "loss"
    class_weight: str | tuple[float, ...] | None = "balanced"
    n_classes: int | None = None
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"
    deterministic: bool = True
    num_threads: int | None = 1
    max_grad_norm: float | None = None
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.head.strip().lower().replace("-", "_") not in list_heads():
            raise ConfigError(f"unknown MIL head {self.head!r}; choose one of {', '.join(list_heads())}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"need lr > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be >= 1 or None, got {self.patience}")
        if self.monitor not in ("val_loss", "val_auc"):
            raise ConfigError(f"monitor must be 'val_loss' or 'val_auc', got {self.monitor!r}")
        if self.max_instances is not None and self.max_instances < 1:
            raise ConfigError(f"max_instances must be >= 1 or None, got {self.max_instances}")
        if self.balance not in BALANCE_MODES:
            raise ConfigError(f"balance must be one of {', '.join(BALANCE_MODES)}, got {self.balance!r}")
        if isinstance(self.class_weight, str) and self.class_weight != "balanced":
            raise ConfigError(f"class_weight must be 'balanced', a list of floats or None, got {self.class_weight!r}")
        if isinstance(self.class_weight, (list, tuple)):
            self.class_weight = tuple(float(w) for w in self.class_weight)
        if self.n_classes is not None and self.n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        amp_mode(self.precision)  # raises on an unknown precision

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of all fields."""
        d = dataclasses.asdict(self)
        if isinstance(d["class_weight"], tuple):
            d["class_weight"] = list(d["class_weight"])
        if d["precision"] == "auto":
            del d["precision"]  # as before the option: such checkpoints stay readable by earlier versions
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass
class TrainResult:
    """Outcome of :func:`train_head`.

    Attributes
    ----------
    model : MILHead
        Trained head (best epoch's weights when early stopping ran), in eval mode on the training device.
    history : list of dict
        One record per epoch: ``epoch`` (1-based), ``train_loss``, ``lr``, ``seconds`` and, with validation
        bags, ``val_loss`` and ``val_auc`` (NaN when undefined).
    best_epoch : int
        1-based epoch whose weights ``model`` holds.
    config : TrainConfig
    seconds : float
        Wall time of the whole training.
    """

    model: MILHead
    history: list[dict[str, float]]
    best_epoch: int
    config: TrainConfig
    seconds: float


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    Attributes
    ----------
    models : list of MILHead
        One trained head per fold.
    results : list of TrainResult
        Per-fold training results (history, best epoch).
    splits : Splits
        The folds used.
    fold_metrics : list of dict
        Metrics of each fold's model on its held-out fold.
    oof_logits : numpy.ndarray
        ``(n, K)`` float32 out-of-fold logits: each bag scored by the model that did not see it.
    oof_probs : numpy.ndarray
        ``(n,)`` float64 out-of-fold probability of class 1.
    metrics : dict
        Metrics of the pooled out-of-fold predictions.
    seconds : float
        Wall time of the whole cross-validation.
    feature_norms : list of FeatureNorm or None
        With ``standardize=True``, fold ``i``'s normaliser (fitted on its training bags only): the model of fold
        ``i`` expects ``feature_norms[i].apply(bag)``. Pass them as ``feature_norms=`` to the predict functions.
    """

    models: list[MILHead]
    results: list[TrainResult]
    splits: Splits
    fold_metrics: list[dict[str, Any]]
    oof_logits: np.ndarray
    oof_probs: np.ndarray
    metrics: dict[str, Any]
    seconds: float
    feature_norms: list[FeatureNorm] | None = None

    def ensemble(self, temperature: float = 1.0) -> MILEnsemble:
        """The fold models as one :class:`MILEnsemble` (mean probability, std as uncertainty); with
        ``feature_norms`` predict through :func:`predict_ensemble` with ``feature_norms=self.feature_norms``."""
        return MILEnsemble(self.models, temperature=temperature)


# --------------------------------------------------------------------------------------------- helpers


class _Subset(Sequence):
    """Lazy view ``bags[idx]`` that reads items only when asked (standardised by ``norm`` when given)."""

    def __init__(self, bags: Sequence, idx: np.ndarray, norm: FeatureNorm | None = None):
        self._bags, self._idx, self._norm = bags, np.asarray(idx), norm

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: int):
        bag = self._bags[int(self._idx[i])]
        return bag if self._norm is None else self._norm.apply(bag)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: use 'auto', 'cpu' or 'cuda[:i]'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device='cpu'")
    return device


def _check_labels(labels: Sequence[int], n: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ConfigError(f"{name}: need one label per bag ({n}), got shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise ConfigError(f"{name}: labels must be integer class indices")
    y = y.astype(np.int64)
    if n and y.min() < 0:
        raise ConfigError(f"{name}: labels must be non-negative class indices")
    return y


def _class_weights(config: TrainConfig, y: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K,)`` float64 per-class weights from ``config.class_weight`` (ones when None)."""
    if config.class_weight is None:
        return np.ones(n_classes)
    if config.class_weight == "balanced":
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        return np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    w = np.asarray(config.class_weight, dtype=np.float64)
    if w.shape != (n_classes,) or np.any(w < 0):
        raise ConfigError(f"class_weight needs {n_classes} non-negative values, got {config.class_weight}")
    return w


def _bag_weights(config: TrainConfig, y: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n,)`` float64 weight of each training bag, with mean 1 over the training set (all ones unless
    ``balance="loss"``) — validated for every mode so a bad ``class_weight`` fails before training."""
    w = _class_weights(config, y, n_classes)[y]
    if not w.sum() > 0:
        raise ConfigError(f"class_weight {config.class_weight} gives every training bag weight 0")
    if config.balance != "loss":
        return np.ones(len(y))
    return w / w.mean()


def _epoch_order(config: TrainConfig, y: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Bag indices of one epoch: a permutation, or with ``balance="sampler"`` ``n`` draws with replacement with
    probabilities proportional to the bags' class weights (torch's ``WeightedRandomSampler`` scheme)."""
    if config.balance == "sampler":
        p = _class_weights(config, y, n_classes)[y]
        return rng.choice(len(y), size=len(y), replace=True, p=p / p.sum())
    return rng.permutation(len(y))


@contextmanager
def _reproducible(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Seed a forked RNG and apply determinism/thread settings, restoring the caller's state afterwards."""
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        if config.deterministic:
            if device.type == "cuda":
                # cuBLAS needs a fixed workspace for reproducible matmuls; only effective before its first use.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        with _threads(config.num_threads), torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(config.seed)
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def _val_scores(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    z = torch.from_numpy(logits.astype(np.float32))
    loss = float(F.cross_entropy(z, torch.from_numpy(y)))
    probs = torch.softmax(z, dim=1).numpy()
    if logits.shape[1] == 2:
        auc = binary_metrics(y, probs[:, 1], n_bootstrap=0)["auc"]
    else:
        auc = multiclass_metrics(y, probs)["macro_auc_ovr"]
    return loss, float(auc)


# --------------------------------------------------------------------------------------------- training


def train_head(train_bags: Sequence, train_labels: Sequence[int], config: TrainConfig,
               val_bags: Sequence | None = None, val_labels: Sequence[int] | None = None,
               progress: ProgressFn | None = None) -> TrainResult:
    """Train one MIL head.

    Parameters
    ----------
    train_bags : sequence of array_like
        ``n`` bags, each ``(N_i, D)`` float; all share ``D``.
    train_labels : array_like
        ``(n,)`` integer labels in ``[0, K)``.
    config : TrainConfig
    val_bags, val_labels : optional
        Validation bags and labels, scored after every epoch; enable early stopping when
        ``config.patience`` is set.
    progress : callable, optional
        Called as ``progress(epoch, epochs, record)`` after every epoch (``record`` as in ``history``).

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        Empty or inconsistent bags/labels, labels out of range, unavailable device.
    """
    n = len(train_bags)
    if n == 0:
        raise ConfigError("no training bags")
    y = _check_labels(train_labels, n, "train_labels")
    n_classes = config.n_classes or max(2, int(y.max()) + 1)
    if y.max() >= n_classes:
        raise ConfigError(f"train_labels contain class {y.max()} but n_classes is {n_classes}")
    has_val = val_bags is not None and len(val_bags) > 0
    if has_val:
        if val_labels is None:
            raise ConfigError("val_bags given without val_labels")
        yv = _check_labels(val_labels, len(val_bags), "val_labels")
        if yv.max() >= n_classes:
            raise ConfigError(f"val_labels contain class {yv.max()} but n_classes is {n_classes}")
    device = _resolve_device(config.device)
    first = np.asarray(train_bags[0])
    if first.ndim != 2:
        raise ConfigError(f"every bag must be a (N, D) array, got shape {first.shape}")
    in_dim = int(first.shape[1])

    amp = amp_mode(config.precision, config.amp)
    t0 = time.perf_counter()
    with _reproducible(config, device):
        model = get_head(config.head, in_dim, n_classes, **config.head_kwargs).to(device)
        bag_weight = _bag_weights(config, y, n_classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = config.epochs * n
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
        rng = np.random.default_rng(config.seed)
        history: list[dict[str, float]] = []
        best_value, best_epoch, best_state, stale = math.inf, config.epochs, None, 0

        for epoch in range(1, config.epochs + 1):
            t_epoch = time.perf_counter()
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            losses = []
            for i in _epoch_order(config, y, n_classes, rng):
                bag = _to_tensor(train_bags[int(i)], in_dim, device)
                if config.max_instances is not None and bag.shape[0] > config.max_instances:
                    keep = np.sort(rng.choice(bag.shape[0], config.max_instances, replace=False))
                    bag = bag[torch.from_numpy(keep).to(device)]
                with _autocast(device, amp):
                    out = model(bag)
                    loss = model.loss(out, int(y[i])).float() * float(bag_weight[i])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            record: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": lr}

            if has_val:
                logits, _ = _evaluate(model, val_bags, device, amp)
                record["val_loss"], record["val_auc"] = _val_scores(logits, yv)
                if config.patience is not None:
                    if config.monitor == "val_auc" and math.isfinite(record["val_auc"]):
                        value = -record["val_auc"]
                    else:
                        value = record["val_loss"]
                    if value < best_value - config.min_delta:
                        best_value, best_epoch, stale = value, epoch, 0
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        stale += 1
            record["seconds"] = time.perf_counter() - t_epoch
            history.append(record)
            if progress is not None:
                progress(epoch, config.epochs, record)
            if has_val and config.patience is not None and stale >= config.patience:
                break

        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_epoch = len(history)
    model.eval()
    return TrainResult(model, history, best_epoch, config, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- CV


def cross_validate(bags: Sequence, labels: Sequence[int], config: TrainConfig, k: int = 5, *,
                   splits: Splits | None = None, groups: Sequence[str | None] | None = None,
                   standardize: bool = False, inner_val_fraction: float = 0.0,
                   n_bootstrap: int = 1000, progress: ProgressFn | None = None) -> CVResult:
    """Stratified k-fold cross-validation with out-of-fold predictions.

    Each fold's model never sees its held-out fold: with ``inner_val_fraction > 0`` early stopping uses a
    stratified inner split of the training folds; with 0 (default) every fold trains ``config.epochs`` epochs.
    With ``groups`` no patient is split between a fold's training and held-out parts (nor between its inner
    parts); with ``standardize`` each fold's features are standardised with statistics of its own training bags.
    Fold ``i`` trains with seed ``config.seed + i``.

    Parameters
    ----------
    bags : sequence of array_like
        ``n`` bags ``(N_i, D)``.
    labels : array_like
        ``(n,)`` integer labels.
    config : TrainConfig
    k : int, default 5
        Number of folds (ignored when ``splits`` is given).
    splits : Splits, optional
        Pre-computed folds (e.g. :func:`slidestream.mil.splits.read_splits`); default
        ``stratified_kfold(labels, k, seed=config.seed, groups=groups)``.
    groups : sequence of str or None, optional
        ``(n,)`` patient of each bag (None: a patient of its own); all bags of a patient share a fold.
    standardize : bool, default False
        Fit a :class:`FeatureNorm` on each fold's training bags (those the model is fitted on) and standardise
        that fold's training, early-stopping and held-out bags with it; returned as ``feature_norms``.
    inner_val_fraction : float, default 0
        Share of each training part held back for early stopping.
    n_bootstrap : int, default 1000
        Bootstrap resamples for the AUC intervals in the metrics.
    progress : callable, optional
        Called as ``progress(fold, k, fold_metrics)`` after each fold.

    Returns
    -------
    CVResult
    """
    y = _check_labels(labels, len(bags), "labels")
    if groups is not None and len(groups) != len(y):
        raise ConfigError(f"groups: need one patient per bag ({len(y)}), got {len(groups)}")
    if splits is None:
        splits = stratified_kfold(y, k, seed=config.seed, groups=groups)
    elif len(splits) != len(y) or not np.array_equal(splits.labels, y):
        raise ConfigError("splits do not match the bags' labels (different length or order)")
    elif groups is not None:
        check_groups_in_one_fold(splits.fold, group_keys(groups, len(y)))
    group_arr = None if groups is None else np.asarray(list(groups), dtype=object)
    if not 0.0 <= inner_val_fraction < 1.0:
        raise ConfigError(f"inner_val_fraction must be in [0, 1), got {inner_val_fraction}")
    n_classes = config.n_classes or max(2, int(y.max()) + 1)
    config = dataclasses.replace(config, n_classes=n_classes)

    t0 = time.perf_counter()
    oof_logits = np.full((len(y), n_classes), np.nan, dtype=np.float32)
    models, results, fold_metrics, norms = [], [], [], []
    for fold in range(splits.k):
        train_idx, val_idx = splits.indices(fold)
        fold_cfg = dataclasses.replace(config, seed=config.seed + fold)
        fit_idx, stop_idx = train_idx, np.zeros(0, dtype=np.int64)
        if inner_val_fraction > 0:
            inner_k = max(2, round(1.0 / inner_val_fraction))
            inner = stratified_kfold(y[train_idx], inner_k, seed=fold_cfg.seed,
                                     groups=None if group_arr is None else group_arr[train_idx].tolist())
            fit_pos, stop_pos = inner.indices(0)
            fit_idx, stop_idx = train_idx[fit_pos], train_idx[stop_pos]
        norm = fit_feature_norm(_Subset(bags, fit_idx)) if standardize else None
        norms.append(norm)
        result = train_head(
            _Subset(bags, fit_idx, norm), y[fit_idx], fold_cfg,
            _Subset(bags, stop_idx, norm) if len(stop_idx) else None, y[stop_idx] if len(stop_idx) else None,
        )
        logits, _ = predict_logits(result.model, _Subset(bags, val_idx, norm), num_threads=config.num_threads)
        oof_logits[val_idx] = logits
        metrics = _metrics(y[val_idx], logits, n_bootstrap, fold_cfg.seed)
        metrics["fold"] = fold
        models.append(result.model)
        results.append(result)
        fold_metrics.append(metrics)
        if progress is not None:
            progress(fold + 1, splits.k, metrics)
    probs = torch.softmax(torch.from_numpy(oof_logits).double(), dim=1).numpy()
    return CVResult(models, results, splits, fold_metrics, oof_logits, probs[:, 1],
                    _metrics(y, oof_logits, n_bootstrap, config.seed), time.perf_counter() - t0,
                    norms if standardize else None)


def _metrics(y: np.ndarray, logits: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if logits.shape[1] == 2 and y.max(initial=0) <= 1:
        return binary_metrics(y, probs[:, 1], n_bootstrap=n_bootstrap, seed=seed)
    return multiclass_metrics(y, probs, n_bootstrap=n_bootstrap, seed=seed)
