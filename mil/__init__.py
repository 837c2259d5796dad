"""slidestream.mil: multiple-instance learning on slide feature bags.

A bag is the ``(N, D)`` float32 feature matrix of one slide. This package trains heads on bags
(:func:`train_head`, :func:`cross_validate`), predicts slide probabilities and per-tile scores
(:func:`predict`, :func:`predict_ensemble`), calibrates (:func:`fit_temperature`) and saves safetensors checkpoints
(:func:`save_checkpoint`, :func:`load_checkpoint`). The heads are in :mod:`slidestream.mil.heads`, one file per
family. It never reads slides or stores itself; metrics are in :mod:`slidestream.evaluation`.
"""

from .calibration import apply_temperature, fit_temperature
from .checkpoint import load_checkpoint, save_checkpoint
from .heads import MILEnsemble, MILHead, MILOutput, get_head, list_heads, register_head
from .inference import ClassPrediction, predict_classes
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
    "predict_classes",
    "ClassPrediction",
    "cross_validate",
    "Splits",
    "stratified_kfold",
    "read_splits",
    "fit_temperature",
    "apply_temperature",
    "save_checkpoint",
    "load_checkpoint",
]
