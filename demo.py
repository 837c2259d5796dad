"""The offline demo: a synthetic CAMELYON-like set through the whole path, with a held-out slide AUC.

synthetic slides → tile (tissue, 0.5 µm/px, 224 px) → Zarr stores → embed (``handcrafted`` by default) →
cross-validated gated ABMIL on the training slides → predict the held-out slides → QuPath GeoJSON, PNG heatmaps,
predictions CSV and a Markdown report.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .batch import collect_inputs, write_json_atomic
from .pipeline import QuietReporter, Reporter, RunSummary, run_inference, train_from_stores, tile_batch, embed_batch
from .tiling.grid import TilingParams


@dataclass
class DemoConfig:
    """Size of the demo. The defaults finish in a few minutes on 2 CPU cores."""

    n_normal: int = 20
    n_tumor: int = 20
    test_fraction: float = 0.4
    slide_size: int = 4096
    slide_mpp: float = 0.5
    encoder: str = "handcrafted"
    head: str = "abmil"
    epochs: int = 30
    folds: int = 3
    seed: int = 0
    tiling: TilingParams = field(default_factory=TilingParams)


@dataclass
class DemoResult:
    out_dir: Path
    test_auc: dict
    report: Path
    checkpoint: Path
    run: RunSummary
    seconds: float
    outputs: list[Path]


def _split(labels_csv: Path, test_fraction: float) -> Path:
    """Add a ``split`` column: the last ``test_fraction`` of each class is held out (like CAMELYON16's test set)."""
    import csv

    with open(labels_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    for label in ("0", "1"):
        group = [r for r in rows if r["label"] == label]
        n_test = int(round(len(group) * test_fraction))
        for i, r in enumerate(group):
            r["split"] = "test" if i >= len(group) - n_test else "train"
    out = labels_csv.with_name("manifest.csv")
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    return out


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *,
             reporter: Reporter | None = None) -> DemoResult:
    """Run the whole demo into ``out_dir``; every stage resumes if the folder already holds its results."""
    from .mil import TrainConfig, roc_auc
    from .wsi.synth import SynthConfig, write_synthetic_dataset

    t0 = time.perf_counter()
    config = config or DemoConfig()
    reporter = reporter or QuietReporter()
    out_dir = Path(out_dir)
    data_dir = out_dir / "slides"
    labels = data_dir / "labels.csv"
    if not labels.is_file():
        synth = SynthConfig(width=config.slide_size, height=config.slide_size, mpp=config.slide_mpp,
                            tumor_diameter_um=(400.0, 900.0), n_tumors=2)
        n = config.n_normal + config.n_tumor
        with reporter.task(f"synthesise {n} slides", n) as t:
            write_synthetic_dataset(data_dir, config.n_normal, config.n_tumor, config=synth, seed=config.seed,
                                    pen_fraction=0.25, progress=lambda i, n_, name: t.update(i, n_))
    manifest = _split(labels, config.test_fraction)
    inputs = collect_inputs([manifest])
    train = [it for it in inputs if it.split == "train"]
    test = [it for it in inputs if it.split == "test"]

    stores = out_dir / "stores"
    tile_batch(train, stores, config.tiling, reporter=reporter)
    from .pipeline import store_paths
    embed_batch(store_paths(stores, [it.slide_id for it in train]), config.encoder, weights="none",
                reporter=reporter)
    train_cfg = TrainConfig(head=config.head, epochs=config.epochs, seed=config.seed, device="cpu", patience=None)
    checkpoint = out_dir / "model"
    summary = train_from_stores(train, stores, config.encoder, checkpoint, train_cfg, folds=config.folds,
                                meta={"demo": True}, reporter=reporter)
    run = run_inference(test, summary.checkpoint, out_dir / "test", weights="none", save_patches=True,
                        reporter=reporter)
    y = np.array([r["label"] for r in run.rows])
    p = np.array([r["calibrated_probability"] for r in run.rows])
    auc = roc_auc(y, p, n_bootstrap=1000, seed=config.seed)
    seconds = time.perf_counter() - t0
    report = _write_report(out_dir, config, summary, run, auc, seconds)
    outputs = [manifest, summary.checkpoint, run.predictions_csv, report]
    for paths in run.outputs.values():
        outputs.extend(paths.values())
    return DemoResult(out_dir=out_dir, test_auc=auc, report=report, checkpoint=summary.checkpoint, run=run,
                      seconds=seconds, outputs=outputs)


def _write_report(out_dir: Path, config: DemoConfig, summary, run: RunSummary, auc: dict, seconds: float) -> Path:
    lines = [
        "# slidestream demo report",
        "",
        f"- slidestream {__version__}; encoder `{config.encoder}`; head `{config.head}`; "
        f"tiles {config.tiling.tile_size} px at {config.tiling.mpp} µm/px",
        f"- training slides: {summary.n_slides} ({summary.folds}-fold CV, out-of-fold AUC "
        f"{summary.cv_metrics.get('auc', float('nan')):.3f}); temperature {summary.temperature:.3f}",
        f"- held-out slides: {len(run.rows)}; **slide AUC {auc['auc']:.3f}** "
        f"(95 % bootstrap CI {auc.get('auc_ci_low', float('nan')):.3f}–{auc.get('auc_ci_high', float('nan')):.3f})",
        f"- total time {seconds:.0f} s",
        "",
        "| slide | label | P(tumour) | calibrated | spread | tiles |",
        "|---|---|---|---|---|---|",
    ]
    for r in run.rows:
        lines.append(f"| {r['slide_id']} | {r.get('label', '')} | {r['probability']:.3f} | "
                     f"{r['calibrated_probability']:.3f} | {r['uncertainty']:.3f} | {r['tiles']} |")
    lines += ["", "Open a slide in QuPath, then File ▸ Import objects from file… and pick its `.geojson`; "
              "Measure ▸ Show measurement maps shows `attention` per tile."]
    path = out_dir / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    write_json_atomic(out_dir / "report.json", {
        "version": __version__, "config": {**asdict(config), "tiling": config.tiling.to_dict()},
        "test_auc": auc, "cv_metrics": summary.cv_metrics, "predictions": run.rows, "seconds": seconds,
    })
    return path
