"""Evaluation of slide-level predictions and lesion detections: metrics with bootstrap confidence intervals
(binary in :mod:`~slidestream.evaluation.metrics`, multi-class in :mod:`~slidestream.evaluation.multiclass`),
calibration, the CAMELYON16 lesion FROC (its maths in :mod:`~slidestream.evaluation.froc`, its files in
:mod:`~slidestream.evaluation.froc_files`), detections from tile scores, and plots of all of them."""

from .detections import detections_from_tiles, write_detections_csv
from .froc import FROC_RATES, L0_MPP, compute_froc, evaluation_mask, froc_curve, lesion_hits
from .froc_files import evaluate_froc_dirs, format_froc, read_detections_csv, read_mask_image, read_truth
from .metrics import (binary_metrics, brier_score, expected_calibration_error, metrics_by_group, roc_auc,
                      threshold_metrics)
from .multiclass import confusion_matrix, multiclass_metrics
from .plots import plot_confusion_matrix, plot_froc, plot_reliability, plot_roc, plot_roc_ovr

__all__ = [
    "FROC_RATES", "L0_MPP", "binary_metrics", "brier_score", "compute_froc", "confusion_matrix",
    "detections_from_tiles", "evaluate_froc_dirs", "evaluation_mask", "expected_calibration_error", "format_froc",
    "froc_curve", "lesion_hits", "metrics_by_group", "multiclass_metrics", "plot_confusion_matrix", "plot_froc",
    "plot_reliability", "plot_roc", "plot_roc_ovr", "read_detections_csv", "read_mask_image", "read_truth", "roc_auc",
    "threshold_metrics", "write_detections_csv",
]
