"""slidestream.mil: multiple-instance learning on slide feature bags.

A bag is the ``(N, D)`` float32 feature matrix of one slide. This package trains heads on bags
(:func:`train_head`, :func:`cross_validate`), predicts slide probabilities and per-tile scores
(:func:`predict`, :func:`predict_ensemble`), calibrates (:func:`fit_temperature`), evaluates
(:func:`binary_metrics`, :func:`metrics_by_group`) and saves safetensors checkpoints
(:func:`save_checkpoint`, :func:`load_checkpoint`). It never reads slides itself.
"""

from .calibration import apply_temperature, fit_temperature
from .checkpoint import load_checkpoint, save_checkpoint
from .heads import MILEnsemble, MILHead, MILOutput, get_head, list_heads, register_head
from .metrics import binary_metrics, metrics_by_group, plot_reliability, plot_roc, roc_auc
from .splits import Splits, read_splits, stratified_kfold
from .train import (
    CVResult,
    TrainConfig,
    TrainResult,
    cross_validate,
    predict,
    predict_ensemble,
    predict_logits,
    train_head,
)

__all__ = [
    "MILOutput",
    "MILHead",
    "MILEnsemble",
    "get_head",
    "list_heads",
    "register_head",
    "TrainConfig",
    "TrainResult",
    "CVResult",
    "train_head",
    "predict",
    "predict_logits",
    "predict_ensemble",
    "cross_validate",
    "Splits",
    "stratified_kfold",
    "read_splits",
    "fit_temperature",
    "apply_temperature",
    "save_checkpoint",
    "load_checkpoint",
    "roc_auc",
    "binary_metrics",
    "metrics_by_group",
    "plot_roc",
    "plot_reliability",
]
