"""Orchestration: the batch stages over many slides, as the ``slidestream`` commands run them.

tile → embed → (train | predict) → outputs, plus the whole inference path (``run``), heatmaps, status,
CAMELYON16-style benchmarks and the offline demo. Each stage takes a list of inputs (:mod:`.inputs`), runs slide
by slide here or one task per slide on a ``dask.distributed`` cluster (:mod:`.runner`, :mod:`.cluster`), records
failures instead of stopping, and writes a run record (:mod:`.records`). The stage packages (``wsi``, ``tiling``,
``store``, ``stain``, ``models``, ``mil``, ``evaluation`` ...) never import this package.
"""

import importlib

# Names are loaded on first use (PEP 562): `slidestream tile` must not import torch or the store before its first
# slide's tissue segmentation has been forked off (see pipeline.tile).
_WHERE = {
    "Bag": "bags", "labelled_bags": "bags", "load_bag": "bags",
    "BenchConfig": "bench", "BenchResult": "bench", "benchmark_inputs": "bench", "run_benchmark": "bench",
    "ClassSet": "classes", "class_set_for": "classes", "evaluate_predictions": "class_metrics",
    "LOCAL_CLUSTER": "cluster", "batch_client": "cluster", "run_on_cluster": "cluster",
    "DemoConfig": "demo", "DemoResult": "demo", "run_demo": "demo",
    "embed_batch": "embed", "embed_store_job": "embed",
    "SlideInput": "inputs", "collect_inputs": "inputs", "collect_stores": "inputs", "store_paths": "inputs",
    "describe_slides": "info", "export_batch": "export",
    "heatmap_batch": "outputs", "write_slide_outputs": "outputs",
    "PredictSummary": "predict", "describe_rows": "predict", "predict_batch": "predict", "predict_stores": "predict",
    "write_predictions_csv": "predict",
    "SlideLockedError": "records", "SlideOutcome": "records", "slide_lock": "records", "write_run_record": "records",
    "QuPathProject": "qupath_project", "make_qupath_project": "qupath_project",
    "QuietReporter": "reporting", "Reporter": "reporting",
    "RunSummary": "run", "run_inference": "run",
    "run_per_slide": "runner", "run_stage": "runner",
    "folder_status": "status",
    "make_normalizer": "tile", "tile_batch": "tile", "tile_slide_job": "tile",
    "TrainSummary": "train", "train_from_stores": "train",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
