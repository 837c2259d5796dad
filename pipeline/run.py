"""The whole inference path for new slides: tile, embed with the checkpoint's encoder, predict, write outputs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..fileio import remove_stale_temps
from ..mil import load_checkpoint
from ..tiling.grid import TilingParams
from ..tiling.settings import TissueConfig
from .class_metrics import row_caption
from .classes import ClassSet
from .embed import embed_batch
from .inputs import SlideInput, store_paths
from .outputs import write_slide_outputs
from .predict import describe_rows, predict_stores, write_predictions_csv
from .records import SlideOutcome, write_run_record
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide
from .tile import tile_batch

__all__ = ["RunSummary", "run_inference"]


@dataclass
class RunSummary:
    out_dir: Path
    predictions_csv: Path
    rows: list[dict]
    outcomes: dict[str, list[SlideOutcome]]
    outputs: dict[str, dict[str, Path]]
    classes: ClassSet | None = None

    @property
    def failed(self) -> list[SlideOutcome]:
        seen, out = set(), []
        for stage in self.outcomes.values():
            for o in stage:
                if o.status == "failed" and o.slide_id not in seen:
                    seen.add(o.slide_id)
                    out.append(o)
        return out


def run_inference(
    inputs: list[SlideInput],
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    weights: str = "hub",
    device: str = "cpu",
    threshold: float | None = 0.5,
    save_patches: bool = False,
    scheduler: str | None = None,
    reporter: Reporter | None = None,
    max_pixels: int | None = None,
) -> RunSummary:
    """The whole inference path for new slides: tile → embed (the checkpoint's encoder) → predict → outputs.

    Writes ``<out>/stores/<slide_id>.zarr``, ``<out>/<slide_id>.geojson``, ``<out>/<slide_id>.heatmap.png`` and
    ``<out>/predictions.csv``. Slides that fail at any stage are reported and skipped. ``scheduler`` runs the
    tiling and embedding on a ``dask.distributed`` cluster (see :func:`tile_batch`); ``max_pixels`` is the pixel
    budget slides are opened with (:func:`slidestream.wsi.open_slide`). The predictions' columns follow the
    checkpoint's classes (:mod:`slidestream.pipeline.predict`): ``prob_<class>`` and ``calibrated_prob_<class>``
    columns and per-class tile measurements for models of more than two classes.
    """
    reporter = reporter or QuietReporter()
    out_dir = Path(out_dir)
    remove_stale_temps(out_dir)  # left by an interrupted run
    model, _, meta = load_checkpoint(checkpoint)
    classes = ClassSet.from_checkpoint(getattr(model, "classes", None), model.n_classes)
    tiling = meta.get("tiling", {})
    params = TilingParams(**{k: v for k, v in tiling.items()
                             if k in ("mpp", "tile_size", "overlap", "min_tissue", "keep_rule")})
    # tissue settings as training used them (checkpoints from before they were recorded: the defaults)
    tissue = TissueConfig(**tiling["tissue"]) if isinstance(tiling.get("tissue"), dict) else None
    stores_dir = out_dir / "stores"
    outcomes = {"tile": tile_batch(inputs, stores_dir, params, save_patches=save_patches, scheduler=scheduler,
                                   reporter=reporter, max_pixels=max_pixels, tissue=tissue)}
    ok = [it for it, o in zip(inputs, outcomes["tile"]) if o.status != "failed"]
    paths = store_paths(stores_dir, [it.slide_id for it in ok])
    outcomes["embed"] = embed_batch(paths, meta["encoder"], weights=weights, device=device, scheduler=scheduler,
                                    reporter=reporter)
    paths = [p for p, o in zip(paths, outcomes["embed"]) if o.status != "failed"]
    model_name = Path(checkpoint).name
    rows, outcomes["predict"] = predict_stores(paths, checkpoint, model_name=model_name, reporter=reporter)
    by_id = {it.slide_id: it for it in inputs}
    outputs: dict[str, dict[str, Path]] = {}

    def one(row: dict) -> dict:
        it = by_id[row["slide_id"]]
        outputs[row["slide_id"]] = write_slide_outputs(stores_dir / f"{row['slide_id']}.zarr", model_name, out_dir,
                                                       slide_path=it.path,
                                                       probability=row.get("calibrated_probability"),
                                                       threshold=threshold, mpp=it.mpp,
                                                       caption=row_caption(row, classes))
        return {}

    outcomes["outputs"] = run_per_slide(rows, "write outputs", one, reporter, label=lambda r: r["slide_id"],
                                        path=lambda r: str(by_id[r["slide_id"]].path))
    describe_rows(rows, inputs)
    for r in rows:
        r.update({k: str(v) for k, v in outputs.get(r["slide_id"], {}).items()})
    csv_path = write_predictions_csv(out_dir / "predictions.csv", rows)
    all_outcomes = [o for stage in outcomes.values() for o in stage]
    write_run_record(out_dir, "run", all_outcomes, {"checkpoint": str(checkpoint), "encoder": meta["encoder"],
                                                    "tiling": params.to_dict(), "device": device})
    return RunSummary(out_dir=out_dir, predictions_csv=csv_path, rows=rows, outcomes=outcomes, outputs=outputs,
                      classes=classes)
