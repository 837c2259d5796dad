"""The offline demo: a synthetic CAMELYON16-like set through the whole path, with a result worth reading.

Default (``preset="camelyon16"``): a small set from :func:`slidestream.synth.write_camelyon16` (lymph node
sections with macro- and micro-metastases, isolated tumour cells, tumour look-alikes, two scanners) → tile (tissue,
0.5 µm/px, 224 px) → Zarr stores → embed (``handcrafted``) → a leaderboard of gated ABMIL against mean pooling on
the same splits (:func:`slidestream.pipeline.leaderboard.run_leaderboard`) → slide AUC with CIs, AUC on the
micro-metastasis slides, lesion FROC, QuPath GeoJSON, PNG heatmaps and ``report.html``, read in one line.

``preset=None`` runs the former demo: the simple synthetic set (every tumour slide with large tumours) through one
head (:func:`slidestream.pipeline.bench.run_benchmark`); its AUC saturates, so it only shows the path works.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..fileio import OutputGuard, adopt_legacy, output_folder
from ..synth import Camelyon16Preset, SynthConfig, write_camelyon16, write_synthetic_dataset
from ..tiling.grid import TilingParams
from .bench import BenchConfig, _is_bench_folder, run_benchmark
from .outputs import write_slide_outputs
from .predict import write_predictions_csv
from .reporting import QuietReporter, Reporter
from .runner import run_per_slide


@dataclass
class DemoConfig:
    """Size of the demo; the defaults fit ``make demo``'s ten minutes on 2 CPU cores, install included.

    ``preset="camelyon16"``: ``n_normal``/``n_tumor`` are the training slides, ``n_test_normal``/``n_test_tumor``
    the test slides, ``slide_mm``, ``difficulty`` and ``lesion_mix`` as in
    :class:`~slidestream.synth.Camelyon16Preset`, ``heads`` the heads compared (the last one is the baseline).
    ``preset=None``: ``n_normal + n_tumor`` simple slides of ``slide_size`` px at ``slide_mpp``, the last
    ``test_fraction`` held out, one head (the first of ``heads``).
    """

    preset: str | None = "camelyon16"
    n_normal: int = 12
    n_tumor: int = 16
    n_test_normal: int = 8
    n_test_tumor: int = 10
    slide_mm: tuple[float, float] = (2.7, 1.6)
    difficulty: float = 0.35
    lesion_mix: tuple[float, float, float] = (0.4, 0.5, 0.1)
    test_fraction: float = 0.4
    slide_size: int = 4096
    slide_mpp: float = 0.5
    encoder: str = "handcrafted"
    heads: tuple[str, ...] = ("abmil", "mean_pool")
    epochs: int = 30
    folds: int = 3
    seed: int = 0
    tiling: TilingParams = field(default_factory=TilingParams)

    @property
    def head(self) -> str:
        return self.heads[0]


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
    reading: str = ""  # one line that reads the result
    leaderboard: list[dict] = field(default_factory=list)  # one row per head (camelyon16 preset)
    report_html: Path | None = None

    @property
    def listed_outputs(self) -> list[Path]:
        out = [self.report, self.report.with_name("bench.json"), self.checkpoint, self.predictions_csv]
        if self.report_html is not None:
            out += [self.report_html, self.out_dir / "leaderboard.csv"]
        else:
            out.append(self.out_dir / "roc.png")
            if self.froc is not None:
                out += [self.out_dir / "froc.png", self.out_dir / "detections"]
        for paths in self.outputs.values():
            out.extend(paths.values())
        return out


def run_demo(out_dir: str | os.PathLike, config: DemoConfig | None = None, *,
             reporter: Reporter | None = None, overwrite: bool = False) -> DemoResult:
    """Run the whole demo into ``out_dir``; every stage resumes if the folder already holds its results.

    The numbers come from the benchmark code (``slidestream bench``): with the camelyon16 preset its leaderboard of
    ``config.heads``, otherwise :func:`slidestream.pipeline.bench.run_benchmark` of one head. Files in ``out_dir``
    that slidestream did not write are not replaced unless ``overwrite`` (the synthetic slides go into
    ``out_dir/slides`` only when it holds none of the user's files).
    """
    config = config or DemoConfig()
    if config.preset not in (None, "camelyon16"):
        raise ConfigError(f"demo preset must be 'camelyon16' or None, got {config.preset!r}")
    reporter = reporter or QuietReporter()
    out_dir = output_folder(out_dir)
    guard = OutputGuard(overwrite, adopt=adopt_legacy(out_dir, _is_bench_folder))  # a demo folder of old
    if config.preset is None:
        return _simple_demo(out_dir, config, reporter, guard)
    return _camelyon16_demo(out_dir, config, reporter, guard)


def _synthesise_into(data_dir: Path, guard: OutputGuard, write) -> None:
    """Write the demo's data set into ``data_dir`` with ``write(recorded)``, only when the folder holds nothing
    of the user's; ``recorded(name)`` enters one slide's files in the ledger as they are written, so an
    interrupted synthesis is the demo's own to redo on a rerun."""
    present = [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(".")] \
        if data_dir.is_dir() else []
    guard.check_all(present)
    write(lambda name: guard.record(*(p for p in data_dir.rglob(f"{name}.*") if p.is_file())))
    guard.record(*(p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(".")))


def _camelyon16_demo(out_dir: Path, config: DemoConfig, reporter: Reporter, guard: OutputGuard) -> DemoResult:
    from .leaderboard import LeaderboardConfig, run_leaderboard

    t0 = time.perf_counter()
    data_dir = out_dir / "slides"
    if not (data_dir / "truth.csv").is_file():
        preset = Camelyon16Preset(n_train_normal=config.n_normal, n_train_tumor=config.n_tumor,
                                  n_test_normal=config.n_test_normal, n_test_tumor=config.n_test_tumor,
                                  slide_mm=config.slide_mm, difficulty=config.difficulty, seed=config.seed,
                                  lesion_mix=config.lesion_mix)
        n = config.n_normal + config.n_tumor + config.n_test_normal + config.n_test_tumor

        def write(recorded) -> None:
            def progress(i: int, n_: int, name: str) -> None:
                recorded(name)
                t.update(i, n_)

            with reporter.task(f"synthesise {n} CAMELYON16-like slides", n) as t:
                write_camelyon16(data_dir, preset, progress=progress)

        _synthesise_into(data_dir, guard, write)
    bench = BenchConfig(encoder=config.encoder, weights="none", head=config.heads[0], folds=config.folds,
                        epochs=config.epochs, seed=config.seed, tiling=config.tiling)
    lb = LeaderboardConfig(bench=bench, encoders=(config.encoder,), heads=tuple(config.heads), seeds=(config.seed,),
                           baseline=config.heads[-1] if len(config.heads) > 1 else None, heatmaps=True)
    res = run_leaderboard(data_dir, out_dir, lb, reporter=reporter, overwrite=guard.overwrite)
    best = res.rows[0]
    pair = next(p for p in res.pairs if p["encoder"] == best["encoder"] and p["head"] == best["head"])
    rows = [dict(r) for r in pair["predictions"]]
    with guard.writing(out_dir / "predictions.csv") as target:
        predictions_csv = write_predictions_csv(target, rows)
    heat = out_dir / "heatmaps"
    outputs = {r["slide_id"]: {k: heat / f"{r['slide_id']}{suffix}"
                               for k, suffix in (("geojson", ".geojson"), ("heatmap", ".heatmap.png"))
                               if (heat / f"{r['slide_id']}{suffix}").is_file()} for r in rows}
    auc = {k: pair["metrics"][k] for k in ("auc", "auc_ci_low", "auc_ci_high", "auc_defined")}
    return DemoResult(out_dir=out_dir, test_auc=auc, froc=pair.get("froc"), report=res.report,
                      checkpoint=out_dir / pair["dir"] / "model", predictions_csv=predictions_csv, rows=rows,
                      outputs=outputs, seconds=time.perf_counter() - t0, reading=res.summary, leaderboard=res.rows,
                      report_html=res.report_html)


def _simple_demo(out_dir: Path, config: DemoConfig, reporter: Reporter, guard: OutputGuard) -> DemoResult:
    t0 = time.perf_counter()
    data_dir = out_dir / "slides"
    if not (data_dir / "labels.csv").is_file():
        synth = SynthConfig(width=config.slide_size, height=config.slide_size, mpp=config.slide_mpp,
                            tumor_diameter_um=(400.0, 900.0), n_tumors=2)
        n = config.n_normal + config.n_tumor

        def write(recorded) -> None:
            def progress(i: int, n_: int, name: str) -> None:
                recorded(name)
                t.update(i, n_)

            with reporter.task(f"synthesise {n} slides", n) as t:
                write_synthetic_dataset(data_dir, config.n_normal, config.n_tumor, config=synth, seed=config.seed,
                                        pen_fraction=0.25, progress=progress)

        _synthesise_into(data_dir, guard, write)
    bench = BenchConfig(encoder=config.encoder, weights="none", head=config.head, folds=config.folds,
                        epochs=config.epochs, seed=config.seed, test_fraction=config.test_fraction,
                        tiling=config.tiling)
    res = run_benchmark(data_dir, out_dir, bench, reporter=reporter, overwrite=guard.overwrite)
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
    auc = res.auc
    reading = (f"slide AUC {auc['auc']:.3f} [{auc['auc_ci_low']:.3f}–{auc['auc_ci_high']:.3f}] on the simple "
               "synthetic set (every tumour slide holds large tumours)")
    return DemoResult(out_dir=out_dir, test_auc=auc, froc=res.froc, report=res.report,
                      checkpoint=res.checkpoint, predictions_csv=res.predictions_csv, rows=rows, outputs=outputs,
                      seconds=time.perf_counter() - t0, reading=reading)
