"""Training, inference and cross-validation of MIL heads on in-memory (or lazily loaded) bags.

A bag is the ``(N, D)`` float feature matrix of one slide. ``bags`` arguments are any sequence with ``len()``
and ``bags[i]`` returning an array-like ``(N_i, D)`` (NumPy, float16 accepted); items are read when needed and
not kept, so a sequence that reads from slide stores keeps memory flat.

Training is one bag per step (bags differ in size), AdamW with a per-step cosine schedule, class-weighted cross
entropy plus the head's auxiliary loss. Reproducibility: inside :func:`train_head` the global torch RNG is
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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .heads import MILEnsemble, MILHead, get_head, list_heads
from ..evaluation.metrics import binary_metrics, multiclass_metrics
from .splits import Splits, stratified_kfold

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
    class_weight : "balanced", sequence of float or None
        Cross-entropy class weights; "balanced" uses ``n / (K * count_k)`` from the training labels.
    n_classes : int or None
        Number of classes; None infers ``max(label) + 1`` (at least 2).
    device : str
        "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1" ...
    amp : bool
        bfloat16 autocast on CUDA; ignored on CPU, where training stays float32.
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
    class_weight: str | tuple[float, ...] | None = "balanced"
    n_classes: int | None = None
    device: str = "auto"
    amp: bool = True
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
        if isinstance(self.class_weight, str) and self.class_weight != "balanced":
            raise ConfigError(f"class_weight must be 'balanced', a list of floats or None, got {self.class_weight!r}")
        if isinstance(self.class_weight, (list, tuple)):
            self.class_weight = tuple(float(w) for w in self.class_weight)
        if self.n_classes is not None and self.n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1 or None, got {self.num_threads}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of all fields."""
        d = dataclasses.asdict(self)
        if isinstance(d["class_weight"], tuple):
            d["class_weight"] = list(d["class_weight"])
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
    """

    models: list[MILHead]
    results: list[TrainResult]
    splits: Splits
    fold_metrics: list[dict[str, Any]]
    oof_logits: np.ndarray
    oof_probs: np.ndarray
    metrics: dict[str, Any]
    seconds: float

    def ensemble(self, temperature: float = 1.0) -> MILEnsemble:
        """The fold models as one :class:`MILEnsemble` (mean probability, std as uncertainty)."""
        return MILEnsemble(self.models, temperature=temperature)


# --------------------------------------------------------------------------------------------- helpers


class _Subset(Sequence):
    """Lazy view ``bags[idx]`` that reads items only when asked."""

    def __init__(self, bags: Sequence, idx: np.ndarray):
        self._bags, self._idx = bags, np.asarray(idx)

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: int):
        return self._bags[int(self._idx[i])]


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


def _to_tensor(bag: Any, in_dim: int | None, device: torch.device) -> torch.Tensor:
    arr = np.asarray(bag)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ConfigError(f"every bag must be a non-empty (N, D) array, got shape {arr.shape}")
    if in_dim is not None and arr.shape[1] != in_dim:
        raise ConfigError(f"bags have different feature sizes ({arr.shape[1]} vs {in_dim}); use one encoder")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(device)


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


def _class_weights(config: TrainConfig, y: np.ndarray, n_classes: int) -> torch.Tensor | None:
    if config.class_weight is None:
        return None
    if config.class_weight == "balanced":
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    else:
        w = np.asarray(config.class_weight, dtype=np.float64)
        if w.shape != (n_classes,) or np.any(w < 0):
            raise ConfigError(f"class_weight needs {n_classes} non-negative values, got {config.class_weight}")
    return torch.tensor(w, dtype=torch.float32)


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


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _evaluate(model: MILHead, bags: Sequence, device: torch.device, amp: bool
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    model.eval()
    logits, scores = [], []
    in_dim = model.in_dim
    for i in range(len(bags)):
        with _autocast(device, amp):
            out = model(_to_tensor(bags[i], in_dim, device))
        logits.append(out.logits.float().cpu().numpy())
        scores.append(out.instance_scores.float().cpu().numpy())
    return np.stack(logits).astype(np.float32), scores


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

    t0 = time.perf_counter()
    with _reproducible(config, device):
        model = get_head(config.head, in_dim, n_classes, **config.head_kwargs).to(device)
        weight = _class_weights(config, y, n_classes)
        weight = None if weight is None else weight.to(device)
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
            for i in rng.permutation(n):
                bag = _to_tensor(train_bags[int(i)], in_dim, device)
                if config.max_instances is not None and bag.shape[0] > config.max_instances:
                    keep = np.sort(rng.choice(bag.shape[0], config.max_instances, replace=False))
                    bag = bag[torch.from_numpy(keep).to(device)]
                label = int(y[i])
                target = torch.tensor([label], device=device)
                with _autocast(device, config.amp):
                    out = model(bag)
                    aux = model.auxiliary_loss(out, label)
                loss = F.cross_entropy(out.logits[None].float(), target, weight=weight) + aux.float()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            record: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": lr}

            if has_val:
                logits, _ = _evaluate(model, val_bags, device, config.amp)
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


# --------------------------------------------------------------------------------------------- inference


def predict_logits(model: MILHead | MILEnsemble, bags: Sequence, *, amp: bool = False,
                   num_threads: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Slide logits and instance scores for each bag, on the model's device, in eval mode.

    ``num_threads`` pins torch's CPU threads for the call (None: leave as is). MIL heads run small matrix
    products, for which one thread is usually fastest and several threads on a busy machine are much slower.

    Returns
    -------
    logits : numpy.ndarray
        ``(n, K)`` float32 (for an ensemble: log of the mean member probability).
    instance_scores : list of numpy.ndarray
        ``n`` float32 arrays ``(N_i,)``.
    """
    if len(bags) == 0:
        return np.zeros((0, model.n_classes), dtype=np.float32), []
    with _threads(num_threads):
        return _evaluate(model, bags, _model_device(model), amp)


def predict(model: MILHead | MILEnsemble, bags: Sequence, *, temperature: float | None = None,
            amp: bool = False, num_threads: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Probability of class 1 and instance scores for each bag.

    Parameters
    ----------
    model : MILHead or MILEnsemble
    bags : sequence of array_like
        ``(N_i, D)`` bags.
    temperature : float, optional
        Softmax temperature; defaults to ``model.temperature`` (1.0 unless calibrated / loaded). For an
        ensemble it is applied to each member before averaging.
    amp : bool, default False
        bfloat16 autocast on CUDA.
    num_threads : int, optional
        CPU threads for the call, as in :func:`predict_logits`.

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
            logits, scores = predict_logits(model, bags, amp=amp, num_threads=num_threads)
        finally:
            model.temperature = saved
        t = 1.0
    else:
        logits, scores = predict_logits(model, bags, amp=amp, num_threads=num_threads)
    probs = torch.softmax(torch.from_numpy(logits).double() / t, dim=1).numpy()
    return probs[:, 1], scores


def predict_ensemble(models: MILEnsemble | Sequence[MILHead], bags: Sequence, *, temperature: float | None = None,
                     amp: bool = False, num_threads: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Mean and spread of the members' class-1 probabilities (``temperature``, ``amp``, ``num_threads`` as in
    :func:`predict`).

    Returns
    -------
    mean : numpy.ndarray
        ``(n,)`` float64 mean member probability of class 1.
    std : numpy.ndarray
        ``(n,)`` float64 standard deviation across members (an uncertainty; 0 for a single member).
    instance_scores : list of numpy.ndarray
        ``n`` float32 arrays ``(N_i,)``, mean over members.
    """
    ens = models if isinstance(models, MILEnsemble) else MILEnsemble(list(models))
    t = float(ens.temperature if temperature is None else temperature)
    device = _model_device(ens)
    mean, std, scores = [], [], []
    saved, ens.temperature = ens.temperature, t
    try:
        ens.eval()
        with torch.no_grad(), _threads(num_threads):
            for i in range(len(bags)):
                with _autocast(device, amp):
                    out = ens(_to_tensor(bags[i], ens.in_dim, device))
                member = out.extras["member_probs"][:, 1].double().cpu()
                mean.append(float(member.mean()))
                std.append(float(member.std(unbiased=False)))
                scores.append(out.instance_scores.float().cpu().numpy())
    finally:
        ens.temperature = saved
    return np.asarray(mean), np.asarray(std), scores


# --------------------------------------------------------------------------------------------- CV


def cross_validate(bags: Sequence, labels: Sequence[int], config: TrainConfig, k: int = 5, *,
                   splits: Splits | None = None, inner_val_fraction: float = 0.0,
                   n_bootstrap: int = 1000, progress: ProgressFn | None = None) -> CVResult:
    """Stratified k-fold cross-validation with out-of-fold predictions.

    Each fold's model never sees its held-out fold: with ``inner_val_fraction > 0`` early stopping uses a
    stratified inner split of the training folds; with 0 (default) every fold trains ``config.epochs`` epochs.
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
        ``stratified_kfold(labels, k, seed=config.seed)``.
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
    if splits is None:
        splits = stratified_kfold(y, k, seed=config.seed)
    elif len(splits) != len(y) or not np.array_equal(splits.labels, y):
        raise ConfigError("splits do not match the bags' labels (different length or order)")
    if not 0.0 <= inner_val_fraction < 1.0:
        raise ConfigError(f"inner_val_fraction must be in [0, 1), got {inner_val_fraction}")
    n_classes = config.n_classes or max(2, int(y.max()) + 1)
    config = dataclasses.replace(config, n_classes=n_classes)

    t0 = time.perf_counter()
    oof_logits = np.full((len(y), n_classes), np.nan, dtype=np.float32)
    models, results, fold_metrics = [], [], []
    for fold in range(splits.k):
        train_idx, val_idx = splits.indices(fold)
        fold_cfg = dataclasses.replace(config, seed=config.seed + fold)
        fit_idx, stop_idx = train_idx, np.zeros(0, dtype=np.int64)
        if inner_val_fraction > 0:
            inner_k = max(2, round(1.0 / inner_val_fraction))
            inner = stratified_kfold(y[train_idx], inner_k, seed=fold_cfg.seed)
            fit_pos, stop_pos = inner.indices(0)
            fit_idx, stop_idx = train_idx[fit_pos], train_idx[stop_pos]
        result = train_head(
            _Subset(bags, fit_idx), y[fit_idx], fold_cfg,
            _Subset(bags, stop_idx) if len(stop_idx) else None, y[stop_idx] if len(stop_idx) else None,
        )
        logits, _ = predict_logits(result.model, _Subset(bags, val_idx), num_threads=config.num_threads)
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
                    _metrics(y, oof_logits, n_bootstrap, config.seed), time.perf_counter() - t0)


def _metrics(y: np.ndarray, logits: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    if logits.shape[1] == 2 and y.max(initial=0) <= 1:
        return binary_metrics(y, probs[:, 1], n_bootstrap=n_bootstrap, seed=seed)
    return multiclass_metrics(y, probs)
