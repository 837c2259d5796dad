"""The offline demo: a synthetic CAMELYON-like set through the whole path, with a held-out slide AUC.

synthetic slides → tile (tissue, 0.5 µm/px, 224 px) → Zarr stores → embed (``handcrafted`` by default) →
cross-validated gated ABMIL on the training slides → predict the held-out slides → slide AUC and lesion FROC
(the benchmark code), QuPath GeoJSON, PNG heatmaps, predictions CSV and a Markdown report.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import OutputGuard, adopt_legacy, output_folder
from ..synth import SynthConfig, write_synthetic_dataset
from ..tiling.grid import TilingParams
from .bench import BenchConfig, _is_bench_folder, run_benchmark
from .outputs import write_slide_outputs
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide


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
    froc: dict | None
    report: Path
    checkpoint: Path
    predictions_csv: Path
    rows: list[dict]
    outputs: dict[str, dict[str, Path]]
    seconds: float

    @property
    def listed_outputs(self) -> list[Path]:
        out = [self.report, self.report.with_name("bench.json"), self.checkpoint, self.predictions_csv,
               self.out_dir / "roc.png"]
        if self.froc is not None:
            out += [self.out_dir / "froc.png", self.out_dir / "detections"]
        for paths in self.outputs.values():
            out.extend(paths.values())
        return out


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *,
             reporter: Reporter | None = None, overwrite: bool = False) -> DemoResult:
    """Run the whole demo into ``out_dir``; every stage resumes if the folder already holds its results.

    The numbers come from :func:`slidestream.pipeline.bench.run_benchmark` (the same code as ``slidestream bench``);
    the demo adds QuPath GeoJSON and PNG heatmaps for the held-out slides. Files in ``out_dir`` that slidestream
    did not write are not replaced unless ``overwrite`` (the synthetic slides go into ``out_dir/slides`` only when
    it holds none of the user's files).
    """
    t0 = time.perf_counter()
    config = config or DemoConfig()
    reporter = reporter or QuietReporter()
    out_dir = output_folder(out_dir)
    guard = OutputGuard(overwrite, adopt=adopt_legacy(out_dir, _is_bench_folder))  # a demo folder of old
    data_dir = out_dir / "slides"
    labels = data_dir / "labels.csv"
    if not labels.is_file():
        # the data set is written over whatever is in the folder: only into one that holds nothing of the user's
        present = [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(".")] \
            if data_dir.is_dir() else []
        guard.check_all(present)
        synth = SynthConfig(width=config.slide_size, height=config.slide_size, mpp=config.slide_mpp,
                            tumor_diameter_um=(400.0, 900.0), n_tumors=2)
        n = config.n_normal + config.n_tumor

        def written(i: int, n_: int, name: str) -> None:
            # recorded slide by slide: an interrupted synthesis is the demo's own to redo on a rerun
            guard.record(*(p for p in data_dir.rglob(f"{name}.*") if p.is_file()))
            t.update(i, n_)

        with reporter.task(f"synthesise {n} slides", n) as t:
            write_synthetic_dataset(data_dir, config.n_normal, config.n_tumor, config=synth, seed=config.seed,
                                    pen_fraction=0.25, progress=written)
        guard.record(*(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(".")))
    bench = BenchConfig(encoder=config.encoder, weights="none", head=config.head, folds=config.folds,
                        epochs=config.epochs, seed=config.seed, test_fraction=config.test_fraction,
                        tiling=config.tiling)
    res = run_benchmark(data_dir, out_dir, bench, reporter=reporter, overwrite=overwrite)
    with open(res.predictions_csv, newline="") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    outputs: dict[str, dict[str, Path]] = {}

    def one(row: dict) -> dict:
        outputs[row["slide_id"]] = write_slide_outputs(
            out_dir / "stores" / f"{row['slide_id']}.zarr", "bench", out_dir / "test", slide_path=row["slide"],
            probability=float(row["calibrated_probability"]), threshold=0.5, guard=guard)
        return {}

    run_per_slide(rows, "GeoJSON + heatmaps", one, reporter, label=lambda r: r["slide_id"], path=lambda r: r["slide"])
    for r in rows:
        for k in ("probability", "calibrated_probability", "uncertainty"):
            r[k] = float(r[k])
        r["label"] = int(r["label"])
    return DemoResult(out_dir=out_dir, test_auc=res.auc, froc=res.froc, report=res.report,
                      checkpoint=res.checkpoint, predictions_csv=res.predictions_csv, rows=rows, outputs=outputs,
                      seconds=time.perf_counter() - t0)
